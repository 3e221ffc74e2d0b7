"""Snapshot export: snapshot_instance to its end event, against qemu-img convert of the disk alone.

One running QEMU guest (64 MiB, no OS) on a qcow2 overlay of a base image,
with --base-mib of data in the base and --overlay-mib in the overlay. Each
round exports the root disk twice, side by side: through the worker in this
process (cast -> instance.snapshot.end: the delta, the live block copy, the
qemu-img convert, the checksum and fsync, the events), and as
``qemu-img convert -U -O <format>`` of the same disk, nothing else. The
figure is worker / raw; a second one puts an fsync of the raw copy beside
it, since the worker makes its image durable before it says it is done.
The two go first by turns, each after a sync so neither pays for writing
back the other's output; both outputs are deleted before the next round.
Run: .venv/bin/python -m bench.snapshot [--format qcow2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import libvirt
from kombu import Connection

from bench.common import EventCounter, append_result, bench_config, machine, median
from bench.fleet import wait_events
from bench.parallel import QEMU_URI, remove_all
from tests.brokers import delete_names, notification_names, service_names
from tests.e2e.support import kvm_works
from worker import logs
from worker.amqp.client import RpcClient
from worker.service import Service
from worker.virt.domain_xml import DomainSpec, domain, to_string
from worker.virt.hypervisor import start_event_loop

NAME_PREFIX = "cw-bench-snap-"
SECTION = ("Snapshot export (running QEMU guest; worker cast->snapshot.end against qemu-img "
           "convert of the same disk)")


def _io(path: Path, command: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(path)], check=True,
                   capture_output=True)


def make_guest(conn: libvirt.virConnect, root: Path, uid: str, domain_type: str,
               base_mib: int, overlay_mib: int) -> Path:
    """A running guest on instances/<uid>/disk (1 GiB overlay holding data on a base); its disk."""
    base = root / "images" / "base"
    base.parent.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G"], check=True)
    _io(base, f"write -q -P 0x5a 0 {base_mib}M")
    directory = root / "instances" / uid
    directory.mkdir(parents=True)
    disk = directory / "disk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                    str(disk), "1G"], check=True)
    _io(disk, f"write -q -P 0xa5 {base_mib // 2}M {overlay_mib}M")
    spec = DomainSpec(f"{NAME_PREFIX}{uid[:13]}", uid, memory_mib=64, vcpus=1,
                      domain_type=domain_type, disks=(str(disk),))
    conn.defineXML(to_string(domain(spec))).create()
    return disk


def raw_export(disk: Path, fmt: str, target: Path) -> tuple[float, float]:
    """qemu-img convert of the running guest's disk (through its backing) alone, and the
    fsync that makes its output durable as the worker's is; seconds each."""
    started = time.perf_counter()
    subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", fmt, str(disk),
                    str(target)], check=True)
    converted = time.perf_counter()
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return converted - started, time.perf_counter() - converted


def _append2(pair: tuple[float, float], first: list[float], second: list[float]) -> None:
    first.append(pair[0])
    second.append(pair[1])


def worker_export(client: RpcClient, counter: EventCounter, host: str, uid: str,
                  image_id: str) -> float:
    """One snapshot cast to the in-process worker, to its end event; seconds."""
    done = counter.count(lambda kind: kind.startswith("instance.snapshot.e"))
    started = time.perf_counter()
    client.cast(host, "snapshot_instance", {"instance": {"uuid": uid}, "image_id": image_id})
    last = wait_events(counter, lambda kind: kind.startswith("instance.snapshot.e"), done + 1,
                       timeout=600)
    failed = counter.count(lambda kind: kind == "instance.snapshot.error")
    assert failed == 0, "the snapshot failed: see the worker's log"
    return last - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="exports each way")
    parser.add_argument("--format", default="qcow2", choices=("raw", "qcow2", "vmdk", "vdi"))
    parser.add_argument("--base-mib", type=int, default=256, help="data in the base image")
    parser.add_argument("--overlay-mib", type=int, default=64, help="data in the overlay")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    ns = parser.parse_args()
    logs.setup("error")
    start_event_loop()  # before any connection opens, as the worker does
    conn = libvirt.open(QEMU_URI)
    domain_type = "kvm" if kvm_works(conn) else "qemu"
    uid = str(uuid.uuid4())
    raw_s: list[float] = []
    fsync_s: list[float] = []
    work_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tag = uuid.uuid4().hex[:8]
        cfg = bench_config(tmp, virt_type=domain_type, topic=f"benchsnap{tag}",
                           snapshot_image_format=ns.format)
        counter = EventCounter(cfg.transport_url, cfg.control_exchange,
                               cfg.notifications.notification_topic)
        service = Service(cfg)
        service.start()
        try:
            disk = make_guest(conn, root, uid, domain_type, ns.base_mib, ns.overlay_mib)
            with Connection(cfg.transport_url) as amqp_conn:
                client = RpcClient(amqp_conn, exchange=cfg.control_exchange, topic=cfg.topic)
                for number in range(ns.rounds):
                    image_id = str(uuid.uuid4())
                    image, copy = root / "images" / image_id, root / f"raw-{number}"
                    steps = [lambda c=copy: _append2(raw_export(disk, ns.format, c), raw_s,
                                                     fsync_s),
                             lambda i=image_id: work_s.append(
                                 worker_export(client, counter, cfg.host, uid, i))]
                    for step in steps if number % 2 == 0 else reversed(steps):
                        # Neither run pays for writing back what the other left dirty.
                        os.sync()
                        step()
                    size = image.stat().st_size
                    print(f"round {number + 1}: raw {raw_s[-1] * 1000:.0f} ms (+ fsync "
                          f"{fsync_s[-1] * 1000:.0f} ms), worker "
                          f"{work_s[-1] * 1000:.0f} ms ({size / 2**20:.0f} MiB {ns.format})",
                          flush=True)
                    image.unlink()
                    copy.unlink()
        finally:
            counter.close()
            service.stop(grace=30)
            failures = remove_all([uid])
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            delete_names(cfg.transport_url,
                         service_names(cfg, [service.consumer.fanout_unique])
                         + notification_names(cfg), [cfg.control_exchange])
            if failures:
                print(f"WARNING: domains left behind: {failures}")
    raw, work = median(raw_s), median(work_s)
    durable = median([a + b for a, b in zip(raw_s, fsync_s, strict=True)])
    what = (f"{domain_type}, running guest, 1 GiB qcow2 overlay ({ns.base_mib} MiB in the base, "
            f"{ns.overlay_mib} MiB in the overlay) -> {ns.format}")
    print(f"snapshot export ({what}, median of {ns.rounds}): worker {work * 1000:.0f} ms to "
          f"instance.snapshot.end, qemu-img convert alone {raw * 1000:.0f} ms, "
          f"ratio {work / raw:.2f}; convert + fsync {durable * 1000:.0f} ms, "
          f"ratio {work / durable:.2f}")
    if not ns.no_record:
        append_result(SECTION, f"{machine()} | {what} | worker {work * 1000:.0f} ms "
                      f"cast->snapshot.end | qemu-img convert -U alone {raw * 1000:.0f} ms, "
                      f"convert + fsync {durable * 1000:.0f} ms | ratio {work / raw:.2f} "
                      f"({work / durable:.2f} against convert + fsync; median of {ns.rounds}) "
                      f"| `.venv/bin/python -m "
                      f"bench.snapshot --format {ns.format} --rounds {ns.rounds}`")


if __name__ == "__main__":
    main()
