"""Publisher confirms on a real broker behind a relay that holds acks: settling, lost links."""

from __future__ import annotations

import dataclasses
import struct
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, MutableMapping
from concurrent.futures import Future
from typing import Any

import pytest
from kombu import Connection, Producer, Queue
from structlog.testing import capture_logs

from tests.brokers import queue_counts, wait_until
from tests.helpers import BOTH_PATHS
from tests.relay import Relay
from tests.taps import EventTap
from worker.amqp.client import RpcClient
from worker.amqp.connection import address
from worker.amqp.publisher import Publisher
from worker.amqp.topology import control_exchange, host_queue
from worker.codec import envelope
from worker.config import Config
from worker.messages import Outgoing
from worker.service import Service

pytestmark = [pytest.mark.integration, BOTH_PATHS]

MESSAGES = 20
#: The broker's connection.close-ok frame (method 10.51 on channel 0), as it is on the wire.
CLOSE_OK = b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x33\xce"
PAIRS = 50


def info_key(cfg: Config) -> str:
    """The routing key of an info event of cfg's worker."""
    return f"{cfg.notifications.notification_topic}.info"


@pytest.fixture
def relay(broker_url: str) -> Iterator[Relay]:
    """A relay to the shared broker, closed after the test."""
    relay = Relay(broker_url)
    yield relay
    relay.close()


def test_late_acks_of_a_given_up_connection_complete_nothing_twice(
        make_config: Callable[..., Config], relay: Relay, fast_path: bool) -> None:
    """Messages requeued after a confirm timeout are confirmed once, though the old acks come late.

    Given a publisher whose broker acks are held back until its confirm timeout fires, when
    the old connection's acks (and its close-ok) then arrive while it is being released, the
    requeued messages are published once more on the next connection and every future
    resolves exactly once: no InvalidStateError, no second reconnect.
    """
    # Names come from a config on the shared broker, so the fixture deletes them afterwards.
    cfg = dataclasses.replace(make_config(confirm_timeout=1.0, fast_path=fast_path),
                              transport_url=relay.url)
    publisher = Publisher(cfg)
    calls: Counter[int] = Counter()
    with capture_logs() as logs:
        publisher.start()
        assert publisher.wait_connected(10)
        relay.hold()
        futures: list[Future[None]] = []
        for number in range(MESSAGES):
            future = publisher.send(Outgoing(cfg.control_exchange,
                                             f"{cfg.notifications.notification_topic}.info",
                                             f'{{"n": {number}}}'.encode()))
            future.add_done_callback(lambda _f, n=number: calls.update([n]))
            futures.append(future)
        wait_until(lambda: any(e["event"] == "publisher_connection_lost" for e in logs), 10,
                   "the confirm timeout to drop the connection")
        wait_until(lambda: relay.holding(CLOSE_OK), 10,
                   "the old connection to wait for its close-ok, behind the relay")
        relay.release()
        wait_until(lambda: all(f.done() for f in futures), 15, "every publish to be confirmed")
        # Confirmed after the requeued ones on the same connection: whatever their confirms
        # (or the late acks) caused, a second completion or a reconnect, has happened.
        publisher.send(Outgoing(cfg.control_exchange, info_key(cfg),
                                b'{"n": "last"}')).result(10)
        publisher.stop(5)
    lost = [e["error"] for e in logs if e["event"] == "publisher_connection_lost"]
    assert [f"ConnectionError: no confirm within {cfg.rabbit.confirm_timeout}s"] == lost
    assert 2 == relay.connections
    assert [None] * MESSAGES == [f.result(0) for f in futures]
    assert {n: 1 for n in range(MESSAGES)} == dict(calls)


# confirm.select (class 85, method 10): of the worker's connections only the publisher's sends it.
CONFIRM_SELECT = struct.pack(">HH", 85, 10)


def test_a_cast_is_acked_only_once_the_broker_confirms_its_events(
        make_config: Callable[..., Config], relay: Relay, broker_url: str, fast_path: bool,
        domains: Callable[[int], list[str]]) -> None:
    """A served cast stays unacked while its events' confirms are held back, and is acked after.

    Given a worker whose connections run through a relay, when the broker's side of the
    publishing connection is held and a pause is cast, then the end event reaches the broker
    but the cast stays unacked; released, the confirms arrive and the cast is acked.
    """
    cfg = dataclasses.replace(make_config(fast_path=fast_path), transport_url=relay.url)
    (uid,) = domains(1)
    tap = EventTap(broker_url, cfg.control_exchange, cfg.notifications.notification_topic)
    service = Service(cfg, retry_sleep=lambda _s: None, debounce=0.3)
    try:
        service.start()
        relay.hold(wait_until(lambda: relay.link_that_sent(CONFIRM_SELECT), 10,
                              "the publisher's confirm.select"))
        with Connection(broker_url) as conn:
            RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic).cast(
                cfg.host, "pause_instance", {"instance": {"uuid": uid}})
        tap.wait_type(uid, "instance.pause.end")
        assert (0, 1) == queue_counts(host_queue(cfg).name)
        relay.release()
        wait_until(lambda: queue_counts(host_queue(cfg).name) == (0, 0), 10,
                   "the cast to be acked")
    finally:
        relay.release()
        service.stop(grace=5)
        tap.close()


