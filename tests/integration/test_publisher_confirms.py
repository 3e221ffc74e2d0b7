"""Publisher confirms across a lost connection, on a real broker behind a relay that holds acks."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import pytest
from structlog.testing import capture_logs

from tests.brokers import wait_until
from tests.relay import Relay
from worker.amqp.publisher import Publisher
from worker.config import Config
from worker.messages import Outgoing

pytestmark = pytest.mark.integration

MESSAGES = 20
#: The broker's connection.close-ok frame (method 10.51 on channel 0), as it is on the wire.
CLOSE_OK = b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x33\xce"


@pytest.fixture
def relay(broker_url: str) -> Iterator[Relay]:
    """A relay to the shared broker, closed after the test."""
    relay = Relay(broker_url)
    yield relay
    relay.close()


def test_late_acks_of_a_given_up_connection_complete_nothing_twice(
        make_config: Callable[..., Config], relay: Relay) -> None:
    """Messages requeued after a confirm timeout are confirmed once, though the old acks come late.

    Given a publisher whose broker acks are held back until its confirm timeout fires, when
    the old connection's acks (and its close-ok) then arrive while it is being released, the
    requeued messages are published once more on the next connection and every future
    resolves exactly once: no InvalidStateError, no second reconnect.
    """
    # Names come from a config on the shared broker, so the fixture deletes them afterwards.
    cfg = dataclasses.replace(make_config(confirm_timeout=1.0), transport_url=relay.url)
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
        publisher.send(Outgoing(cfg.control_exchange, f"{cfg.notification_topic}.info",
                                b'{"n": "last"}')).result(10)
        publisher.stop(5)
    lost = [e["error"] for e in logs if e["event"] == "publisher_connection_lost"]
    assert [f"ConnectionError: no confirm within {cfg.rabbit.confirm_timeout}s"] == lost
    assert 2 == relay.connections
    assert [None] * MESSAGES == [f.result(0) for f in futures]
    assert {n: 1 for n in range(MESSAGES)} == dict(calls)
