"""A RabbitMQ cluster on this machine: PrivateBroker nodes joined to the first one.

DESIGN.md's recipe: each node its own name, ports and directories (the
server drops to the rabbitmq user, whose Erlang cookie all of them share),
then ``stop_app``, ``join_cluster``, ``start_app`` on every node but the
first. The cluster tests of issue 15 stop, start and SIGKILL nodes under
load; ``close()`` stops every node and removes its directories.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from tests.brokers import PrivateBroker, pid_alive, wait_until


class BrokerCluster:
    """size RabbitMQ nodes in one cluster."""

    def __init__(self, size: int = 3, name: str = "cwcluster", port: int = 5690) -> None:
        """Nodes ``<name>0..`` on AMQP ports port, port+1, ... (distribution: 20000 above);
        two clusters at once (a test and a bench) need names and ports apart."""
        self.nodes = [PrivateBroker(f"{name}{index}", port=port + index,
                                    dist_port=20000 + port + index) for index in range(size)]

    def __enter__(self) -> BrokerCluster:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Boot every node side by side, then join each to the first one, one at a time.

        Side by side the three boots took 19 s here against 30 s one after another; the
        joins stay in turn (two nodes joining one cluster at once is a race in mnesia).
        """
        try:
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(lambda node: node.start(), self.nodes))
            first = self.nodes[0].node
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first)
                node.start_app()
            wait_until(lambda: len(self.running()) == len(self.nodes), 60,
                       "every node running in the cluster")
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise

    def running(self) -> list[str]:
        """The cluster's running nodes, as the first reachable node sees them."""
        for node in self.nodes:
            if node.pid() is None:
                continue
            try:
                status = json.loads(node.ctl("cluster_status", "--formatter", "json",
                                             timeout=30))
            except (AssertionError, ValueError):
                continue
            return sorted(status.get("running_nodes", []))
        return []

    @property
    def kombu_url(self) -> str:
        """kombu's failover form: one URL per node, ``;``-separated."""
        return ";".join(node.url for node in self.nodes)

    @property
    def oslo_url(self) -> str:
        """oslo's form: ``rabbit://u:p@h1:p1,u:p@h2:p2,.../``."""
        hosts = ",".join(f"guest:guest@127.0.0.1:{node.port}" for node in self.nodes)
        return f"rabbit://{hosts}/"

    def by_name(self, erlang_name: str) -> PrivateBroker:
        """The node called erlang_name (``cwcluster1@host``)."""
        return next(node for node in self.nodes if node.node == erlang_name)

    def leader(self, queue: str) -> PrivateBroker:
        """The node that leads a quorum queue now."""
        for node in self.nodes:
            if node.pid() is None:
                continue
            rows = json.loads(node.ctl("list_queues", "name", "leader", "--formatter",
                                       "json", timeout=30) or "[]")
            for row in rows:
                if row.get("name") == queue and row.get("leader"):
                    return self.by_name(str(row["leader"]))
        raise AssertionError(f"no node leads {queue}")

    def kill(self, node: PrivateBroker) -> None:
        """SIGKILL a node's Erlang VM: no goodbye to its peers or clients."""
        pid = node.pid()
        assert pid is not None, f"{node.node} is not running"
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 30, f"{node.node} to die")

    def queue_counts(self, queue: str) -> tuple[int, int] | None:
        """(ready, unacked) of a queue, as the first running node reports it."""
        for node in self.nodes:
            if node.pid() is not None:
                return node.queue_counts(queue)
        raise AssertionError("no node of the cluster is running")

    def close(self) -> None:
        """Stop every node (side by side) and remove its directories."""
        def close(node: PrivateBroker) -> None:
            with contextlib.suppress(Exception):
                node.close()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(close, self.nodes))


def _commands(node: PrivateBroker) -> list[str]:
    """What a person types to look at, stop, kill and start one node by hand."""
    env = " ".join(f"{key}={shlex.quote(value)}" for key, value in node.env().items()
                   if key.startswith("RABBITMQ_"))
    return [f"  {node.node} (AMQP {node.port}, pid {node.pid()}):",
            f"    leader of a queue: rabbitmqctl -n {node.node} list_queues name leader",
            f"    stop:              rabbitmqctl -n {node.node} stop",
            f"    SIGKILL:           kill -9 $(cat {node.pid_file})",
            f"    start again:       env {env} rabbitmq-server -detached"]


def main() -> None:
    """``python -m tests.broker_cluster``: a cluster to try a worker's failover on by hand.

    Starts three nodes (``cwhand0..2``, AMQP 5720-5722), prints the URLs to give a worker and
    the commands that stop, kill and start each node, and removes it all on Ctrl-C.
    """
    cluster = BrokerCluster(3, name="cwhand", port=5720)
    try:
        cluster.start()
        print(f"oslo form:  {cluster.oslo_url}\nkombu form: {cluster.kombu_url}")
        for node in cluster.nodes:
            print("\n".join(_commands(node)))
        print("e.g. compute-worker run --rabbit-quorum-queue --transport-url "
              f"'{cluster.oslo_url}' ...; Ctrl-C here removes the cluster", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.close()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    main()
