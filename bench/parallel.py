"""Parallel slow verbs: suspend (managed save) + resume on real QEMU domains, 1 vs K at once.

The worker runs in-process on qemu:///system with max_concurrent_ops >= K and
tiny no-OS domains (64 MiB, 1 vCPU, defined with worker.domain_xml). For one
instance, then for K instances at once, it times from the first cast to the
last end event; the figure is parallel / (K * single), well under 1 when the
verbs really overlap. The baseline, in the same run on the same domains, is
the same managedSave + create done directly with libvirt-python, once and in
K threads sharing one connection (as the worker's verb threads do). Last, a
series of suspend/resume casts to one instance checks that their end events
arrive in cast order. Every domain (and managed-save image) is removed after.
Run: .venv/bin/python -m bench.parallel
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import libvirt
from kombu import Connection

from bench.common import EventCounter, append_result, bench_config, is_end, machine, median
from bench.fleet import wait_events
from tests.brokers import delete_names, notification_names, service_names
from tests.e2e.support import kvm_works
from tests.helpers import remove_domain
from worker import logs
from worker.amqp.client import RpcClient
from worker.config import Config
from worker.service import Service
from worker.virt.domain_xml import DomainSpec, domain, to_string
from worker.virt.hypervisor import start_event_loop

QEMU_URI = "qemu:///system"
NAME_PREFIX = "cw-bench-par-"


def define_vms(conn: libvirt.virConnect, count: int, domain_type: str,
               made: list[str]) -> list[str]:
    """Define and start count tiny domains, each noted in made before it is defined."""
    for _ in range(count):
        uid = str(uuid.uuid4())
        made.append(uid)  # noted first, so a failed define or start is cleaned up too
        conn.defineXML(to_string(domain(DomainSpec(
            f"{NAME_PREFIX}{uid[:13]}", uid, memory_mib=64, vcpus=1, domain_type=domain_type))))
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda u: conn.lookupByUUIDString(u).create(), made[-count:]))
    return made[-count:]


def remove_vm(conn: libvirt.virConnect, uid: str) -> str | None:
    """Destroy, drop the managed-save image, undefine; a failure as text, else None."""
    try:
        remove_domain(conn, uid)
    except libvirt.libvirtError as exc:
        return f"{uid}: {exc}"
    return None


def remove_all(uuids: list[str], patience: float = 60.0) -> list[str]:
    """Remove the domains side by side on a fresh connection; what could not be removed.

    Fresh, because the bench's own connection may be the casualty: other users of
    this libvirtd (fault-injection tests) restart it now and then.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            conn = libvirt.open(QEMU_URI)
            break
        except libvirt.libvirtError as exc:
            if time.monotonic() > deadline:
                return [f"{u}: cannot reconnect ({exc})" for u in uuids]
            time.sleep(1)
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            return [f for f in pool.map(lambda u: remove_vm(conn, u), uuids) if f]
    finally:
        conn.close()


def raw_save_restore(conn: libvirt.virConnect, uuids: list[str]) -> float:
    """managedSave + create of each domain, one thread per domain, shared connection; seconds."""
    doms = [conn.lookupByUUIDString(u) for u in uuids]
    gate = threading.Barrier(len(doms) + 1)

    def one(dom: libvirt.virDomain) -> None:
        gate.wait()
        dom.managedSave(libvirt.VIR_DOMAIN_SAVE_RUNNING)
        dom.create()

    threads = [threading.Thread(target=one, args=(d,)) for d in doms]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    gate.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for dom in doms:
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING, dom.state()
    return elapsed


class Casts:
    """Casts to the in-process worker and waits for their end (or error) events."""

    def __init__(self, cfg: Config, conn: Connection, counter: EventCounter) -> None:
        self.cfg = cfg
        self.client = RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic)
        self.counter = counter

    def send(self, uid: str, method: str) -> str:
        """One cast; its request_id."""
        sent = self.client.cast(self.cfg.host, method, {"instance": {"uuid": uid}})
        return str(sent["_context_request_id"])

    def ends_of(self, request_ids: list[str]) -> list[tuple[float, dict[str, Any]]]:
        """(arrival, event) of the end or error events of these requests, by arrival."""
        wanted = set(request_ids)
        with self.counter._cond:
            found = [(at, e) for kind, items in self.counter.arrivals.items() if is_end(kind)
                     for at, e in items
                     if e["payload"]["nova_object.data"].get("request_id") in wanted]
        return sorted(found, key=lambda pair: pair[0])

    def suspend_resume(self, uuids: list[str], timeout: float = 300) -> float:
        """suspend then resume cast to each instance at once; seconds to the last end event."""
        before = self.counter.count(is_end)
        started = time.perf_counter()
        ids = []
        for uid in uuids:
            ids += [self.send(uid, "suspend_instance"), self.send(uid, "resume_instance")]
        last = wait_events(self.counter, is_end, before + len(ids), timeout)
        ends = self.ends_of(ids)
        errors = [e["event_type"] for _, e in ends if not e["event_type"].endswith(".end")]
        assert not errors, f"verbs failed: {errors}"
        states = {e["payload"]["nova_object.data"]["uuid"]: e["payload"]["nova_object.data"]
                  ["power_state"] for _, e in ends if e["event_type"] == "instance.resume.end"}
        assert set(states.values()) == {"running"} and len(states) == len(uuids), states
        return last - started


