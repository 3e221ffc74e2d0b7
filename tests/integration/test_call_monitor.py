"""Call-monitor heartbeats on a real broker: a floor on their rate, one log line per lost caller."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection, Queue
from structlog.testing import capture_logs

from tests.brokers import wait_until
from worker.amqp.publisher import Publisher
from worker.codec import envelope
from worker.config import Config

pytestmark = pytest.mark.integration


@pytest.fixture
def publisher(cfg: Config) -> Iterator[Publisher]:
    """The worker's publisher on its own, connected to the test broker."""
    pub = Publisher(cfg)
    pub.start()
    assert pub.wait_connected(10)
    yield pub
    pub.stop()


def test_a_tiny_timeout_gets_at_most_two_heartbeats_a_second(publisher: Publisher,
                                                            cfg: Config) -> None:
    """_timeout 0.2 ms behind a slow verb once made thousands of beats; now two a second."""
    reply_q = f"reply_{uuid.uuid4().hex}"
    with Connection(cfg.transport_url) as conn:
        queue = Queue(reply_q, exclusive=True, auto_delete=True)(conn.channel())
        queue.declare()
        beats: list[dict[str, object]] = []

        def arrived() -> int:
            while (message := queue.get(no_ack=True)) is not None:
                beats.append(envelope.unwrap(message.body, 1 << 20))
            return len(beats)

        published = publisher.published
        handle = publisher.watch_call(reply_q, uuid.uuid4().hex, 0.0001)
        time.sleep(2.5)  # the window the rate is measured over
        publisher.unwatch_call(handle)
        wait_until(lambda: arrived() == publisher.published - published, 5,
                   "every beat sent to arrive")

    assert 3 <= len(beats) <= 6, len(beats)
    assert all(b["ending"] is False and b["result"] is None for b in beats)


def test_heartbeats_to_a_gone_caller_are_logged_once_and_stop(publisher: Publisher,
                                                              cfg: Config) -> None:
    """A reply queue nobody holds returns the beat: one warning for the call, then no more beats.

    A second call, whose caller is there, beats at the same rate meanwhile: every publish
    after the warning must be one of its beats.
    """
    msg_id = uuid.uuid4().hex
    with capture_logs() as logs, Connection(cfg.transport_url) as conn:
        witness = Queue(f"reply_{uuid.uuid4().hex}", exclusive=True, auto_delete=True)(
            conn.channel())
        witness.declare()
        beats: list[object] = []

        def witness_beats() -> int:
            while (message := witness.get(no_ack=True)) is not None:
                beats.append(message)
            return len(beats)

        publisher.watch_call(f"reply_{uuid.uuid4().hex}", msg_id, 0.0001)
        wait_until(lambda: any(e["event"] == "message_returned" for e in logs), 10,
                   "the first beat to come back")
        published = publisher.published
        handle = publisher.watch_call(witness.name, uuid.uuid4().hex, 0.0001)
        wait_until(lambda: witness_beats() >= 3, 10, "three beats to the witness")
        publisher.unwatch_call(handle)
        # Equal only when no beat went to the gone caller while the witness had three.
        wait_until(lambda: witness_beats() == publisher.published - published, 5,
                   "every publish since the warning to be a witness beat")

    returned = [e for e in logs if e["event"] == "message_returned"]
    assert [msg_id] == [e["msg_id"] for e in returned]
