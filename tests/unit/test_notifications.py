"""Notification bodies: routing key, priority, timestamp, message ids, payload shape."""

from __future__ import annotations

import datetime
import re
import types
import uuid

import pytest

from tests.unit.support import UUID, WIRE_SAMPLES, inner
from worker.codec import notifications

SOURCE = "e67dd8c720d24fff9952a8d3989ee27a"
PAYLOAD = {"nova_object.name": "InstanceActionPayload", "nova_object.namespace": "nova",
           "nova_object.version": "1.9", "nova_object.data": {"uuid": UUID}}


def build(event_type: str = "instance.pause.end", *, error: bool = False,
          source_id: str | None = SOURCE, topic: str = "versioned_notifications",
          ) -> notifications.Event:
    """One instance action event with fixed data."""
    return notifications.notification(
        event_type=event_type, payload=PAYLOAD, publisher_id="compute-worker:host1",
        topic=topic, error=error, source_id=source_id)


def test_info_event_routes_to_topic_dot_info() -> None:
    """A success event goes to <topic>.info with priority INFO."""
    event = build(topic="notifications_x")

    assert "notifications_x.info" == event.routing_key
    assert "INFO" == event.message["priority"]


def test_error_event_routes_to_topic_dot_error() -> None:
    """An error event goes to <topic>.error with priority ERROR."""
    event = build("instance.pause.error", error=True)

    assert "versioned_notifications.error" == event.routing_key
    assert "ERROR" == event.message["priority"]


def test_event_has_the_keys_and_payload_keys_of_oslos_notification() -> None:
    """The inner message has exactly the keys oslo's Notifier sends, payload included."""
    captured = inner(WIRE_SAMPLES["notification"])

    message = build().message

    assert set(captured) == set(message)
    assert set(captured["payload"]) == set(message["payload"])
    assert "instance.pause.end" == message["event_type"]
    assert "compute-worker:host1" == message["publisher_id"]
    assert PAYLOAD == message["payload"]
    assert "instance.pause.end" == build().event_type


def test_routing_key_of_the_sample_is_topic_dot_priority() -> None:
    """Our routing key is built the way the captured notification's was."""
    captured = WIRE_SAMPLES["notification"]

    assert captured["routing_key"] == build().routing_key


def test_timestamp_has_oslos_format_in_utc() -> None:
    """The timestamp looks like the sample's ``2026-11-26 06:39:48.708033`` and is now, in UTC."""
    sample = inner(WIRE_SAMPLES["notification"])["timestamp"]
    shape = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}\Z")
    assert shape.match(sample)

    stamp = build().message["timestamp"]

    assert shape.match(stamp)
    parsed = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f")
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert abs((now - parsed).total_seconds()) < 5


class _WholeSecond(datetime.datetime):
    """A clock stopped on a whole second, where str(datetime) drops the fraction."""

    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> _WholeSecond:
        return cls(2026, 11, 26, 6, 39, 48, tzinfo=tz)


def test_timestamp_keeps_six_digits_on_a_whole_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """At microsecond 0 the timestamp still ends in .000000, as oslo's does."""
    monkeypatch.setattr(notifications, "datetime",
                        types.SimpleNamespace(datetime=_WholeSecond, UTC=datetime.UTC))

    assert "2026-11-26 06:39:48.000000" == notifications.timestamp()


def test_message_id_is_stable_for_one_message_and_event_type() -> None:
    """The same source message and event type always give the same message_id."""
    assert build().message["message_id"] == build().message["message_id"]
    assert notifications.message_id(SOURCE, "instance.pause.end", "compute-worker:host1") == build(
    ).message["message_id"]


def test_message_id_differs_between_hosts() -> None:
    """One fanout cast makes the same event on two hosts: two events, two ids."""
    assert notifications.message_id(SOURCE, "instance.pause.end", "compute-worker:host1") != \
        notifications.message_id(SOURCE, "instance.pause.end", "compute-worker:host2")


def test_message_id_differs_between_event_types_and_sources() -> None:
    """start and end of one message, and the same event of two messages, have distinct ids."""
    ids = {
        notifications.message_id(SOURCE, "instance.pause.start"),
        notifications.message_id(SOURCE, "instance.pause.end"),
        notifications.message_id(SOURCE, "instance.pause.error"),
        notifications.message_id("f41c666c063f4c64b2af42a022b069d5", "instance.pause.end"),
    }

    assert 4 == len(ids)


def test_message_id_is_random_without_a_source() -> None:
    """Without a source id every event gets a fresh uuid4 message_id."""
    first, second = (build(source_id=None).message["message_id"] for _ in range(2))

    assert first != second
    assert 4 == uuid.UUID(first).version


def test_unique_id_is_fresh_hex_even_when_message_id_repeats() -> None:
    """_unique_id is a new uuid4 hex per body, as oslo makes them."""
    first, second = build().message, build().message

    assert first["message_id"] == second["message_id"]
    assert first["_unique_id"] != second["_unique_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first["_unique_id"])
