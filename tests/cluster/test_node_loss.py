"""One worker on a three-node RabbitMQ cluster loses no cast and repeats no effect when nodes go.

The cluster tier (issue 15). It starts a cluster of its own (``cwcluster0..2@<host>``, AMQP
ports 5690-5692), runs one ``compute-worker run`` against it in oslo's cluster URL form with
quorum queues, and casts pause/unpause across eight tiny QEMU domains at a steady rate
while the node that leads the worker's host queue is stopped and started again, and then
another node is killed with SIGKILL: the one holding the worker's publisher and leading the
event queues, where RabbitMQ 3.10 nacks publishes for a while (see _second_victim). It
proves that every cast completed with its end event, no verb ran twice and per-instance
order held (the final libvirt states are what the last casts asked for), and that the same
worker process moved its connections off each lost node by itself. The counts and each
fault's failover time print at the end of the run.

Run it alone with ``.venv/bin/python -m pytest tests/cluster -q`` (needs rabbitmq-server and a
libvirtd with QEMU; about 90 s here, up to 150 s on a loaded machine, a third of it booting
the nodes).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest
from kombu import Connection, Queue

from tests.broker_cluster import BrokerCluster
from tests.brokers import PrivateBroker, wait_until
from tests.cluster.failover import (
    CLUSTER_FIGURES,
    ROLES,
    ClusterFigures,
    Fault,
    connects,
    end_times,
    port_at,
)
from tests.domains import Vm
from tests.faults.scenario import Scenario
from worker.amqp.topology import host_queue, notification_queues
from worker.broker_urls import first_node

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

DOMAINS = 8
RATE = 30.0  # casts per second, from before the first fault to after the last
#: A bound only: the load is cut AFTER seconds after the worker is back from the kill.
MAX_CASTS = 3000
AFTER = 3.0
#: Seconds from a fault's start by which each worker connection it cut is on another node.
MOVE_BOUND = 20.0
#: A fault's failover is the longest gap between end events that begins between its start
#: and this long after it was over (a later lull is not its doing).
SETTLE = 2.0


def host_on_first_node(oslo_url: str) -> str:
    """A host name whose consumer starts on node 0: where the host queue's leader will be.

    The scenario declares the host queue through node 0 first, and RabbitMQ puts a quorum
    queue's leader on the declaring node: the first fault then cuts the consumer as well.
    """
    while True:
        host = f"cluster-{uuid.uuid4().hex[:8]}"
        if first_node(oslo_url, host) == 0:
            return host


def test_worker_rides_out_a_node_stop_and_a_node_kill(
        booting_cluster: Future[BrokerCluster], vms: Callable[[int], list[Vm]],
        tmp_path: Path) -> None:
    """Casts under a leader-node stop/start and a SIGKILL of another node: each done, once.

    The worker (quorum queues, oslo's ``rabbit://h1,h2,h3/`` URL) moves each connection the
    fault cut to another node by itself, in one life; the tap reads the worker's own quorum
    event queues, which keep every event while a node is down.
    """
    domains = vms(DOMAINS)  # while the cluster boots
    cluster = booting_cluster.result(timeout=240)
    scn = Scenario("cluster-failover", url=cluster.kombu_url, durable=True, quorum=True,
                   tmp=tmp_path, vms=domains, count=MAX_CASTS, rate=RATE, broker=cluster,
                   event_queues=True, figures=[],  # the tier prints its own table
                   transport_url=cluster.oslo_url, host=host_on_first_node(cluster.oslo_url),
                   rabbit_quorum_delivery_limit=20)
    # The host queue (declared by the scenario through the first node) is led by the
    # consumer's first node; the event queues by the publisher's first node (node 1), the
    # one the kill goes for: see _second_victim.
    _declare_through(cluster.nodes[first_node(cluster.oslo_url, scn.cfg.host, role=1)],
                     notification_queues(scn.cfg))
    with scn:
        run = ClusterFigures(scn.figures)
        CLUSTER_FIGURES.append(run)
        pid = scn.worker.pid
        load = scn.start_load()
        load.wait_sent(int(RATE * 2), 30)

        leader = cluster.leader(host_queue(scn.cfg).name)
        first = Fault("stop/start", leader.node, leader.port, time.time(),
                      why=f"leads {host_queue(scn.cfg).name}")
        run.faults.append(first)
        leader.stop_node()
        leader.start()
        wait_until(lambda: len(cluster.running()) == len(cluster.nodes), 60,
                   "the restarted node back in the cluster")
        first.done = time.time()
        load.wait_sent(load.sent + int(RATE), 30)

        victim, why = _second_victim(cluster, scn, leader,
                                     cluster.leader(notification_queues(scn.cfg)[0].name))
        assert not load.done.is_set(), "the load ran out before the kill: raise MAX_CASTS"
        second = Fault("SIGKILL", victim.node, victim.port, time.time(), why=why)
        run.faults.append(second)
        cluster.kill(victim)
        second.done = time.time()
        _wait_moved(scn, second)
        load.end_after(load.sent + int(RATE * AFTER))

        outcome = scn.finish()
        assert scn.tap is not None
        # Everything printed is read before anything is asserted.
        records = scn.worker.records()
        seen = connects(records)
        ends = end_times(scn.tap.snapshot())
        for fault in run.faults:
            fault.read(seen, ends, until=fault.done + SETTLE)
        run.reconnects = {role: sum(1 for c in seen if c.role == role) - 1 for role in ROLES}
        run.tap_reconnects = scn.tap.reconnects

        failures = _failover_failures(run, scn, pid, records)
        if outcome.errors:
            failures.append(f"{len(outcome.errors)} casts ended in an error event, not their end "
                            f"event: {outcome.errors[:3]}")
        try:
            scn.check(outcome)
        except AssertionError as exc:
            failures.append(str(exc))
        assert not failures, "\n".join(failures)


def _declare_through(node: PrivateBroker, queues: list[Queue]) -> None:
    """Declare queues through one node: RabbitMQ makes it their quorum leader."""
    with Connection(node.url, connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=3, timeout=5)
        channel = conn.channel()
        for queue in queues:
            queue(channel).declare()


def _second_victim(cluster: BrokerCluster, scn: Scenario, restarted: PrivateBroker,
                   events_leader: PrivateBroker) -> tuple[PrivateBroker, str]:
    """The node to kill: the event queues' leader unless it was just restarted, else the one
    holding most worker connections (the publisher's first: the first fault cut the consumer).

    The events' leader on purpose: RabbitMQ 3.10 can nack every publish on a channel whose
    first publish to a quorum queue comes just after that queue's leader died (for 20 s and
    more here, where a new channel gets through in under a second). The worker used to
    requeue a cast whose end event was nacked, again and again, until the broker dropped it
    at rabbit_quorum_delivery_limit: 138 casts lost in one run with this layout. Its
    publisher now publishes nacked events again on a new connection.
    """
    seen = connects(scn.worker.records())
    now = time.time()
    on = {role: port_at(seen, role, now) for role in ROLES}

    def held(node: PrivateBroker) -> tuple[int, bool]:
        return sum(port == node.port for port in on.values()), on["publisher"] == node.port

    if events_leader is not restarted:
        best = events_leader
    else:
        best = max((node for node in cluster.nodes if node is not restarted), key=held)
    roles = [f"the {role}" for role, port in on.items() if port == best.port]
    leads = ", leads the event queues" if best is events_leader else ""
    return best, f"holds {' and '.join(roles) or 'no worker connection'}{leads}"


def _wait_moved(scn: Scenario, fault: Fault) -> None:
    """Until every worker connection on the faulted node has connected again (bounded)."""
    seen = connects(scn.worker.records())
    cut = [role for role in ROLES if port_at(seen, role, fault.began) == fault.port]

    def moved() -> bool:
        again = connects(scn.worker.records())
        return all(any(c.role == role and c.at > fault.began for c in again) for role in cut)

    try:
        wait_until(moved, MOVE_BOUND, "the worker to reconnect after the kill", 0.2)
    except AssertionError:
        pass  # reported by the checks, with the figures


def _failover_failures(run: ClusterFigures, scn: Scenario, pid: int | None,
                       records: list[dict[str, object]]) -> list[str]:
    """What the faults' figures say went wrong: a fault that cut nothing, a connection that
    stayed on (or went back to) its lost node or took too long, a second life, a bare URL."""
    failures = []
    for fault in run.faults:
        if not fault.hit:
            failures.append(f"{fault.kind} of {fault.node} cut no worker connection: the test "
                            "proved no failover there")
        for role in fault.hit:
            port, after = fault.moved.get(role, (None, 0.0))
            if port is None:
                failures.append(f"the worker's {role} never reconnected after the {fault.kind} "
                                f"of {fault.node}")
            elif port == fault.port or after > MOVE_BOUND:
                failures.append(f"the worker's {role} reconnected to port {port} "
                                f"{after:.1f}s after the {fault.kind} of {fault.node} "
                                f"(port {fault.port}; bound {MOVE_BOUND:.0f}s)")
    lives = len(scn.worker.logs)
    if lives != 1 or scn.worker.exit_codes[:-1] or scn.worker.proc is None \
            or scn.worker.proc.pid != pid:
        failures.append(f"the worker did not live through it as one process: {lives} lives, "
                        f"exit codes {scn.worker.exit_codes}")
    bare = [r.get("url") for r in records
            if r.get("event") in ROLES.values() and ":guest@" in str(r.get("url"))]
    if bare:
        failures.append(f"connect lines carry the password: {bare[:2]}")
    return failures
