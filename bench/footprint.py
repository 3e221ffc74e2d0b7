"""Footprint: the worker's resident memory idle and with 1,000 domains, and its idle CPU use.

The worker runs as `compute-worker run` in a subprocess, so what is measured is
that process alone: its RSS (VmRSS of /proc/<pid>/status) once started on
test:///default, its CPU time over ~10 s of idling (an idle worker must sleep,
not poll), then its RSS with 1,000 domains on a private test driver
(connection_uri test:///<node XML with 1,000 running domains>) after its
start-up sync, after a list_instances call, and after pause/unpause verbs on
every domain. Baseline, in the same run: a bare Python process that only
imports kombu and libvirt.
Run: .venv/bin/python -m bench.footprint
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kombu import Connection, Exchange, Producer

from bench.common import EventCounter, append_result, bench_config, is_end, machine
from bench.fleet import wait_events
from bench.fleet_hosts import cpu_and_wakeups, node_xml
from tests.brokers import delete_names, notification_names, service_names
from worker import logs
from worker.amqp.client import RpcClient
from worker.codec import envelope
from worker.config import Config

WORKER = Path(sys.executable).with_name("compute-worker")


def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in KiB, and Threads, from /proc/<pid>/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            values[key] = int(rest.split()[0])
    return values


def idle_cpu(pid: int, seconds: float) -> tuple[float, float, float]:
    """(percent of one core, CPU ms, wake-ups per second) of pid over seconds of wall time."""
    cpu0, sw0 = cpu_and_wakeups(pid)
    wall0 = time.monotonic()
    time.sleep(seconds)
    cpu1, sw1 = cpu_and_wakeups(pid)
    wall = time.monotonic() - wall0
    return 100 * (cpu1 - cpu0) / wall, 1000 * (cpu1 - cpu0), (sw1 - sw0) / wall


def bare_python_rss() -> int:
    """RSS (KiB) of a Python process that has imported kombu and libvirt, and nothing else."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, kombu, libvirt; print('ready', flush=True); "
                               "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        return status(proc.pid)["VmRSS"]
    finally:
        proc.stdin.close()
        proc.wait(10)


