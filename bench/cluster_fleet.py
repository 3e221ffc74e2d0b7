"""Cluster fleet: bench.fleet's N workers on a three-node RabbitMQ cluster, beside one node.

For each size N (1, 10, 50 by default) this runs bench.fleet's measurements
twice in turn: on one RabbitMQ node (the system broker, the baseline) and on a
private three-node cluster (tests/broker_cluster.py, nodes cwbench0-2 on AMQP
ports 5710-5712), and prints cluster/single ratios of throughput, cast -> end
latency and fanout time. Both run the workers with rabbit_quorum_queue = true
(quorum host, alt and event queues; --single-queues classic runs the baseline
with classic ones), so the ratio is what the cluster costs, not what quorum
queues cost. On the cluster each worker gets oslo's comma URL
(rabbit://guest:guest@127.0.0.1:5710,...:5711,...:5712/): its consumer starts
at a node chosen by a hash of its host name, its publisher one node on
(worker/broker_urls.py first_node); this process casts and counts events on
the node the hash gives the fewest worker connections (kombu's `;` form, that
node first).

On the cluster it also counts, at idle and before any load, what the broker
holds (rabbitmqctl list_queues, list_connections, erlang:memory(total) and
rabbitmq-diagnostics memory_breakdown on every node, also once with no fleet:
N=0), and fits a line through N=10 and N=50 (the two largest sizes): queues,
connections and broker memory per host, memory per connection, per quorum
queue (its three replicas) and per classic queue, and a prediction at 1,000
hosts. Then failover: it stops (SIGTERM, RabbitMQ's graceful stop) the node
that holds the most worker connections among the nodes this process does not
use (ties: the one leading most host queues), casts at once to every host and
times from the stop to each host's end event (first/median/last host); then,
once the node's process has exited, casts to every host again (only the nodes
left can serve those) and times them from that cast. Hosts not back within
--failover-timeout are named. Then it starts the node again and waits for it
to rejoin.

Run: .venv/bin/python -m bench.cluster_fleet   (about 8-10 minutes here; a dated
row goes to bench/RESULTS.md, --no-record for none; --sizes 1,10 for a shorter
run). The cluster is started (about 30-50 s) and removed in every case.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import os
import re
import shutil
import signal
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kombu import Connection, Exchange, Producer

from bench.broker_census import census, ctl_rows, fit, harness_node, rotated
from bench.common import BROKER, append_result, is_end, machine, median, percentile
from bench.fleet import Fleet, add_arguments, run_size
from bench.fleet_hosts import host_names, node_xml
from tests.broker_cluster import BrokerCluster
from tests.brokers import PrivateBroker, pid_alive, wait_until
from worker import logs
from worker.broker_urls import first_node
from worker.codec import envelope

NAME, PORT = "cwbench", 5710  # another helper's cluster test uses cwcluster on 5690-5692


#: request id -> (host, the message's _unique_id: the worker's journal key)
Casts = dict[str, tuple[str, str]]


def _cast_all(fleet: Fleet, producer: Producer, uid: str) -> Casts:
    """One pause cast to every host."""
    wanted: Casts = {}
    exchange = Exchange(fleet.exchange, type="topic", durable=fleet.durable)
    for cfg in fleet.cfgs:
        rid = f"req-{uuid.uuid4()}"
        body = fleet.body(uid, "pause_instance", rid)
        wanted[rid] = (cfg.host, envelope.unwrap(body, 1 << 20)["_unique_id"])
        producer.publish(body, exchange=exchange, routing_key=f"{fleet.topic}.{cfg.host}",
                         content_type="application/json", content_encoding="utf-8",
                         delivery_mode=2)
    return wanted


def _ends(fleet: Fleet, wanted: Casts, timeout: float, pump: Callable[[], None]
          ) -> dict[str, float]:
    """request id -> arrival of its end (or error) event, for those that came in timeout;
    pump() (a short wait for the caster's confirms) between looks."""
    got: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(wanted) and time.monotonic() < deadline:
        with fleet.counter._cond:
            for kind, items in fleet.counter.arrivals.items():
                for at, event in items if is_end(kind) else ():
                    rid = event["payload"]["nova_object.data"].get("request_id")
                    if rid in wanted and rid not in got:
                        got[rid] = at
        pump()
    return got


def _confirmed(channel: Any) -> dict[int, str]:
    """Delivery tag -> "ack" or "nack" as the broker confirms the channel's publishes.

    Confirm mode, but no publish waits for its confirm (one from a queue whose
    leader just went would hold up the casts behind it): they are read as they come.
    """
    verdicts: dict[int, str] = {}

    def mark(verdict: str) -> Callable[[int, bool], None]:
        def on(tag: int, multiple: bool) -> None:
            for earlier in range(1, tag + 1) if multiple else (tag,):
                verdicts.setdefault(earlier, verdict)
        return on

    channel.confirm_select()
    channel.events["basic_ack"].add(mark("ack"))
    channel.events["basic_nack"].add(mark("nack"))
    return verdicts


def _drain(conn: Connection) -> None:  # for the confirms
    with contextlib.suppress(TimeoutError):
        conn.drain_events(timeout=0.2)


def _spread(prefix: str, since: float, wanted: Casts, got: dict[str, float]
            ) -> dict[str, Any]:
    times = sorted(at - since for at in got.values())
    missing = sorted(host for rid, (host, _) in wanted.items() if rid not in got)
    return {f"{prefix}_first": times[0] if times else None,
            f"{prefix}_median": median(times) if times else None,
            f"{prefix}_last": times[-1] if times and not missing else None,
            f"{prefix}_missing": missing}


def _round(fleet: Fleet, uid: str, timeout: float, lost: list[str],
           first: Callable[[], None] | None = None
           ) -> tuple[float, Casts, dict[str, float], dict[str, str]]:
    """On a new connection: first() (the stop), a cast to every host, their end events;
    (the time first() returned, the casts, request id -> its end event's arrival,
    request id -> the broker's confirm of the cast: ack, nack or none).

    A connection the broker closes under the casts is noted in lost, and the
    round cast again on a new one (first() is not done twice).
    """
    for _attempt in range(3):
        conn = Connection(fleet.url)
        try:
            channel = conn.channel()
            verdicts = _confirmed(channel)
            producer = Producer(channel)
            if first is not None:
                first()
                first = None
            started = time.perf_counter()
            wanted = _cast_all(fleet, producer, uid)
            got = _ends(fleet, wanted, timeout, functools.partial(_drain, conn))
            # Delivery tags count the channel's publishes from 1, in _cast_all's order.
            said = {rid: verdicts.get(tag, "none") for tag, rid in enumerate(wanted, 1)}
            return started, wanted, got, said
        except (*conn.connection_errors, *conn.channel_errors) as exc:
            lost.append(f"{type(exc).__name__}: {exc}"[:200])
        finally:
            with contextlib.suppress(Exception):
                conn.release()
    raise RuntimeError(f"the caster's connection to the cluster failed 3 times: {lost}")


def _log_lines(node: PrivateBroker, since: str) -> list[str]:
    """The lines of node's log from since (its time stamp, UTC) on that tell of errors."""
    lines = node.log_file.read_text(errors="replace").splitlines()
    return [line[:300] for line in lines if line[:26] >= since
            and re.search(r"\[(error|warning)\]|closing AMQP connection", line)]


def _why(fleet: Fleet, cluster: BrokerCluster, wanted: Casts, got: dict[str, float],
         verdicts: dict[str, str]) -> list[str]:
    """For each host whose cast was not served: what the counter, the broker and the
    host's journal say of it, and which nodes its connections started on."""
    rows: dict[str, list[str]] = {}
    missing = {rid: item for rid, item in wanted.items() if rid not in got}
    if missing:
        ask = next(node for node in cluster.nodes if node.pid() is not None)
        rows = {row[0]: row[1:] for row in ctl_rows(ask.ctl(
            "list_queues", "name", "messages_ready", "messages_unacknowledged", "leader",
            "-q", "--no-table-headers"))}
    cfgs = {cfg.host: cfg for cfg in fleet.cfgs}
    said = []
    for rid, (host, unique) in missing.items():
        with fleet.counter._cond:
            kinds = [kind for kind, items in fleet.counter.arrivals.items() for _, e in items
                     if e["payload"].get("nova_object.data", {}).get("request_id") == rid]
        path = Path(cfgs[host].state_dir) / "journal.sqlite3"
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                row = db.execute("SELECT outgoing FROM journal WHERE id = ?",
                                 (unique,)).fetchone()
            journal = "not in its journal" if row is None else f"journal: {row[0][:160]}"
        except sqlite3.Error as exc:
            journal = f"journal unreadable ({exc})"
        ready, unacked, leader = rows.get(f"{fleet.topic}.{host}", ["?", "?", "?"])
        nodes = [cluster.nodes[first_node(cluster.oslo_url, host, r)].node for r in (0, 1)]
        said.append(f"{host} (consumer started on {nodes[0]}, publisher on {nodes[1]}): "
                    f"events for its cast {kinds or 'none'}; its queue {ready} ready, "
                    f"{unacked} unacked, leader {leader}; {journal}; the broker's confirm of the "
                    f"cast: {verdicts[rid]}")
    return said


def failover(fleet: Fleet, cluster: BrokerCluster, target: int, harness: int, uid: str,
             timeout: float) -> dict[str, Any]:
    """Stop node target; cast to every host at once, and again once the node has exited.

    Seconds from the stop to each host's end event, both rounds: a cast of the
    first round may still be served through the stopping node (it closes its
    connections a few ms after the signal, and exits seconds later); one of the
    second round only through the nodes left.
    """
    node = cluster.nodes[target]
    pid = node.pid()
    assert pid is not None, f"{node.node} is not running"
    since = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    lost: list[str] = []
    stop, exits = [0.0], [0.0]  # the stop's and the node's exit's perf_counter

    def watch() -> None:
        while pid_alive(pid):
            time.sleep(0.01)
        exits[0] = time.perf_counter()

    def stopping() -> None:
        stop[0] = time.perf_counter()
        os.kill(pid, signal.SIGTERM)  # RabbitMQ's graceful stop, as `rabbitmqctl stop`
        threading.Thread(target=watch, daemon=True).start()

    _, at_stop, got, verdicts = _round(fleet, uid, timeout, lost, first=stopping)
    why = _why(fleet, cluster, at_stop, got, verdicts)
    exited = wait_until(lambda: exits[0], 60, f"{node.node} to exit")
    cast_again, at_exit, got_after, _ = _round(fleet, uid, timeout, lost)
    began = time.perf_counter()
    node.start()
    wait_until(lambda: len(cluster.running()) == len(cluster.nodes), 120, "the node to rejoin")
    return {"stopped_node": node.node, "exit_s": exited - stop[0],
            "rejoin_s": time.perf_counter() - began, "caster_lost": lost, "why": why,
            "harness_log": _log_lines(cluster.nodes[harness], since) if lost else [],
            **_spread("fail", stop[0], at_stop, got),
            **_spread("after_exit", cast_again, at_exit, got_after)}


def post_mortem(cluster: BrokerCluster, topic: str) -> None:
    """What the broker holds of a fleet that failed, and its nodes' logs kept in /tmp."""
    with contextlib.suppress(Exception):
        ask = next(node for node in cluster.nodes if node.pid() is not None)
        queues = [row for row in ctl_rows(ask.ctl(
            "list_queues", "name", "messages_ready", "messages_unacknowledged", "consumers",
            "leader", "-q", "--no-table-headers")) if row[0].startswith(topic)]
        print(f"post mortem: {len(queues)} queues of {topic}; ready "
              f"{sum(int(q[1]) for q in queues)}, unacked {sum(int(q[2]) for q in queues)}, "
              f"without a consumer {[q[0] for q in queues if q[3] == '0']}; the fullest: "
              f"{sorted(queues, key=lambda q: -int(q[1]) - int(q[2]))[:5]}", flush=True)
    kept = Path(tempfile.mkdtemp(prefix="cwbench-logs-"))
    for node in cluster.nodes:
        with contextlib.suppress(OSError):
            shutil.copy(node.log_file, kept / node.log_file.name)
    print(f"post mortem: the nodes' logs are kept in {kept}", flush=True)


def cluster_size(cluster: BrokerCluster, n: int, node: str, tmp: str, uuids: list[str],
                 ns: argparse.Namespace) -> dict[str, Any]:
    """run_size on the cluster, with the census at idle and the failover at the end."""
    tag = uuid.uuid4().hex[:8]
    harness = harness_node(cluster, host_names(tag, n))
    fleet = Fleet(n, min(ns.procs, n), node, tmp, tag, url=rotated(cluster, harness),
                  options={"transport_url": cluster.oslo_url, "rabbit_quorum_queue": True})
    counted: dict[str, Any] = {}

    def idle(fleet: Fleet) -> dict[str, Any]:
        counted.update(census(cluster, harness, fleet.topic, ours=1))
        return {"census": dict(counted), "harness": cluster.nodes[harness].node}

    def after(fleet: Fleet) -> dict[str, Any]:
        others = [i for i in range(len(cluster.nodes)) if i != harness]
        target = max(others, key=lambda i: (counted["conns"][i], counted["leaders"][i]))
        return failover(fleet, cluster, target, harness, uuids[0], ns.failover_timeout)

    try:
        return run_size(fleet, uuids, ns, idle=idle, after=after,
                        failed=lambda fleet: post_mortem(cluster, fleet.topic))
    finally:  # a failover that failed half-way must not leave the next size two nodes
        for member in cluster.nodes:
            if member.pid() is None:
                member.start()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def report(single: dict[str, Any], clustered: dict[str, Any], ns: argparse.Namespace) -> str:
    """Two table rows and the ratios of one size; the RESULTS.md cell."""
    n = clustered["n"]
    for name, fig in (("single", single), ("cluster", clustered)):
        lat = fig["latency"]
        print(f"N={n:<3} {name:<7} {fig['throughput']:6.0f} casts/s ({fig['throughput'] / n:6.1f}"
              f"/host) | cast->end p50 {percentile(lat, 50):6.2f} p99 {percentile(lat, 99):7.2f}"
              f" ms | fanout all {fig['fanout_all']:6.1f} first {fig['fanout_first']:5.1f} ms |"
              f" direct {fig['direct']:5.1f} ms | started {fig['start_s']:.1f}s", flush=True)
    ratio = {key: clustered[key] / single[key] for key in ("throughput", "fanout_all", "direct")}
    p50 = percentile(clustered["latency"], 50) / percentile(single["latency"], 50)
    p99 = percentile(clustered["latency"], 99) / percentile(single["latency"], 99)
    print(f"      cluster/single: throughput {ratio['throughput']:.2f}, p50 {p50:.2f}, p99 "
          f"{p99:.2f}, fanout {ratio['fanout_all']:.2f}, direct {ratio['direct']:.2f}")
    c = clustered["census"]
    print(f"      census: {c['quorum']} quorum + {c['classic']} classic queues, worker "
          f"connections per node {c['conns']}, host-queue leaders {c['leaders']} (harness on "
          f"{clustered['harness']}), broker memory {c['mem'] / 2**20:.0f} MiB")
    gone = clustered["fail_missing"] + clustered["after_exit_missing"]
    print(f"      failover: stopped {clustered['stopped_node']} (most worker connections "
          f"off the harness's node); cast at the stop: every host served after "
          f"{_ms(clustered['fail_last'])} ms (first {_ms(clustered['fail_first'])}, median "
          f"{_ms(clustered['fail_median'])}); node exited at {clustered['exit_s'] * 1000:.0f}"
          f" ms; cast again after that: every host served {_ms(clustered['after_exit_last'])}"
          f" ms after that cast (first {_ms(clustered['after_exit_first'])}, median "
          f"{_ms(clustered['after_exit_median'])}); rejoined in {clustered['rejoin_s']:.0f}s"
          + (f"; NOT BACK in {ns.failover_timeout:.0f}s: {gone}" if gone else ""), flush=True)
    for text in clustered["why"]:
        print(f"      not served: {text}")
    for text in clustered["caster_lost"]:
        print(f"      the broker closed the caster's connection: {text}; "
              f"{clustered['harness']}'s log then:")
        print("\n".join(f"        {line}" for line in clustered["harness_log"][-12:]), flush=True)
    return (f"N={n}: {clustered['throughput']:.0f}/s ({ratio['throughput']:.2f}), p50 "
            f"{percentile(clustered['latency'], 50):.1f} ({p50:.2f})/p99 "
            f"{percentile(clustered['latency'], 99):.1f} ({p99:.2f}) ms, fanout "
            f"{clustered['fanout_all']:.0f} ms ({ratio['fanout_all']:.2f}), failover "
            f"{_ms(clustered['fail_first'])}/{_ms(clustered['fail_median'])}/"
            f"{_ms(clustered['fail_last'])} ms (a cast after the exit: all in "
            f"{_ms(clustered['after_exit_last'])} ms), "
            f"{c['mem'] / 2**20:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, "1,10,50")
    parser.add_argument("--single-queues", choices=("quorum", "classic"), default="quorum",
                        help="queue type of the one-node baseline (the cluster: quorum)")
    parser.add_argument("--failover-timeout", type=float, default=60.0,
                        help="seconds every host has to serve a cast after the stop")
    ns = parser.parse_args()
    logs.setup("error")
    sizes = [int(s) for s in ns.sizes.split(",") if s.strip()]
    assert len(sizes) >= 2, "the fit needs two sizes"
    quorum = {"rabbit_quorum_queue": ns.single_queues == "quorum"}
    cluster = BrokerCluster(3, name=NAME, port=PORT)
    cells = []
    began = time.perf_counter()
    try:
        cluster.start()
        print(f"cluster {', '.join(n.node for n in cluster.nodes)} up in "
              f"{time.perf_counter() - began:.0f}s; single node: {BROKER} "
              f"({ns.single_queues} queues); workers heartbeat 20 s", flush=True)
        empty = census(cluster, 0, "-", ours=0)
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            node = f"{tmp}/node.xml"
            uuids = node_xml(node, ns.domains, prefix="fl")
            for n in sizes:
                single = run_size(Fleet(n, min(ns.procs, n), node, tmp, uuid.uuid4().hex[:8],
                                        options=quorum), uuids, ns)
                rows.append(cluster_size(cluster, n, node, tmp, uuids, ns))
                cells.append(report(single, rows[-1], ns))
        cells.append(fit(empty, rows))
    finally:
        cluster.close()
    print(f"total {time.perf_counter() - began:.0f}s", flush=True)
    if not ns.no_record:
        append_result(
            "Cluster fleet (N workers on a 3-node RabbitMQ cluster, quorum queues; casts/s, "
            "cast->end ms, fanout ms, failover first/median/last host ms; (cluster/single))",
            f"{machine()} | {ns.casts} casts, latency at {ns.rate:.0f}/s, single node "
            f"{ns.single_queues} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
