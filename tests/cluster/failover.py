"""What the cluster tier reads from a run: the node each worker connection was on, each
fault, the silence in end events around it, and the figures printed at the end."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Any

from tests.faults.support import Figures, Tapped

#: The worker's two connections and the log event each logs when it (re)connects.
ROLES = {"consumer": "consumer_connected", "publisher": "publisher_connected"}
_PORT = re.compile(r":(\d+)/")


def port_of(url: str) -> int | None:
    """The AMQP port in a (masked) node URL: ``amqp://guest:***@127.0.0.1:5690//``."""
    found = _PORT.search(url)
    return int(found.group(1)) if found else None


def wall(stamp: str) -> float:
    """A worker log timestamp (ISO, ``Z``) or an event's (oslo's, naive UTC) as time.time()."""
    at = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00").replace(" ", "T"))
    if at.tzinfo is None:
        at = at.replace(tzinfo=datetime.UTC)
    return at.timestamp()


@dataclass(frozen=True)
class Connect:
    """One ``consumer_connected`` or ``publisher_connected`` line of the worker's log."""

    at: float
    role: str
    url: str

    @property
    def port(self) -> int | None:
        """The node's AMQP port."""
        return port_of(self.url)


def connects(records: list[dict[str, Any]]) -> list[Connect]:
    """Every (re)connect of the worker's two connections, in log order."""
    events = {event: role for role, event in ROLES.items()}
    return [Connect(wall(r["timestamp"]), events[r["event"]], str(r.get("url", "")))
            for r in records if r.get("event") in events]


def port_at(seen: list[Connect], role: str, at: float) -> int | None:
    """The node (port) role was connected to at time at: its last connect before."""
    before = [c for c in seen if c.role == role and c.at <= at]
    return before[-1].port if before else None


@dataclass(frozen=True)
class Silence:
    """The longest gap between two end events around a fault, relative to its start."""

    gap: float
    last_before: float
    first_after: float

    def __str__(self) -> str:
        return f"{self.gap:.2f}s ({self.last_before:+.2f} .. {self.first_after:+.2f})"


def silence(times: list[float], start: float, end: float) -> Silence | None:
    """The longest gap between consecutive times that ends after start and begins before end.

    At a steady cast rate end events come every few tens of milliseconds: the longest gap
    from the fault on is the time the worker (or the broker under it) gave no service.
    """
    times = sorted(times)
    best: Silence | None = None
    for before, after in zip(times, times[1:], strict=False):
        if after < start or before > end:
            continue
        if best is None or after - before > best.gap:
            best = Silence(after - before, before - start, after - start)
    return best


def end_times(records: list[Tapped]) -> tuple[list[float], list[float]]:
    """Of each end or error event (its first copy): when the tap got it, when the worker made it."""
    received, made = [], []
    seen: set[str] = set()
    for record in records:
        event = record.event
        kind = str(event.get("event_type", ""))
        if not kind.startswith("instance.") or kind.rsplit(".", 1)[-1] not in ("end", "error"):
            continue
        key = str(event.get("message_id"))
        if key in seen:
            continue
        seen.add(key)
        received.append(record.at)
        made.append(wall(str(event["timestamp"])))
    return received, made


@dataclass
class Fault:
    """One fault: what was done to which node, when, and what the worker did about it."""

    kind: str
    node: str
    port: int
    #: time.time() when it began, and when it was over (the node back, or dead).
    began: float
    done: float = 0.0
    why: str = ""
    #: Role -> the port it was on when the fault began (only those on the faulted node).
    hit: dict[str, int] = field(default_factory=dict)
    #: Role -> (port of its first reconnect after the fault, seconds after the fault began).
    moved: dict[str, tuple[int | None, float]] = field(default_factory=dict)
    received: Silence | None = None
    made: Silence | None = None

    def read(self, seen: list[Connect], ends: tuple[list[float], list[float]],
             until: float) -> None:
        """Fill in hit, moved and the silences from the worker's log and the tap's events."""
        for role in ROLES:
            if port_at(seen, role, self.began) == self.port:
                self.hit[role] = self.port
                after = [c for c in seen if c.role == role and c.at > self.began]
                if after:
                    self.moved[role] = (after[0].port, after[0].at - self.began)
        self.received = silence(ends[0], self.began, until)
        self.made = silence(ends[1], self.began, until)

    def describe(self) -> str:
        """One line for the figures."""
        moves = ", ".join(
            f"{role} {self.port}->{self.moved[role][0]} after {self.moved[role][1]:.2f}s"
            if role in self.moved else f"{role} on {self.port}, never reconnected"
            for role in self.hit) or "no worker connection on it"
        return (f"{self.kind} {self.node.split('@')[0]} ({self.why}; took "
                f"{self.done - self.began:.1f}s): {moves}; failover received {self.received}, "
                f"made {self.made}")


@dataclass
class ClusterFigures:
    """One cluster run: the faults tier's counts, and the faults with their failover times."""

    figures: Figures
    faults: list[Fault] = field(default_factory=list)
    reconnects: dict[str, int] = field(default_factory=dict)
    tap_reconnects: int = 0


CLUSTER_FIGURES: list[ClusterFigures] = []