def order_check(casts: Casts, uid: str, count: int) -> tuple[bool, list[str], float]:
    """count alternating suspend/resume casts to one instance; (in order?, actions, seconds)."""
    methods = ["suspend_instance" if n % 2 == 0 else "resume_instance" for n in range(count)]
    before = casts.counter.count(is_end)
    started = time.perf_counter()
    ids = [casts.send(uid, method) for method in methods]
    last = wait_events(casts.counter, is_end, before + count, timeout=300)
    ends = casts.ends_of(ids)
    got = [e["payload"]["nova_object.data"]["request_id"] for _, e in ends]
    actions = [e["event_type"].split(".", 1)[1] for _, e in ends]
    in_order = got == ids and all(a.endswith(".end") for a in actions)
    return in_order, actions, last - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", "--instances", type=int, default=4, help="K instances at once")
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw/worker rounds")
    parser.add_argument("--order-casts", type=int, default=6,
                        help="suspend/resume casts to one instance for the order check")
    parser.add_argument("--domain-type", choices=("kvm", "qemu"), default=None,
                        help="default: kvm when /dev/kvm works, else qemu (TCG)")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    ns = parser.parse_args()
    logs.setup("error")
    k = ns.instances
    start_event_loop()  # before any connection opens, as the worker does
    conn = libvirt.open(QEMU_URI)
    domain_type = ns.domain_type or ("kvm" if kvm_works(conn) else "qemu")
    uuids: list[str] = []
    raw_single, raw_par, work_single, work_par = [], [], [], []
    in_order, order_s = False, 0.0
    actions: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        tag = uuid.uuid4().hex[:8]
        # Own topic: the worker's fanout queue binds to <topic>_fanout, and other users of
        # the broker cast to compute_fanout; their casts must not reach (or count in) ours.
        cfg = bench_config(tmp, virt_type=domain_type, topic=f"benchpar{tag}",
                           max_concurrent_ops=max(k, 8), soft_reboot_timeout=2,
                           shutdown_timeout=2)
        service: Service | None = None
        counter = EventCounter(cfg.transport_url, cfg.control_exchange,
                               cfg.notifications.notification_topic)
        try:
            began = time.perf_counter()
            define_vms(conn, k, domain_type, uuids)
            print(f"{k} domains ({domain_type}, 64 MiB, 1 vCPU) defined and started in "
                  f"{time.perf_counter() - began:.1f}s", flush=True)
            # Warm-up, not counted: the first managed save of a domain is much slower.
            raw_save_restore(conn, uuids)
            service = Service(cfg)
            service.start()
            with Connection(cfg.transport_url) as amqp_conn:
                casts = Casts(cfg, amqp_conn, counter)
                for number in range(ns.rounds):
                    raw_single.append(raw_save_restore(conn, uuids[:1]))
                    work_single.append(casts.suspend_resume(uuids[:1]))
                    raw_par.append(raw_save_restore(conn, uuids))
                    work_par.append(casts.suspend_resume(uuids))
                    print(f"round {number + 1}: single raw {raw_single[-1]:.2f}s worker "
                          f"{work_single[-1]:.2f}s | {k} at once raw {raw_par[-1]:.2f}s "
                          f"worker {work_par[-1]:.2f}s", flush=True)
                in_order, actions, order_s = order_check(casts, uuids[0], ns.order_casts)
        finally:
            counter.close()
            fanout = []
            if service is not None:
                fanout = [service.consumer.fanout_unique]
                service.stop(grace=60)
            failures = remove_all(uuids)
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            delete_names(cfg.transport_url, service_names(cfg, fanout) + notification_names(cfg),
                         [cfg.control_exchange])
            if failures:
                print(f"WARNING: domains left behind: {failures}")

    rs, rp, ws, wp = median(raw_single), median(raw_par), median(work_single), median(work_par)
    raw_ratio, work_ratio = rp / (k * rs), wp / (k * ws)

    def say(label: str, text: str) -> None:
        print(f"{label:<42} {text}", flush=True)

    say("suspend+resume, 1 instance", f"worker {ws:.2f}s, raw libvirt {rs:.2f}s "
        f"(median of {ns.rounds} rounds)")
    say(f"suspend+resume, {k} instances at once", f"worker {wp:.2f}s, raw libvirt {rp:.2f}s "
        f"(max_concurrent_ops={cfg.max_concurrent_ops}, {domain_type})")
    say(f"parallel / ({k} x single)", f"worker {work_ratio:.2f}, raw libvirt {raw_ratio:.2f} "
        f"(1.0 = serial, 1/{k} = fully parallel; well under 1 is good)")
    say(f"{ns.order_casts} suspend/resume casts to one instance",
        f"end events in cast order: {'yes' if in_order else 'no'} "
        f"({' '.join(actions)}; {order_s:.1f}s)")
    if not ns.no_record:
        append_result(
            "Parallel slow verbs (suspend+resume on QEMU; ratio = parallel / (K x single))",
            f"{machine()} | {domain_type}, K={k} | worker single {ws:.2f}s, K at once "
            f"{wp:.2f}s, ratio {work_ratio:.2f} | raw libvirt single {rs:.2f}s, K threads "
            f"{rp:.2f}s, ratio {raw_ratio:.2f} | {ns.order_casts} casts to one instance "
            f"ended in order: {'yes' if in_order else 'no'}")


if __name__ == "__main__":
    main()
