"""Real VM build: build_and_run_instance to its end event, against doing the same with libvirt.

Each round builds one tiny instance (64 MiB, 1 vCPU, a 1 GiB qcow2 root disk,
no OS) two ways, side by side: through the worker in this process on
qemu:///system (cast -> instance.create.end), and directly: qemu-img create,
defineXML of the same lxml-built XML, create(), poll until running. The figure
is worker / raw; what is above 1 is the worker's own cost (broker, journal,
events, checks). The two go first by turns, and both domains are removed
before the next round, so no round builds beside running guests.
Run: .venv/bin/python -m bench.build
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import libvirt
from kombu import Connection

from bench.common import EventCounter, append_result, bench_config, is_end, machine, median
from bench.fleet import wait_events
from bench.parallel import QEMU_URI, remove_all
from tests.brokers import delete_names, notification_names, service_names
from tests.e2e.support import kvm_works
from worker import logs
from worker.amqp.client import RpcClient
from worker.service import Service
from worker.virt.domain_xml import DomainSpec, domain, to_string
from worker.virt.hypervisor import start_event_loop

NAME_PREFIX = "cw-bench-build-"


def raw_build(conn: libvirt.virConnect, directory: Path, uid: str, domain_type: str) -> float:
    """The same disk and domain made straight with qemu-img and libvirt; seconds."""
    started = time.perf_counter()
    directory.mkdir()
    disk = directory / "disk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1G"], check=True)
    spec = DomainSpec(f"{NAME_PREFIX}{uid[:13]}", uid, memory_mib=64, vcpus=1,
                      domain_type=domain_type, disks=(str(disk),))
    dom = conn.defineXML(to_string(domain(spec)))
    dom.create()
    while dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
        time.sleep(0.01)
    return time.perf_counter() - started


def worker_build(client: RpcClient, counter: EventCounter, host: str, uid: str) -> float:
    """One build cast to the in-process worker, to its end event; seconds."""
    before = counter.count(is_end)
    started = time.perf_counter()
    client.cast(host, "build_and_run_instance", {"instance": {
        "uuid": uid, "name": f"{NAME_PREFIX}{uid[:13]}", "memory_mb": 64, "vcpus": 1,
        "root_gb": 1}})
    last = wait_events(counter, is_end, before + 1, timeout=120)
    failed = counter.count(lambda kind: kind == "instance.create.error")
    assert failed == 0, "the build failed: see the worker's log"
    return last - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="builds each way")
    parser.add_argument("--domain-type", choices=("kvm", "qemu"), default=None,
                        help="default: kvm when /dev/kvm works, else qemu (TCG)")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    ns = parser.parse_args()
    logs.setup("error")
    start_event_loop()  # before any connection opens, as the worker does
    conn = libvirt.open(QEMU_URI)
    domain_type = ns.domain_type or ("kvm" if kvm_works(conn) else "qemu")
    made: list[str] = []
    failures: list[str] = []
    raw_s: list[float] = []
    work_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        tag = uuid.uuid4().hex[:8]
        cfg = bench_config(tmp, virt_type=domain_type, topic=f"benchbuild{tag}")
        counter = EventCounter(cfg.transport_url, cfg.control_exchange,
                               cfg.notifications.notification_topic)
        service = Service(cfg)
        service.start()
        try:
            with Connection(cfg.transport_url) as amqp_conn:
                client = RpcClient(amqp_conn, exchange=cfg.control_exchange, topic=cfg.topic)
                for number in range(ns.rounds):
                    raw_uid, work_uid = str(uuid.uuid4()), str(uuid.uuid4())
                    made += [raw_uid, work_uid]
                    # Alternate which goes first, and remove both before the next
                    # round: running guests share the CPUs with the next builds.
                    steps = [lambda u=raw_uid: raw_s.append(
                                 raw_build(conn, Path(tmp) / u, u, domain_type)),
                             lambda u=work_uid: work_s.append(
                                 worker_build(client, counter, cfg.host, u))]
                    for step in steps if number % 2 == 0 else reversed(steps):
                        step()
                    print(f"round {number + 1}: raw {raw_s[-1] * 1000:.0f} ms, "
                          f"worker {work_s[-1] * 1000:.0f} ms", flush=True)
                    failures += remove_all([raw_uid, work_uid])
        finally:
            counter.close()
            service.stop(grace=30)
            failures += remove_all(made)  # those a failed round left
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            delete_names(cfg.transport_url,
                         service_names(cfg, [service.consumer.fanout_unique])
                         + notification_names(cfg), [cfg.control_exchange])
            if failures:
                print(f"WARNING: domains left behind: {failures}")
    raw, work = median(raw_s), median(work_s)
    print(f"build ({domain_type}, 64 MiB, 1 GiB qcow2, median of {ns.rounds}): "
          f"worker {work * 1000:.0f} ms to instance.create.end, raw qemu-img+libvirt "
          f"{raw * 1000:.0f} ms, ratio {work / raw:.2f}")
    if not ns.no_record:
        append_result("Real VM build", f"{machine()} | {domain_type}, 64 MiB, 1 GiB qcow2 | "
                      f"worker {work * 1000:.0f} ms cast->create.end | raw qemu-img+define+"
                      f"start {raw * 1000:.0f} ms | ratio {work / raw:.2f} (median of "
                      f"{ns.rounds})")


if __name__ == "__main__":
    main()
