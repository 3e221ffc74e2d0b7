"""What a RabbitMQ cluster holds for a fleet, counted with the nodes' own tools, and a line
through two fleet sizes (bench.cluster_fleet's census and fit).

rabbitmqctl list_queues (name, type, memory, messages, leader) and
list_connections (port: which node), erlang:memory(total) of every running
node (one eval, after a garbage collection of every process on every node),
and rabbitmq-diagnostics memory_breakdown of each: its
connection_* categories over the connections, quorum_queue_procs + quorum_ets
over the quorum queues (all replicas), queue_procs over the classic ones.
Also where a fleet's connections go: harness_node, the node it leaves emptiest.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

from tests.broker_cluster import BrokerCluster
from tests.brokers import PrivateBroker
from worker.broker_urls import first_node

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


def ctl_rows(text: str) -> list[list[str]]:
    """rabbitmqctl -q output: one list of tab-separated fields a line."""
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
    queues = ctl_rows(ask.ctl("list_queues", "name", "type", "memory", "messages", "leader",
                           "-q", "--no-table-headers"))
    leaders = [0] * len(cluster.nodes)
    for name, kind, _, _, leader in queues:
        if kind == "quorum" and name.startswith((f"{topic}.", f"{topic}-alt.")):
            leaders[index[leader]] += 1
    by_port = {node.port: i for i, node in enumerate(cluster.nodes)}
    conns = [0] * len(cluster.nodes)
    for (port,) in ctl_rows(ask.ctl("list_connections", "port", "-q", "--no-table-headers")):
        conns[by_port[int(port)]] += 1
    conns[harness] -= ours
    for node in up:  # garbage left by the declarations is not what a host costs
        node.ctl("eval", "[garbage_collect(P) || P <- processes()], ok.")
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
        "mem_classic": parts.get("queue_procs", 0), "breakdown": parts,
    }


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
    growth = sorted(((key, b["breakdown"][key] - a["breakdown"].get(key, 0))
                     for key in b["breakdown"]), key=lambda item: -item[1])
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
        f"  messages held at idle (events nobody consumed): N={small} {a['messages']}, "
        f"N={big} {b['messages']}; memory_breakdown per host, largest: " + ", ".join(
            f"{key} {delta / hosts / 1024:.0f} KiB" for key, delta in growth[:6]),
    ]
    print("\n".join(lines), flush=True)
    return (f"{per('mem') / 1024:.0f} KiB broker memory/host, {per_conn / 1024:.0f} KiB/conn, "
            f"{per('mem_quorum', 'quorum') / 1024:.0f} KiB/quorum queue, "
            f"{per('mem_classic', 'classic') / 1024:.0f} KiB/classic; {HOSTS_AT} hosts "
            f"~{at / 2**20:.0f} MiB")