class WorkerProcess:
    """`compute-worker run` in a subprocess, with its log in a file."""

    def __init__(self, cfg: Config, log_path: str, counter: EventCounter,
                 started: list[WorkerProcess]) -> None:
        self.cfg = cfg
        self.log_path = log_path
        self.result: tuple[int | None, float] | None = None
        flags = {"host": cfg.host, "transport-url": cfg.transport_url,
                 "control-exchange": cfg.control_exchange, "topic": cfg.topic,
                 "notification-topic": cfg.notifications.notification_topic,
                 "virt-type": cfg.libvirt.virt_type,
                 "instances-path": cfg.instances_path, "state-dir": cfg.state_dir,
                 "log-level": "info"}
        if cfg.libvirt.connection_uri:
            flags["connection-uri"] = cfg.libvirt.connection_uri
        argv = [str(WORKER), "run"] + [a for k, v in flags.items() for a in (f"--{k}", v)]
        up_before = counter.count(lambda k: k == "service.update")
        began = time.perf_counter()
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=log,
                                         env={k: v for k, v in os.environ.items()
                                              if not k.startswith("COMPUTE_WORKER_")})
        started.append(self)  # stopped (and its queues deleted) whatever happens next
        try:
            wait_events(counter, lambda k: k == "service.update", up_before + 1, timeout=60)
        except TimeoutError:
            raise RuntimeError(f"worker did not start; log:\n{self.log_tail()}") from None
        self.start_seconds = time.perf_counter() - began

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of its log."""
        return "\n".join(Path(self.log_path).read_text().splitlines()[-lines:])

    def logged(self, event: str) -> list[dict[str, Any]]:
        """Its log lines with this event name."""
        found = []
        for line in Path(self.log_path).read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == event:
                found.append(entry)
        return found

    def stop(self) -> tuple[int | None, float]:
        """SIGTERM and wait; (exit status or None if it had to be killed, seconds). Once."""
        if self.result is not None:
            return self.result
        began = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            code = None
        fanout = [q for entry in self.logged("consumer_connected") for q in entry.get("queues", [])]
        # Its own queues only: the exchange and event queues are shared with the next worker.
        delete_names(self.cfg.transport_url, set(service_names(self.cfg, []) + fanout))
        self.result = code, time.perf_counter() - began
        return self.result


def verbs_on_all(cfg: Config, counter: EventCounter, uuids: list[str], method: str) -> float:
    """One cast of method per domain; seconds until every end (or error) event arrived."""
    before = counter.count(is_end)
    errors_before = counter.count(lambda k: k.endswith(".error"))
    with Connection(cfg.transport_url) as conn:
        producer = Producer(conn.channel())
        exchange = Exchange(cfg.control_exchange, type="topic", durable=False)
        started = time.perf_counter()
        for uid in uuids:
            producer.publish(envelope.wrap({
                "method": method, "args": {"instance": {"uuid": uid}}, "version": "6.0",
                "_unique_id": uuid.uuid4().hex, "_context_request_id": f"req-{uuid.uuid4()}"}),
                exchange=exchange, routing_key=f"{cfg.topic}.{cfg.host}",
                content_type="application/json", content_encoding="utf-8", delivery_mode=2)
        # With the connection open: closing it right after publishing (no confirms) can
        # lose the last casts on a busy broker.
        last = wait_events(counter, is_end, before + len(uuids), timeout=300)
    errors = counter.count(lambda k: k.endswith(".error")) - errors_before
    assert errors == 0, f"{errors} {method} casts failed"
    return last - started


def list_instances(cfg: Config) -> tuple[int, float]:
    """(how many instances list_instances returns, seconds for the call)."""
    with Connection(cfg.transport_url) as conn:
        client = RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic)
        began = time.perf_counter()
        found = client.call(cfg.host, "list_instances", {}, timeout=120)
        return len(found), time.perf_counter() - began


def mib(kib: int) -> str:
    """KiB as MiB text."""
    return f"{kib / 1024:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    ns = parser.parse_args()
    logs.setup("error")
    n = ns.domains

    def say(label: str, text: str) -> None:
        print(f"{label:<50} {text}", flush=True)

    bare = bare_python_rss()
    say("baseline: bare python, kombu + libvirt imported", f"RSS {mib(bare)}")
    started: list[WorkerProcess] = []
    with tempfile.TemporaryDirectory() as tmp:
        tag = uuid.uuid4().hex[:8]
        cfg = bench_config(f"{tmp}/idle", topic=f"benchfp{tag}")
        counter = EventCounter(cfg.transport_url, cfg.control_exchange,
                               cfg.notifications.notification_topic)
        try:
            worker = WorkerProcess(cfg, f"{tmp}/idle.log", counter, started)
            time.sleep(2)  # let the start-up sync and the first heartbeats pass
            idle = status(worker.proc.pid)
            idle_pct, idle_ms, idle_wakes = idle_cpu(worker.proc.pid, ns.idle_seconds)
            code, stop_s = worker.stop()
            say("worker idle (test:///default, 1 domain)",
                f"RSS {mib(idle['VmRSS'])} (+{mib(idle['VmRSS'] - bare)} over baseline), "
                f"{idle['Threads']} threads, started in {worker.start_seconds:.1f}s")
            say(f"worker idle CPU over {ns.idle_seconds:.0f}s",
                f"{idle_pct:.3f}% of one core ({idle_ms:.1f} ms CPU, {idle_wakes:.0f} "
                f"context switches/s over {idle['Threads']} threads)")
            say("worker SIGTERM -> exit", f"status {code} in {stop_s:.1f}s")

            node = f"{tmp}/node.xml"
            uuids = node_xml(node, n, prefix="fp")
            many = bench_config(f"{tmp}/many", topic=f"benchfp{tag}",
                                control_exchange=cfg.control_exchange,
                                notification_topic=cfg.notifications.notification_topic,
                                connection_uri=f"test://{node}")
            worker = WorkerProcess(many, f"{tmp}/many.log", counter, started)
            time.sleep(2)
            after_start = status(worker.proc.pid)
            say(f"worker with {n} domains, after start-up sync",
                f"RSS {mib(after_start['VmRSS'])} "
                f"({(after_start['VmRSS'] - idle['VmRSS']) / n:+.1f} KiB per domain over "
                f"idle), started in {worker.start_seconds:.1f}s")
            listed, list_s = list_instances(many)
            assert listed == n, f"list_instances gave {listed}, not {n}"
            after_list = status(worker.proc.pid)
            say(f"  after list_instances ({list_s:.2f}s)", f"RSS {mib(after_list['VmRSS'])}")
            pause_s = verbs_on_all(many, counter, uuids, "pause_instance")
            unpause_s = verbs_on_all(many, counter, uuids, "unpause_instance")
            after_verbs = status(worker.proc.pid)
            say(f"  after {n} pause + {n} unpause ({pause_s:.1f}s + {unpause_s:.1f}s)",
                f"RSS {mib(after_verbs['VmRSS'])}, {after_verbs['Threads']} threads")
            verbs_on_all(many, counter, uuids, "pause_instance")
            verbs_on_all(many, counter, uuids, "unpause_instance")
            after_verbs2 = status(worker.proc.pid)
            per_verb = (after_verbs2["VmRSS"] - after_verbs["VmRSS"]) / (2 * n)
            say(f"  after {2 * n} more verbs",
                f"RSS {mib(after_verbs2['VmRSS'])} ({per_verb:+.2f} KiB per verb), "
                f"peak {mib(after_verbs2['VmHWM'])}")
            say("  (the journal is in SQLite on disk, not in memory: completed casts",
                "are not what grows the RSS per verb; bench.journal measures it)")
            many_pct, many_ms, many_wakes = idle_cpu(worker.proc.pid, ns.idle_seconds)
            say(f"  idle CPU over {ns.idle_seconds:.0f}s with {n} domains",
                f"{many_pct:.3f}% of one core ({many_ms:.1f} ms CPU, {many_wakes:.0f} context "
                f"switches/s)")
            code2, stop2_s = worker.stop()
            say("  SIGTERM -> exit", f"status {code2} in {stop2_s:.1f}s")
        finally:
            for each in started:
                each.stop()  # a no-op for those already stopped
            counter.close()
            delete_names(cfg.transport_url, notification_names(cfg), [cfg.control_exchange])
    if not ns.no_record:
        append_result(
            "Footprint (worker subprocess RSS; idle CPU % of one core; baseline bare python)",
            f"{machine()} | idle RSS {mib(idle['VmRSS'])}, idle CPU {idle_pct:.3f}% "
            f"({idle_wakes:.0f} context switches/s) | {n} "
            f"domains: RSS {mib(after_start['VmRSS'])} after sync, {mib(after_verbs2['VmRSS'])} "
            f"after {4 * n} verbs, idle CPU {many_pct:.3f}% | bare python+kombu+libvirt "
            f"{mib(bare)}")


if __name__ == "__main__":
    main()