def test_pairs_published_together_are_both_confirmed(
        make_config: Callable[..., Config], fast_path: bool) -> None:
    """A verb's start and end events go out as one batch: both are confirmed, pair after pair.

    py-amqp's basic_publish first reads what has arrived, so the broker's ack of a batch's
    first message can be taken while the second is written: it must find its entry.
    """
    cfg = make_config(fast_path=fast_path)
    publisher = Publisher(cfg)
    publisher.start()
    try:
        assert publisher.wait_connected(10)
        for number in range(PAIRS):
            pair = [publisher.send(Outgoing(cfg.control_exchange, info_key(cfg),
                                            f'{{"n": {number}, "half": {half}}}'.encode()))
                    for half in range(2)]
            wait_until(lambda pair=pair: all(f.done() for f in pair), 2,
                       f"both publishes of pair {number} to be confirmed", interval=0.001)
    finally:
        publisher.stop(5)


def test_events_unconfirmed_when_their_node_goes_are_published_again_on_the_next(
        make_config: Callable[..., Config], relay: Relay, broker_url: str, fast_path: bool,
        domains: Callable[[int], list[str]]) -> None:
    """A node that takes a completed cast's events and dies before confirming them: the
    publisher moves to the next node and publishes the same events again, their message_ids
    the journal's, and only then is the cast acked; the pause is not run a second time.

    Given a worker on ``relay;broker`` (two nodes of one broker) whose publishing link has its
    confirms held, when a pause completes and the link is then cut, the tap sees each of
    its events twice under one message_id (the first copy had reached the broker), the
    publisher is on the second node, and the cast is acked once.
    """
    cfg = dataclasses.replace(make_config(fast_path=fast_path),
                              transport_url=f"{relay.url};{broker_url}")
    (uid,) = domains(1)
    unique_id = uuid.uuid4().hex
    tap = EventTap(broker_url, cfg.control_exchange, cfg.notifications.notification_topic)
    service = Service(cfg, retry_sleep=lambda _s: None, debounce=0.3)
    try:
        service.start()
        link = wait_until(lambda: relay.link_that_sent(CONFIRM_SELECT), 10,
                          "the publisher's confirm.select")
        relay.hold(link)
        with Connection(broker_url) as conn:
            Producer(conn.channel()).publish(
                envelope.wrap({"method": "pause_instance", "version": "6.0",
                               "args": {"instance": {"uuid": uid}}, "_unique_id": unique_id}),
                exchange=control_exchange(cfg), routing_key=host_queue(cfg).name,
                content_type="application/json", content_encoding="utf-8")
        tap.wait_type(uid, "instance.pause.end")
        recorded = wait_until(lambda: service.journal.get(unique_id), 10, "the journal entry")
        assert (0, 1) == queue_counts(host_queue(cfg).name)  # completed, not acked
        relay.cut(link)
        tap.wait_type(uid, "instance.pause.end", count=2)
        wait_until(lambda: queue_counts(host_queue(cfg).name) == (0, 0), 10,
                   "the cast to be acked")
        nodes = service.broker_nodes()
    finally:
        relay.release()
        service.stop(grace=5)
        tap.close()
    journaled = [envelope.unwrap(out.body, 1 << 20) for out in recorded.outgoing]
    ends = tap.of(uid, "instance.pause.end")
    assert 2 == len(ends) and ends[0]["message_id"] == ends[1]["message_id"]
    assert ends[0]["message_id"] in {event.get("message_id") for event in journaled}
    assert 1 == len({e["message_id"] for e in tap.of(uid, "instance.pause.start")})
    assert {"consume": address(relay.url), "publish": address(broker_url)} == nodes


def test_nacked_events_are_published_again_and_their_cast_waits_unacked(
        make_config: Callable[..., Config], broker_url: str, fast_path: bool,
        info_logs: list[MutableMapping[str, Any]],
        domains: Callable[[int], list[str]]) -> None:
    """Events the broker nacks are not failed back to their cast: the publisher publishes them
    again on a new connection until the broker takes them, the cast stays unacked meanwhile
    and is acked once, and the pause never comes back to be absorbed by the journal.

    A queue bound to the events' routing key with ``x-overflow: reject-publish`` and no room
    makes RabbitMQ nack every event (as a quorum queue without a leader does); deleting it
    lets the next attempt through.
    """
    cfg = make_config(fast_path=fast_path)
    (uid,) = domains(1)
    refusing = Queue(f"refuse_{uuid.uuid4().hex[:8]}", control_exchange(cfg),
                     routing_key=f"{cfg.notifications.notification_topic}.info",
                     queue_arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    tap = EventTap(broker_url, cfg.control_exchange, cfg.notifications.notification_topic)
    service = Service(cfg, retry_sleep=lambda _s: None, debounce=0.3)
    try:
        service.start()
        with Connection(broker_url) as conn:
            refusing(conn.channel()).declare()
            RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic).cast(
                cfg.host, "pause_instance", {"instance": {"uuid": uid}})
        wait_until(lambda: service.publisher.confirm_failures >= 4, 20,
                   "the broker to nack the events a few times")
        assert (0, 1) == queue_counts(host_queue(cfg).name)  # done, not acked, not requeued
        with Connection(broker_url) as conn:
            refusing(conn.channel()).delete()
        wait_until(lambda: queue_counts(host_queue(cfg).name) == (0, 0), 20,
                   "the cast to be acked")
        tap.wait_type(uid, "instance.pause.end")
    finally:
        service.stop(grace=5)
        tap.close()
    events = [e["event"] for e in info_logs]
    assert 0 == events.count("duplicate_skipped_already_completed")
    assert 0 == events.count("publish_unconfirmed_message_requeued")
    assert 1 == events.count("verb_completed")
    lost = [e["error"] for e in info_logs if e["event"] == "publisher_connection_lost"]
    assert lost and all("the broker nacked" in error for error in lost), lost
