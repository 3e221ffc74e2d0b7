"""Notification bodies in oslo's notifier format, around a versioned payload (codec.payloads)."""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from typing import Any

from worker.codec.envelope import new_unique_id

# Fixed namespace for uuid5: the same message and event always get the same
# message_id, so a repeat sent after a crash can be dropped by consumers.
_ID_NAMESPACE = uuid.UUID("6b1c6c1e-6f3a-4b8e-9a57-0c1d3e5f7a90")


@dataclass(frozen=True)
class Event:
    """One notification ready to publish: its routing key and inner message."""

    routing_key: str
    message: dict[str, Any]

    @property
    def event_type(self) -> str:
        """``<object>.<action>[.<phase>]``."""
        return str(self.message["event_type"])


def message_id(source_id: str | None, event_type: str, publisher_id: str = "") -> str:
    """Stable id for the event a message causes on one host; random without a source id.

    The publisher is part of it: one fanout cast makes the same event on many
    hosts, and those are different events.
    """
    if source_id is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_ID_NAMESPACE, f"{publisher_id}/{source_id}/{event_type}"))


def timestamp() -> str:
    """UTC time in oslo's format: ``2026-11-26 06:39:48.708033``."""
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return str(now) if now.microsecond else f"{now}.000000"


def notification(
    *, event_type: str, payload: dict[str, Any], publisher_id: str, topic: str,
    error: bool = False, source_id: str | None = None,
) -> Event:
    """Build one event; ``source_id`` (the causing message's id) fixes its message_id."""
    priority = "ERROR" if error else "INFO"
    return Event(
        routing_key=f"{topic}.{priority.lower()}",
        message={
            "message_id": message_id(source_id, event_type, publisher_id),
            "publisher_id": publisher_id,
            "event_type": event_type,
            "priority": priority,
            "timestamp": timestamp(),
            "payload": payload,
            "_unique_id": new_unique_id(),
        },
    )
