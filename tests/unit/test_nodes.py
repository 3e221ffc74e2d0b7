"""Failover order over a transport URL's nodes: every node in turn, from after the last one used."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from structlog.testing import capture_logs

from worker.amqp.connection import Nodes, first_node, masked, node_urls
from worker.retry import reconnecting

URLS = ["amqp://guest:guest@a:5672//", "amqp://guest:guest@b:5672//",
        "amqp://guest:guest@c:5672//"]


class Cluster:
    """Nodes that are up or down; opening one records the attempt and returns its URL."""

    def __init__(self, *up: str) -> None:
        self.up = set(up)
        self.tried: list[str] = []

    def connect(self, url: str) -> str:
        self.tried.append(url)
        if url not in self.up:
            raise ConnectionRefusedError(f"{urlsplit(url).hostname} is down")
        return url


def test_a_transport_url_names_its_nodes_in_order() -> None:
    """oslo's ``url1;url2;url3`` is three nodes, in the order written."""
    assert URLS == node_urls(" ;".join(URLS) + ";")


def test_one_open_tries_every_node_before_it_gives_up() -> None:
    """With the first two nodes down, one open() reaches the third."""
    cluster = Cluster(URLS[2])

    assert URLS[2] == Nodes(URLS, cluster.connect, name="consumer").open()
    assert URLS == cluster.tried


@pytest.mark.parametrize("k", range(len(URLS)))
def test_after_a_loss_on_node_k_the_next_round_starts_at_k_plus_1(k: int) -> None:
    """Connected to node k, which then fails: the next open() begins with node k+1, wrapping."""
    # Given a connection on node k
    cluster = Cluster(URLS[k])
    nodes = Nodes(URLS, cluster.connect, name="consumer")
    assert URLS[k] == nodes.open()
    # When node k goes down and every other node is up
    cluster.up = set(URLS) - {URLS[k]}
    cluster.tried.clear()
    # Then the next round starts after it
    assert URLS[(k + 1) % len(URLS)] == nodes.open()
    assert [URLS[(k + 1) % len(URLS)]] == cluster.tried


def test_a_round_that_fails_raises_and_the_next_starts_where_it_did() -> None:
    """No node up: the last node's error; the next round starts after the node last used."""
    cluster = Cluster(URLS[0])
    nodes = Nodes(URLS, cluster.connect, name="publisher")
    nodes.open()
    cluster.up.clear()
    cluster.tried.clear()

    with pytest.raises(ConnectionRefusedError, match="^a is down"):
        nodes.open()
    with pytest.raises(ConnectionRefusedError):
        nodes.open()

    assert [URLS[1], URLS[2], URLS[0]] * 2 == cluster.tried


def test_backoff_comes_only_after_a_whole_round() -> None:
    """reconnecting() sleeps once per failed round, not once per node, and serves on the third."""
    cluster = Cluster()
    sleeps: list[float] = []
    served: list[str] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            cluster.up.add(URLS[2])  # the third node comes up after two failed rounds

    def serve(conn: str) -> None:
        served.append(conn)

    reconnecting(Nodes(URLS, cluster.connect, name="consumer").open, serve, name="consumer",
                 stopping=lambda: bool(served), sleep=sleep)

    assert [URLS[2]] == served
    assert URLS * 3 == cluster.tried
    assert 2 == len(sleeps)


def test_each_unreachable_node_is_logged_with_its_password_masked() -> None:
    """A node_unreachable warning names the node, never its password."""
    cluster = Cluster(URLS[1])
    with capture_logs() as logs:
        Nodes(URLS, cluster.connect, name="publisher").open()

    assert [{"event": "publisher_node_unreachable", "log_level": "warning",
             "url": "amqp://guest:***@a:5672//",
             "error": "ConnectionRefusedError: a is down"}] == logs
    assert "amqp://guest:***@b:5672//" == masked(URLS[1])


@pytest.mark.parametrize("url", ["amqp://u:s3c/ret@h:1//", "amqp://u:s3c@ret@h//",
                                 "amqp://u:s3c:ret@h//"])
def test_masked_takes_any_password_whole_and_never_raises(url: str) -> None:
    """A password with a bare "/", "@" or ":" is masked whole (kombu's parser raised on "/")."""
    shown = masked(url)

    assert "s3c" not in shown and "ret@" not in shown
    assert shown.startswith("amqp://u:***@h")


@pytest.mark.parametrize("written, nodes", [
    ("rabbit://nova:pw@h1:5672,nova:pw@h2:5673,nova:pw@h3/vh",
     ["amqp://nova:pw@h1:5672/vh", "amqp://nova:pw@h2:5673/vh", "amqp://nova:pw@h3:5672/vh"]),
    ("rabbit://guest:guest@localhost:5672/", ["amqp://guest:guest@localhost:5672/"]),
    ("amqps://u:p@[fe80::1%25eth0]:5671,u:p@[::1]/",
     ["amqps://u:p@[fe80::1%25eth0]:5671/", "amqps://u:p@[::1]:5671/"]),
    ("rabbit://u:p%2Fx@a:1,u:p%2Fx@b:2//?heartbeat=5",
     ["amqp://u:p%2Fx@a:1//?heartbeat=5", "amqp://u:p%2Fx@b:2//?heartbeat=5"]),
    ("amqp://a//;rabbit://u:p@b,u:p@c/", ["amqp://a//", "amqp://u:p@b:5672/",
                                         "amqp://u:p@c:5672/"]),
], ids=["oslo-three-hosts", "oslo-one-host", "ipv6", "encoded-password-and-query", "mixed"])
def test_oslo_form_is_one_kombu_url_per_host(written: str, nodes: list[str]) -> None:
    """oslo's ``rabbit://u:p@h1,u:p@h2/vhost``: each host its own amqp:// node, as oslo's driver
    builds them (5672 where no port is written), the vhost and the query kept on each."""
    assert nodes == node_urls(written)


def test_a_fleet_on_the_oslo_form_spreads_over_the_nodes_and_a_host_keeps_its_order() -> None:
    """oslo shuffles its hosts per process; ours starts each host's round at a place by its name,
    the publisher one node on from the consumer, and the same place at every start."""
    url = "rabbit://u:p@a:1,u:p@b:2,u:p@c:3/"
    consumers = [first_node(url, f"cn-{index}") for index in range(300)]
    assert {0: 100, 1: 100, 2: 100} == {k: pytest.approx(consumers.count(k), abs=25)
                                        for k in range(3)}
    assert all((first_node(url, f"cn-{i}", role=1) - first_node(url, f"cn-{i}")) % 3 == 1
               for i in range(300))
    assert first_node(url, "cn-7") == first_node(url, "cn-7")
    # kombu's ";" list is tried in the order written, as kombu does.
    assert {0} == {first_node(";".join(URLS), f"cn-{index}", role) for index in range(50)
                   for role in (0, 1)}
