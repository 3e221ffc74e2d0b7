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
left can serve those) and times them from the exit. Hosts not back within
--failover-timeout are named. Then it starts the node again and waits for it
to rejoin.

Run: .venv/bin/python -m bench.cluster_fleet   (about 8-10 minutes here; a dated
row goes to bench/RESULTS.md, --no-record for none; --sizes 1,10 for a shorter
run). The cluster is started (about 30-50 s) and removed in every case.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import tempfile
import time
import uuid
from typing import Any

from kombu import Connection, Exchange, Producer

from bench.common import BROKER, append_result, is_end, machine, median, percentile
from bench.fleet import Fleet, add_arguments, host_names, run_size
from bench.fleet_hosts import node_xml
from tests.broker_cluster import BrokerCluster
from tests.brokers import PrivateBroker, pid_alive, wait_until
from worker import logs
from worker.broker_urls import first_node

NAME, PORT = "cwbench", 5710  # another helper's cluster test uses cwcluster on 5690-5692
HOSTS_AT = 1000  # the size the linear fit predicts


def harness_node(cluster: BrokerCluster, hosts: list[str]) -> int:
    """The node the hash gives the fewest worker connections (consumer and publisher)."""
    load = [0] * len(cluster.nodes)
    for host in hosts:
        for role in (0, 1):
            load[first_node(cluster.oslo_url, host, role)] += 1
    return load.index(min(load))


def rotated(cluster: BrokerCluster, first: int) -> str:
    """kombu's `;` URL of the cluster, starting at node first."""
    nodes = cluster.nodes[first:] + cluster.nodes[:first]
    return ";".join(node.url for node in nodes)


def _rows(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines() if line.strip()]


def _breakdown(node: PrivateBroker) -> dict[str, int]:
    done = subprocess.run(["rabbitmq-diagnostics", "-n", node.node, "memory_breakdown",
                           "--formatter", "json"], env=node.env(), capture_output=True,
                          text=True, timeout=60, check=True)
    return {k: int(v["bytes"]) for k, v in json.loads(done.stdout).items()}


def census(cluster: BrokerCluster, harness: int, topic: str, ours: int) -> dict[str, Any]:
    """What the cluster holds: queues by type, worker connections and host-queue leaders
    per node, memory; ours = the harness's own connections on node harness (its counter)."""
    up = [node for node in cluster.nodes if node.pid() is not None]
    ask = up[0]
    index = {node.node: i for i, node in enumerate(cluster.nodes)}
    queues = _rows(ask.ctl("list_queues", "name", "type", "memory", "messages", "leader",
                           "-q", "--no-table-headers"))
    leaders = [0] * len(cluster.nodes)
    for name, kind, _, _, leader in queues:
        if kind == "quorum" and name.startswith((f"{topic}.", f"{topic}-alt.")):
            leaders[index[leader]] += 1
    by_port = {node.port: i for i, node in enumerate(cluster.nodes)}
    conns = [0] * len(cluster.nodes)
    for (port,) in _rows(ask.ctl("list_connections", "port", "-q", "--no-table-headers")):
        conns[by_port[int(port)]] += 1
    conns[harness] -= ours
    totals = re.findall(r"\{'?([\w@.-]+)'?,(\d+)\}", ask.ctl(
        "eval", "[{N, rpc:call(N, erlang, memory, [total])} || N <- rabbit_nodes:all_running()]."))
    parts: dict[str, int] = {}
    for node in up:
        for key, value in _breakdown(node).items():
            parts[key] = parts.get(key, 0) + value
    of = {kind: [int(q[2]) for q in queues if q[1] == kind] for kind in ("quorum", "classic")}
    return {
        "quorum": len(of["quorum"]), "classic": len(of["classic"]),
        "quorum_leader_mem": sum(of["quorum"]), "classic_mem": sum(of["classic"]),
        "messages": sum(int(q[3]) for q in queues), "conns": conns, "leaders": leaders,
        "mem_nodes": {name: int(total) for name, total in totals},
        "mem": sum(int(total) for _, total in totals),
        "mem_conn": sum(v for k, v in parts.items() if k.startswith("connection_")),
        "mem_quorum": parts.get("quorum_queue_procs", 0) + parts.get("quorum_ets", 0),
        "mem_classic": parts.get("queue_procs", 0),
    }


def _cast_all(fleet: Fleet, producer: Producer, uid: str) -> dict[str, str]:
    """One pause cast to every host; request id -> host."""
    wanted = {f"req-{uuid.uuid4()}": cfg.host for cfg in fleet.cfgs}
    exchange = Exchange(fleet.exchange, type="topic", durable=fleet.durable)
    for rid, host in wanted.items():
        producer.publish(fleet.body(uid, "pause_instance", rid), exchange=exchange,
                         routing_key=f"{fleet.topic}.{host}", content_type="application/json",
                         content_encoding="utf-8", delivery_mode=2)
    return wanted


def _ends(fleet: Fleet, wanted: dict[str, str], timeout: float) -> dict[str, float]:
    """request id -> arrival of its end (or error) event, for those that came in timeout."""
    got: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    with fleet.counter._cond:
        while len(got) < len(wanted) and time.monotonic() < deadline:
            for kind, items in fleet.counter.arrivals.items():
                for at, event in items if is_end(kind) else ():
                    rid = event["payload"]["nova_object.data"].get("request_id")
                    if rid in wanted and rid not in got:
                        got[rid] = at
            fleet.counter._cond.wait(0.2)
    return got


