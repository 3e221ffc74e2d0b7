"""Fleet: N workers on one RabbitMQ, each its own host with a private libvirt test driver.

Every worker is a worker.service.Service with its own host name and
connection_uri test:///<node file> (a couple of running domains; each
connection gets a private copy, so every host has the same domain UUIDs and
its own state). For each fleet size N it reports: the throughput of casts
spread across all hosts (pause/unpause alternating, counted by end events),
cast -> end latency p50/p99 at a fixed moderate total rate, and the time one
cast on the fanout exchange takes to produce an end event from all N hosts
(beside one direct cast to one host, in the same run). Baselines in the same
run: the raw broker round trip (measured as bench/latency.py does) and the N=1 row.

Layout: the workers run in a few `python -m bench.fleet_hosts` subprocesses
(default one per core), the harness (publisher and event counter) in this
one. Measured while writing this on 2 cores, N=100: all in one process is
402 threads and 705 file descriptors (the worker waits with select(), which
fails at descriptor 1024), and 150 casts/s; in 2 processes 315/s; in 4,
309/s at 100 MiB more memory. So: one process per core (--procs to change).
The casts go to a private topic, so the fanout exchange is <topic>_fanout of
that topic (routing key <topic>), not the shared compute_fanout: other users
of the broker cast to compute_fanout, and our fanout cast must not reach them.
Run: .venv/bin/python -m bench.fleet
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from kombu import Connection, Exchange, Producer

from bench.common import (
    BROKER,
    EventCounter,
    append_result,
    bench_config,
    is_end,
    machine,
    median,
    percentile,
    raw_round_trip,
)
from bench.fleet_hosts import cpu_and_wakeups, flat_values, host_names, node_xml, rss_kib
from tests.brokers import delete_names, notification_names
from worker import logs
from worker.amqp.topology import durable
from worker.codec import envelope

PROCS = os.cpu_count() or 2


def wait_events(counter: EventCounter, predicate: Callable[[str], bool], n: int,
                timeout: float) -> float:
    """counter.wait, but failing at once (not after timeout) if the counter lost the broker.

    The counter's queue is exclusive: if its connection goes (someone restarts the
    shared RabbitMQ), the events published meanwhile are gone for good.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            left = max(0.0, deadline - time.monotonic())
            return counter.wait(predicate, n, timeout=min(2.0, left))
        except TimeoutError:
            if not counter._thread.is_alive():
                raise RuntimeError("the event counter lost its broker connection (was "
                                   "RabbitMQ restarted?); events since then are lost") from None
            if time.monotonic() >= deadline:
                raise


