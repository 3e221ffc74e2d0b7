"""The publisher's bookkeeping of calls: call-monitor heartbeats and returned replies.

Plain data with no lock of its own: the Publisher calls it under its lock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from worker.codec import envelope

# Call-monitor heartbeats come at most this often, whatever _timeout asks:
# a _timeout of 0.2 ms once made 33,457 warnings and most of a core out of
# one call behind a slow verb. oslo's own server sends none below a 2 s
# _timeout; half a second still keeps a caller with _timeout=1 alive.
HEARTBEAT_FLOOR = 0.5
# Returned replies remembered so each call's is logged once, not once a beat.
RETURNED_MEMORY = 1024


@dataclass
class Watch:
    """A call in progress: send an ``ending: false`` reply every interval."""

    reply_q: str
    msg_id: str
    interval: float
    due: float = field(default=0.0)


class CallWatches:
    """The calls in progress whose callers get heartbeats, by handle."""

    def __init__(self) -> None:
        self._watches: dict[int, Watch] = {}
        self._ids = 0

    def add(self, reply_q: str, msg_id: str, interval: float, now: float) -> int:
        """Watch a call (at most one beat every HEARTBEAT_FLOOR); its handle."""
        interval = max(interval, HEARTBEAT_FLOOR)
        self._ids += 1
        self._watches[self._ids] = Watch(reply_q, msg_id, interval, now + interval)
        return self._ids

    def remove(self, handle: int) -> None:
        """Stop watching a call (no-op when it is gone already)."""
        self._watches.pop(handle, None)

    def forget(self, reply_q: str, msg_id: str) -> None:
        """Stop every watch of one call: its caller is gone."""
        for handle, watch in list(self._watches.items()):
            if watch.msg_id == msg_id and watch.reply_q == reply_q:
                del self._watches[handle]

    def due(self, now: float) -> list[Watch]:
        """The calls owed a heartbeat now, each then due again an interval later."""
        due = []
        for watch in self._watches.values():
            if watch.due <= now:
                watch.due = now + watch.interval
                due.append(watch)
        return due

    def soonest(self) -> float | None:
        """When the next heartbeat is due (monotonic), None with no call watched."""
        return min((watch.due for watch in self._watches.values()), default=None)


class Returns:
    """Which returned replies were logged already (the most recent RETURNED_MEMORY)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()

    def first(self, key: str) -> bool:
        """Remember key; True the first time it is seen."""
        seen = key in self._seen
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > RETURNED_MEMORY:
            self._seen.popitem(last=False)
        return not seen


def reply_msg_id(body: Any) -> str | None:
    """The _msg_id of a reply body, if it is one (returned messages are rare: parse freely)."""
    try:
        inner = envelope.unwrap(body, 1 << 20)
    except Exception:  # anything unparsable is simply not a reply we know
        return None
    value = inner.get("_msg_id")
    return value if isinstance(value, str) else None