def _spread(prefix: str, since: float, wanted: dict[str, str], got: dict[str, float]
            ) -> dict[str, Any]:
    times = sorted(at - since for at in got.values())
    missing = sorted(host for rid, host in wanted.items() if rid not in got)
    return {f"{prefix}_first": times[0] if times else None,
            f"{prefix}_median": median(times) if times else None,
            f"{prefix}_last": times[-1] if times and not missing else None,
            f"{prefix}_missing": missing}


def failover(fleet: Fleet, cluster: BrokerCluster, target: int, uid: str,
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
    # Published without confirms (a confirm from a queue whose leader just went would
    # hold up the casts behind it); the connection stays open until every host answered.
    with Connection(fleet.url) as conn:
        producer = Producer(conn.channel())
        stopped = time.perf_counter()
        os.kill(pid, signal.SIGTERM)  # RabbitMQ's graceful stop, as `rabbitmqctl stop`
        at_stop = _cast_all(fleet, producer, uid)
        published = time.perf_counter()
        got = _ends(fleet, at_stop, timeout)
        wait_until(lambda: not pid_alive(pid), 60, f"{node.node} to exit", interval=0.01)
        exited = time.perf_counter()
        at_exit = _cast_all(fleet, producer, uid)
        got_after = _ends(fleet, at_exit, timeout)
    began = time.perf_counter()
    node.start()
    wait_until(lambda: len(cluster.running()) == len(cluster.nodes), 120, "the node to rejoin")
    return {"stopped_node": node.node, "exit_s": exited - stopped,
            "publish_s": published - stopped, "rejoin_s": time.perf_counter() - began,
            **_spread("fail", stopped, at_stop, got),
            **_spread("after_exit", exited, at_exit, got_after)}


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
        return failover(fleet, cluster, target, uuids[0], ns.failover_timeout)

    try:
        return run_size(fleet, uuids, ns, idle=idle, after=after)
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
          f" ms; cast then: every host served {_ms(clustered['after_exit_last'])} ms after "
          f"the exit (first {_ms(clustered['after_exit_first'])}, median "
          f"{_ms(clustered['after_exit_median'])}); rejoined in {clustered['rejoin_s']:.0f}s"
          + (f"; NOT BACK in {ns.failover_timeout:.0f}s: {gone}" if gone else ""), flush=True)
    return (f"N={n}: {clustered['throughput']:.0f}/s ({ratio['throughput']:.2f}), p50 "
            f"{percentile(clustered['latency'], 50):.1f} ({p50:.2f})/p99 "
            f"{percentile(clustered['latency'], 99):.1f} ({p99:.2f}) ms, fanout "
            f"{clustered['fanout_all']:.0f} ms ({ratio['fanout_all']:.2f}), failover "
            f"{_ms(clustered['fail_first'])}/{_ms(clustered['fail_median'])}/"
            f"{_ms(clustered['fail_last'])} ms (exit +{_ms(clustered['after_exit_last'])} ms), "
            f"{c['mem'] / 2**20:.0f} MiB")


def fit(empty: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The line through the two largest sizes' census: per host, per item, at HOSTS_AT."""
    (small, a), (big, b) = [(r["n"], r["census"]) for r in rows[-2:]]
    hosts: int = big - small

    def per(key: str, count: str | None = None) -> float:
        spread: int = hosts if count is None else max(1, b[count] - a[count])
        return float(b[key] - a[key]) / spread

    conns = (sum(b["conns"]) - sum(a["conns"])) / hosts
    b_conns, a_conns = sum(b["conns"]), sum(a["conns"])
    per_conn = (b["mem_conn"] - a["mem_conn"]) / max(1, b_conns - a_conns)
    at = b["mem"] + per("mem") * (HOSTS_AT - big)
    lines = [
        f"fit N={small}..{big}: per host {per('quorum'):.2f} quorum queues, "
        f"{per('classic'):.2f} classic, {conns:.2f} connections; broker memory "
        f"{per('mem') / 1024:.0f} KiB/host (three nodes together; N=0: "
        f"{empty['mem'] / 2**20:.0f} MiB, N={small}: {a['mem'] / 2**20:.0f}, N={big}: "
        f"{b['mem'] / 2**20:.0f})",
        f"  memory_breakdown: {per_conn / 1024:.0f} KiB per connection, "
        f"{per('mem_quorum', 'quorum') / 1024:.0f} KiB per quorum queue (its 3 replicas), "
        f"{per('mem_classic', 'classic') / 1024:.0f} KiB per classic queue; list_queues "
        f"memory (leader process) {per('quorum_leader_mem', 'quorum') / 1024:.0f} KiB per "
        f"quorum, {per('classic_mem', 'classic') / 1024:.0f} KiB per classic",
        f"  at {HOSTS_AT} hosts: {per('quorum') * HOSTS_AT:.0f} quorum + "
        f"{per('classic') * HOSTS_AT:.0f} classic queues, {conns * HOSTS_AT:.0f} connections, "
        f"about {at / 2**20:.0f} MiB of broker memory over the three nodes",
    ]
    print("\n".join(lines), flush=True)
    return (f"{per('mem') / 1024:.0f} KiB broker memory/host, {per_conn / 1024:.0f} KiB/conn, "
            f"{per('mem_quorum', 'quorum') / 1024:.0f} KiB/quorum queue, "
            f"{per('mem_classic', 'classic') / 1024:.0f} KiB/classic; {HOSTS_AT} hosts "
            f"~{at / 2**20:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, "1,10,50")
    parser.add_argument("--single-queues", choices=("quorum", "classic"), default="quorum",
                        help="queue type of the one-node baseline (the cluster: quorum)")
    parser.add_argument("--failover-timeout", type=float, default=120.0,
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