class Fleet:
    """N workers in `procs` subprocesses (bench.fleet_hosts), all on one private node file.

    url is where this process casts and counts events; options are more worker
    options (a cluster's transport_url, rabbit_quorum_queue).
    """

    def __init__(self, n: int, procs: int, node: str, tmp: str, tag: str, *,
                 url: str = BROKER, options: dict[str, Any] | None = None) -> None:
        self.n = n
        self.url = url
        self.topic = f"benchfl{tag}"
        self.exchange = f"bench_{tag}"
        self.notification_topic = f"bench_notifications_{tag}"
        self.cfgs = [bench_config(f"{tmp}/{tag}/{i}", host=host, topic=self.topic,
                                  control_exchange=self.exchange,
                                  notification_topic=self.notification_topic,
                                  connection_uri=f"test://{node}", **(options or {}))
                     for i, host in enumerate(host_names(tag, n))]
        # The exchange's flags as the workers declare it (durable with quorum queues).
        self.durable = durable(self.cfgs[0])
        self.counter = EventCounter(url, self.exchange, self.notification_topic,
                                    durable=self.durable)
        self.procs: list[subprocess.Popen[str]] = []
        self.ready: list[dict[str, Any]] = []
        began = time.perf_counter()
        try:
            for part in range(procs):
                hosts = [flat_values(c) for c in self.cfgs[part::procs]]
                if not hosts:
                    continue
                proc = subprocess.Popen([sys.executable, "-m", "bench.fleet_hosts"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"hosts": hosts}) + "\n")
                proc.stdin.flush()
                self.procs.append(proc)
            for proc in self.procs:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError("a fleet process exited before it was ready")
                self.ready.append(json.loads(line))
            wait_events(self.counter, lambda k: k == "service.update", n, timeout=120)
        except BaseException:
            self.close()
            raise
        self.start_s = time.perf_counter() - began

    def cpu_seconds(self) -> float:
        """CPU time the fleet's processes have used so far, together."""
        return sum(cpu_and_wakeups(p.pid)[0] for p in self.procs)

    def idle_cpu(self, seconds: float) -> float:
        """Percent of one core the fleet's processes used together over seconds."""
        pids = [p.pid for p in self.procs]
        cpu0, wall0 = sum(cpu_and_wakeups(p)[0] for p in pids), time.monotonic()
        time.sleep(seconds)
        used = sum(cpu_and_wakeups(p)[0] for p in pids) - cpu0
        return 100 * used / (time.monotonic() - wall0)

    def rss_mib(self) -> float:
        """Resident memory of the fleet's processes together."""
        return sum(rss_kib(p.pid) for p in self.procs) / 1024

    def close(self) -> dict[str, Any]:
        """Stop every worker, delete every queue and the exchange; what the stop took."""
        stopped: dict[str, Any] = {"stop_s": 0.0, "queues_deleted": 0, "delete_failed": 0}
        for proc in self.procs:  # all of them first: they stop side by side
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.write("stop\n")
                proc.stdin.flush()
        for proc in self.procs:
            try:
                out, _ = proc.communicate(timeout=90)
                lines = [json.loads(line) for line in out.splitlines() if line.strip()]
                report = next(r for r in lines if r.get("stopped"))
                stopped["stop_s"] = max(stopped["stop_s"], report["stop_s"])
                stopped["queues_deleted"] += report["queues_deleted"]
                stopped["delete_failed"] += report["delete_failed"]
            except (subprocess.TimeoutExpired, ValueError, StopIteration, OSError):
                print(f"WARNING: fleet process {proc.pid} did not stop cleanly; killed")
                proc.kill()
                proc.wait(10)
                stopped["delete_failed"] += 1
        self.counter.close()
        stopped["delete_failed"] += delete_names(
            self.url, notification_names(self.cfgs[0]), [self.exchange])
        return stopped

    # --- measurements ------------------------------------------------------------------

    def body(self, uid: str, method: str, request_id: str) -> bytes:
        """A cast of method on the instance uid, as nova sends it."""
        return envelope.wrap({"method": method, "args": {"instance": {"uuid": uid}},
                              "version": "6.0", "_unique_id": uuid.uuid4().hex,
                              "_context_request_id": request_id})

    def _errors(self) -> int:
        return self.counter.count(lambda k: k.endswith(".error"))

    def throughput(self, uuids: list[str], casts: int) -> float:
        """casts spread across every host (pause/unpause alternating); casts per second."""
        bodies = []
        per_round = self.n * len(uuids)
        for number in range(casts):
            host = self.cfgs[number % self.n].host
            uid = uuids[(number // self.n) % len(uuids)]
            method = "pause_instance" if (number // per_round) % 2 == 0 else "unpause_instance"
            bodies.append((f"{self.topic}.{host}", self.body(uid, method, f"req-{uuid.uuid4()}")))
        before, errors = self.counter.count(is_end), self._errors()
        with Connection(self.url) as conn:
            producer = Producer(conn.channel())
            exchange = Exchange(self.exchange, type="topic", durable=self.durable)
            started = time.perf_counter()
            for routing_key, body in bodies:
                producer.publish(body, exchange=exchange, routing_key=routing_key,
                                 content_type="application/json", content_encoding="utf-8",
                                 delivery_mode=2)
            # Wait with the connection open: these are published without confirms, and
            # closing it at once can lose the tail of them on a busy broker (seen here:
            # the last ~800 of 3000 casts never reached their queues).
            last = wait_events(self.counter, is_end, before + casts, timeout=300)
        assert self._errors() == errors, "some casts failed"
        return casts / (last - started)

    def latency(self, uuids: list[str], rate: float, count: int) -> list[float]:
        """Casts at a fixed total rate, host after host; ms from publish to the end event."""
        sent: dict[str, float] = {}
        before = self.counter.count(lambda k: k.endswith(".end"))
        per_round = self.n * len(uuids)
        with Connection(self.url) as conn:
            producer = Producer(conn.channel())
            exchange = Exchange(self.exchange, type="topic", durable=self.durable)
            start = time.perf_counter()
            for number in range(count):
                host = self.cfgs[number % self.n].host
                uid = uuids[(number // self.n) % len(uuids)]
                # Whatever state the throughput run left, both verbs succeed: pausing a
                # paused domain (or unpausing a running one) is a no-op.
                method = "pause_instance" if (number // per_round) % 2 == 0 else "unpause_instance"
                request_id = f"req-{uuid.uuid4()}"
                body = self.body(uid, method, request_id)
                sent[request_id] = time.perf_counter()
                producer.publish(body, exchange=exchange, routing_key=f"{self.topic}.{host}",
                                 content_type="application/json", content_encoding="utf-8",
                                 delivery_mode=2)
                delay = start + (number + 1) / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            wait_events(self.counter, lambda k: k.endswith(".end"), before + count, timeout=120)
        with self.counter._cond:
            return [(at - sent[rid]) * 1000
                    for kind, items in self.counter.arrivals.items() if kind.endswith(".end")
                    for at, e in items
                    if (rid := e["payload"]["nova_object.data"].get("request_id")) in sent]

    def fanout(self, uid: str, method: str) -> tuple[float, float]:
        """One cast on <topic>_fanout; ms to the first and to the last of the N end events."""
        exchange = Exchange(f"{self.topic}_fanout", type="fanout", durable=False,
                            auto_delete=True)
        return self._one_cast(exchange, self.topic, uid, method, self.n)

    def direct(self, uid: str, method: str) -> float:
        """One cast to the first host alone (the fanout's baseline); ms to its end event."""
        exchange = Exchange(self.exchange, type="topic", durable=self.durable)
        return self._one_cast(exchange, f"{self.topic}.{self.cfgs[0].host}", uid, method, 1)[1]

    def _one_cast(self, exchange: Exchange, routing_key: str, uid: str, method: str,
                  hosts: int) -> tuple[float, float]:
        request_id = f"req-{uuid.uuid4()}"

        def ours(event: dict[str, Any]) -> bool:
            return bool(event["payload"]["nova_object.data"].get("request_id") == request_id)

        with Connection(self.url) as conn:
            producer = Producer(conn.channel())
            body = self.body(uid, method, request_id)
            started = time.perf_counter()
            producer.publish(body, exchange=exchange, routing_key=routing_key,
                             content_type="application/json", content_encoding="utf-8",
                             delivery_mode=2)
            deadline = time.monotonic() + 60
            with self.counter._cond:
                while True:
                    ends = [(at, e) for kind, items in self.counter.arrivals.items()
                            if is_end(kind) for at, e in items if ours(e)]
                    if len(ends) >= hosts:
                        break
                    if time.monotonic() > deadline or not self.counter._thread.is_alive():
                        raise TimeoutError(f"{method}: {len(ends)} of {hosts} hosts answered")
                    self.counter._cond.wait(0.5)
        assert len({e["publisher_id"] for _, e in ends}) == hosts, "a host answered twice"
        faults = [(e["publisher_id"], e["payload"]["nova_object.data"]["fault"])
                  for _, e in ends if e["event_type"].endswith(".error")]
        assert not faults, f"{method} failed on {len(faults)} of {hosts} hosts: {faults[:3]}"
        times = sorted(at for at, _ in ends)
        return (times[0] - started) * 1000, (times[-1] - started) * 1000


#: A measurement of bench.cluster_fleet's run beside run_size's own: more figures.
Extra = Callable[[Fleet], dict[str, Any]]


def run_size(fleet: Fleet, uuids: list[str], ns: argparse.Namespace, *,
             idle: Extra | None = None, after: Extra | None = None,
             failed: Callable[[Fleet], object] | None = None) -> dict[str, Any]:
    """Every figure for one fleet, which is closed afterwards.

    idle runs while the fleet is idle, before any load; after, at the end;
    failed, when a measurement raised, before the fleet is closed.
    """
    n = fleet.n
    figures: dict[str, Any] = {"n": n, "procs": len(fleet.procs), "start_s": fleet.start_s}
    try:
        figures["threads"] = max(r["threads"] for r in fleet.ready)
        figures["fds"] = max(r["fds"] for r in fleet.ready)
        figures["idle_cpu"] = fleet.idle_cpu(ns.idle_seconds)
        figures["rss_mib"] = fleet.rss_mib()
        figures.update(idle(fleet) if idle else {})
        cpu0 = fleet.cpu_seconds()
        figures["throughput"] = fleet.throughput(uuids[:-1], ns.casts)
        figures["cpu_per_cast"] = (fleet.cpu_seconds() - cpu0) * 1000 / ns.casts
        figures["latency"] = fleet.latency(uuids[:-1], ns.rate, ns.latency_casts)
        fan, direct, fan_cpu = [], [], []
        for number in range(ns.fanouts):
            method = "pause_instance" if number % 2 == 0 else "unpause_instance"
            time.sleep(0.2)  # each one from a quiet fleet
            direct.append(fleet.direct(uuids[0], method))
            time.sleep(0.2)
            cpu0 = fleet.cpu_seconds()
            fan.append(fleet.fanout(uuids[-1], method))
            fan_cpu.append((fleet.cpu_seconds() - cpu0) * 1000 / n)
        figures["fanout_first"] = median([f for f, _ in fan])
        figures["fanout_all"] = median([a for _, a in fan])
        figures["direct"] = median(direct)
        figures["cpu_per_fanout_host"] = median(fan_cpu)
        figures.update(after(fleet) if after else {})
    except BaseException:
        if failed:
            failed(fleet)
        raise
    finally:
        figures.update(fleet.close())
    return figures


def add_arguments(parser: argparse.ArgumentParser, sizes: str) -> None:
    """The options of a fleet run (bench.cluster_fleet takes the same)."""
    parser.add_argument("--sizes", default=sizes, help="fleet sizes, comma separated")
    parser.add_argument("--procs", type=int, default=PROCS,
                        help=f"worker processes per size (hosts split among them); "
                             f"default {PROCS}, 1 = every worker in one process")
    parser.add_argument("--domains", type=int, default=3,
                        help="domains per host (the last one only for fanout casts)")
    parser.add_argument("--casts", type=int, default=3000, help="casts for the throughput run")
    parser.add_argument("--rate", type=float, default=100.0, help="total casts/s for latency")
    parser.add_argument("--latency-casts", type=int, default=500)
    parser.add_argument("--fanouts", type=int, default=7, help="fanout casts per size")
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, "1,10,50,100")
    ns = parser.parse_args()
    logs.setup("error")
    sizes = [int(s) for s in ns.sizes.split(",") if s.strip()]
    assert ns.domains >= 2, "need one domain for casts and one for fanout"
    with tempfile.TemporaryDirectory() as tmp:
        node = f"{tmp}/node.xml"
        uuids = node_xml(node, ns.domains, prefix="fl")
        rtt_exchange = f"bench_rtt_{uuid.uuid4().hex[:8]}"
        raw = raw_round_trip(BROKER, rtt_exchange, 300)
        delete_names(BROKER, [], [rtt_exchange])
        print(f"baseline: raw broker round trip p50 {percentile(raw, 50):.2f} ms, "
              f"p99 {percentile(raw, 99):.2f} ms", flush=True)
        print(f"layout: each size's workers split over min(N, {ns.procs}) `bench.fleet_hosts` "
              f"processes (--procs; one per core by default), this process publishes and "
              f"counts; {ns.domains} domains per host", flush=True)
        rows = []
        for n in sizes:
            began = time.perf_counter()
            fig = run_size(Fleet(n, min(ns.procs, n), node, tmp, uuid.uuid4().hex[:8]),
                           uuids, ns)
            rows.append(fig)
            base = rows[0]
            lat = fig["latency"]
            failed = f", {fig['delete_failed']} deletes FAILED" if fig["delete_failed"] else ""
            pad = " " * 7
            print(f"N={n:<4} {fig['procs']} worker process(es), {fig['threads']} threads and "
                  f"{fig['fds']} fds per process, RSS {fig['rss_mib']:.0f} MiB in all, started "
                  f"in {fig['start_s']:.1f}s, idle CPU {fig['idle_cpu']:.2f}% of a core",
                  flush=True)
            print(f"{pad}throughput {fig['throughput']:.0f} casts/s "
                  f"({fig['throughput'] / base['throughput']:.2f} x N={base['n']}; fleet CPU "
                  f"{fig['cpu_per_cast']:.1f} ms per cast) | cast->end at {ns.rate:.0f}/s: "
                  f"p50 {percentile(lat, 50):.2f} ms, p99 {percentile(lat, 99):.2f} ms",
                  flush=True)
            print(f"{pad}fanout cast -> end from all {n}: {fig['fanout_all']:.1f} ms (first "
                  f"{fig['fanout_first']:.1f} ms; fleet CPU {fig['cpu_per_fanout_host']:.1f} ms "
                  f"per host) | one direct cast: {fig['direct']:.1f} ms | stop "
                  f"{fig['stop_s']:.1f}s, {fig['queues_deleted']} queues deleted{failed} | "
                  f"{time.perf_counter() - began:.0f}s", flush=True)
    if not ns.no_record:
        cells = [f"N={r['n']}: {r['throughput']:.0f}/s, p50 {percentile(r['latency'], 50):.1f}"
                 f"/p99 {percentile(r['latency'], 99):.1f} ms, fanout {r['fanout_all']:.0f} ms "
                 f"(CPU {r['cpu_per_fanout_host']:.1f} ms/host)" for r in rows]
        append_result(
            "Fleet (N workers, private test drivers, one RabbitMQ; casts/s, cast->end ms, "
            "fanout to all N ms)",
            f"{machine()} | {ns.procs} worker procs max, {ns.casts} casts, latency at "
            f"{ns.rate:.0f}/s | " + " | ".join(cells) + f" | raw broker round trip p50 "
            f"{percentile(raw, 50):.2f}/p99 {percentile(raw, 99):.2f} ms")


if __name__ == "__main__":
    main()
