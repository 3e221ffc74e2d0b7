"""What the CLI shows of an event: the fields people look at, filters on them, a table row."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Event = dict[str, Any]


@dataclass(frozen=True)
class Facts:
    """One event's fields as a person reads them; None where the event has none."""

    time: str
    host: str | None
    event_type: str
    uuid: str | None
    name: str | None
    vm_state: str | None
    power_state: str | None
    task_state: str | None
    request_id: str | None
    #: ``Class: message`` of an error event's fault, or a disabled service's reason.
    detail: str | None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _fault(data: dict[str, Any]) -> str | None:
    fault = data.get("fault")
    if not isinstance(fault, dict):
        return None
    # nova's ExceptionPayload is versioned; our reject event's fault is a plain object.
    inner = fault.get("nova_object.data", fault)
    if not isinstance(inner, dict):
        return None
    return f"{inner.get('exception')}: {inner.get('exception_message')}"


def facts(event: Event) -> Facts:
    """The fields of any event this worker (or nova) publishes, tolerating odd ones."""
    event_type = str(event.get("event_type", "?"))
    payload = event.get("payload")
    data = payload.get("nova_object.data") if isinstance(payload, dict) else None
    data = data if isinstance(data, dict) else {}
    publisher = _text(event.get("publisher_id")) or ""
    host = _text(data.get("host")) or (publisher.split(":", 1)[1] if ":" in publisher else None)
    service = event_type.startswith("service.")
    if service:
        uuid = None
        detail = _text(data.get("disabled_reason")) if data.get("disabled") else None
    else:
        uuid = _text(data.get("uuid")) or _text(data.get("instance_uuid"))
        detail = _fault(data)
    stamp = _text(event.get("timestamp")) or ""
    return Facts(
        time=stamp.split(" ")[-1][:12] if stamp else "",
        host=host, event_type=event_type, uuid=uuid,
        name=None if service else _text(data.get("display_name")),
        vm_state=None if service else _text(data.get("state")),
        power_state=None if service else _text(data.get("power_state")),
        task_state=None if service else _text(data.get("task_state")),
        request_id=_text(data.get("request_id")), detail=detail)


@dataclass(frozen=True)
class Filter:
    """Which events to show: every given criterion must hold (an empty one holds always)."""

    hosts: Sequence[str] = ()
    instances: Sequence[str] = ()
    types: Sequence[str] = ()

    def __call__(self, seen: Facts) -> bool:
        """True when the event passes."""
        if self.hosts and seen.host not in self.hosts:
            return False
        if self.instances and not any(_is_instance(seen, wanted) for wanted in self.instances):
            return False
        return not self.types or any(fnmatch.fnmatchcase(seen.event_type, pattern)
                                     for pattern in self.types)


def _is_instance(seen: Facts, wanted: str) -> bool:
    # A UUID, its first characters (as the table shows them), or the display name.
    return bool((seen.uuid and seen.uuid.startswith(wanted.lower())) or seen.name == wanted)


#: (heading, width) of the table's columns; the last one takes what is left.
COLUMNS = (("TIME", 12), ("HOST", 16), ("EVENT", 34), ("INSTANCE", 8), ("NAME", 14),
           ("STATE", 10), ("POWER", 9), ("DETAIL", 0))


def _cell(value: str | None, width: int) -> str:
    text = value or "-"
    if width and len(text) > width:
        text = text[:width - 1] + "~"
    return text.ljust(width) if width else text


def heading() -> str:
    """The table's heading line."""
    return " ".join(_cell(name, width) for name, width in COLUMNS).rstrip()


def row(seen: Facts) -> str:
    """One event as a table line, in COLUMNS' order."""
    detail = seen.detail or seen.task_state or seen.request_id
    values = (seen.time, seen.host, seen.event_type, seen.uuid and seen.uuid[:8], seen.name,
              seen.vm_state, seen.power_state, detail)
    return " ".join(_cell(v, w) for v, (_, w) in zip(values, COLUMNS, strict=True)).rstrip()


def ends(seen: Facts) -> bool | None:
    """True for an end event, False for an error event, None for any other."""
    if seen.event_type.endswith(".error"):
        return False
    if seen.event_type.endswith(".end"):
        return True
    return None


#: Methods whose events are phases on two hosts (the destination's pre ends first):
#: the event that ends the whole, and whether it ended well.
FINAL = {"live_migration": {"instance.live_migration_post.end": True,
                            "instance.live_migration_rollback.end": False}}


def outcome(method: str, seen: Facts) -> bool | None:
    """Whether seen ends a request for method: True well, False badly, None not yet."""
    final = FINAL.get(method)
    if final is None or seen.event_type.startswith("rpc_message."):
        return ends(seen)
    return final.get(seen.event_type)
