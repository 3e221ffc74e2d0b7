"""Failover across the nodes of a transport URL, on the shared broker and one private node."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import pytest
from kombu import Connection

from tests.brokers import PrivateBroker, free_port, wait_until
from tests.taps import EventTap
from worker.amqp.client import RpcClient
from worker.amqp.connection import address
from worker.config import Config
from worker.service import Service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

Logs = list[MutableMapping[str, Any]]
CONNECTED = ("consumer_connected", "publisher_connected")


def _masked(url: str) -> str:
    """url as the worker logs it: the password replaced by ***."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.username}:***@{parts.hostname}:{parts.port}{parts.path}"


def _nodes_of(logs: Logs) -> list[tuple[str, str]]:
    return [(e["event"], e["url"]) for e in logs if e["event"] in CONNECTED]


def test_a_worker_given_two_dead_nodes_first_reaches_the_third(
        make_config: Callable[..., Config], broker_url: str, info_logs: Logs,
        domains: Callable[[int], list[str]]) -> None:
    """Nodes 1 and 2 refuse (nothing listens there): the worker is on node 3 at once, and serves."""
    first = free_port(41000)
    dead = [f"amqp://guest:guest@127.0.0.1:{port}//" for port in (first, free_port(first + 1))]
    # Names from a config on the shared broker, so the fixture deletes them afterwards.
    cfg = dataclasses.replace(make_config(), transport_url=";".join([*dead, broker_url]))
    (uid,) = domains(1)
    tap = EventTap(broker_url, cfg.control_exchange, cfg.notifications.notification_topic)
    service = Service(cfg, retry_sleep=lambda _s: None, debounce=0.3)
    try:
        began = time.monotonic()
        service.start()
        took = time.monotonic() - began
        with Connection(broker_url) as conn:
            RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic).cast(
                cfg.host, "pause_instance", {"instance": {"uuid": uid}})
        tap.wait_type(uid, "instance.pause.end")
    finally:
        service.stop(grace=5)
        tap.close()
    assert took < 5, took
    assert [(event, _masked(broker_url)) for event in CONNECTED] == sorted(_nodes_of(info_logs))
    assert [_masked(url) for url in dead] == [
        e["url"] for e in info_logs if e["event"] == "consumer_node_unreachable"]


@pytest.fixture
def node() -> Iterator[PrivateBroker]:
    """A private RabbitMQ node, stopped by the test that uses it."""
    broker = PrivateBroker(name="rabbitfailover")
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


def test_a_worker_whose_node_stops_moves_to_the_next(
        make_config: Callable[..., Config], broker_url: str, node: PrivateBroker,
        info_logs: Logs) -> None:
    """On the private node first; when it stops, consuming and publishing both move to the other.

    Given a worker on ``private;shared`` answering calls on the private node, when that node
    stops, then each connection fails over to the shared broker by itself, says so, and calls
    made there are answered.
    """
    cfg = dataclasses.replace(make_config(), transport_url=f"{node.url};{broker_url}")
    service = Service(cfg, retry_sleep=lambda _s: None, debounce=0.3)
    try:
        service.start()
        with Connection(node.url) as conn:
            assert isinstance(RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic)
                              .call(cfg.host, "list_instances", {}, timeout=10), list)
        private = f"127.0.0.1:{node.port}"
        assert {"consume": private, "publish": private} == service.broker_nodes()
        node.stop_app()
        wait_until(lambda: {(event, _masked(broker_url)) for event in CONNECTED}
                   <= set(_nodes_of(info_logs)), 20, "both connections on the shared broker")
        with Connection(broker_url) as conn:
            assert isinstance(RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic)
                              .call(cfg.host, "list_instances", {}, timeout=10), list)
        # What service.update and the compute_worker_broker_node metric report.
        shared = address(broker_url)
        assert {"consume": shared, "publish": shared} == service.broker_nodes()
    finally:
        service.stop(grace=5)
    for event in CONNECTED:  # each connection once on each node, in that order
        assert [_masked(node.url), _masked(broker_url)] == [
            url for name, url in _nodes_of(info_logs) if name == event], event
