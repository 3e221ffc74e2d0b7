"""A consumer the broker cancels (its queue deleted, its node gone) subscribes again by itself.

RabbitMQ tells a consumer with basic.cancel when its queue goes away. The worker declares the
queue again and consumes it on the same channel: no reconnect, no redelivery of what the other
queues had in flight, and the next cast is served.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, MutableMapping
from typing import Any

import amqp.exceptions
import pytest
from kombu import Connection, Producer, Queue

from tests.brokers import wait_until
from tests.taps import EventTap
from worker.amqp.client import RpcClient
from worker.amqp.topology import durable, fanout_exchange, fanout_queue
from worker.codec import envelope
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.integration


def _exists(broker_url: str, name: str) -> bool:
    with Connection(broker_url) as conn:
        try:
            conn.channel().queue_declare(name, passive=True)
        except amqp.exceptions.NotFound:
            return False
    return True


def _delete(broker_url: str, name: str) -> None:
    with Connection(broker_url) as conn:
        Queue(name)(conn.channel()).delete()


@pytest.mark.parametrize("which, options", [
    ("host", {}),
    ("fanout", {}),
    # Quorum queues refuse x-cancel-on-ha-failover: only the classic fanout queue asks for it.
    ("host", {"rabbit_quorum_queue": True, "enable_cancel_on_failover": True}),
], ids=["host", "fanout", "quorum-host"])
def test_a_queue_deleted_under_a_running_worker_is_declared_and_consumed_again(
        make_config: Callable[..., Config], broker_url: str, which: str,
        options: dict[str, Any], info_logs: list[MutableMapping[str, Any]],
        domains: Callable[[int], list[str]]) -> None:
    """The host queue (or this worker's fanout queue) deleted by hand while the worker runs:
    the worker declares it again on the connection it has, and the next cast is served."""
    cfg = make_config(**options)
    (uid,) = domains(1)
    tap = EventTap(broker_url, cfg.control_exchange, cfg.notifications.notification_topic,
                   durable=durable(cfg))
    service = Service(cfg, retry_sleep=lambda _s: None, debounce=0.3)
    service.start()
    try:
        name = (f"{cfg.topic}.{cfg.host}" if which == "host"
                else fanout_queue(cfg, service.consumer.fanout_unique).name)
        _delete(broker_url, name)
        began = time.monotonic()
        wait_until(lambda: service.consumer.resubscribed == 1, 10, "the worker to resubscribe")
        took = time.monotonic() - began
        assert _exists(broker_url, name)
        with Connection(broker_url) as conn:
            client = RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic,
                               durable=durable(cfg))
            if which == "host":
                client.cast(cfg.host, "pause_instance", {"instance": {"uuid": uid}})
            else:  # what oslo's Target(fanout=True) sends
                body = envelope.wrap({"method": "pause_instance", "version": "6.0",
                                      "args": {"instance": {"uuid": uid}},
                                      "_unique_id": uuid.uuid4().hex})
                Producer(conn.channel()).publish(
                    body, exchange=fanout_exchange(cfg), routing_key=cfg.topic,
                    content_type="application/json", content_encoding="utf-8")
        tap.wait_type(uid, "instance.pause.end")
        connections = service.consumer.connections
    finally:
        service.stop(grace=5)
        tap.close()
    assert 1 == connections  # in place: no reconnect
    assert took < 5, took
    said = [e for e in info_logs if e["event"] in ("consumer_cancelled_by_broker",
                                                   "consumer_resubscribed")]
    assert [("consumer_cancelled_by_broker", name), ("consumer_resubscribed", [name])] == [
        (e["event"], e.get("queue", e.get("queues"))) for e in said]
