"""What ``top`` knows: every instance and host it watches, kept up to date by events."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.cli.eventview import Event, Facts, facts


@dataclass
class InstanceRow:
    """One instance as top shows it."""

    host: str
    uuid: str
    name: str | None = None
    vm_state: str | None = None
    power_state: str | None = None
    #: The action running now (its .start came, its .end or .error not yet).
    task: str | None = None
    last_event: str | None = None
    #: monotonic time of the last event (or of the listing that found it).
    seen_at: float = 0.0
    fault: str | None = None


@dataclass
class HostRow:
    """One host's compute service as its service.update events tell it."""

    host: str
    up: bool | None = None
    reason: str | None = None
    seen_at: float | None = None


@dataclass
class TopModel:
    """The instances of the watched hosts (every host when hosts is empty)."""

    hosts: Sequence[str] = ()
    instances: dict[str, InstanceRow] = field(default_factory=dict)
    services: dict[str, HostRow] = field(default_factory=dict)
    faults: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    events: int = 0

    def __post_init__(self) -> None:
        for host in self.hosts:
            self.services[host] = HostRow(host)

    def watches(self, host: str | None) -> bool:
        """True for a host this view shows."""
        return host is not None and (not self.hosts or host in self.hosts)

    def seed(self, host: str, listing: Iterable[dict[str, Any]], now: float) -> None:
        """The instances a host's list_instances answered, before any event about them."""
        for item in listing:
            uuid = str(item.get("uuid"))
            self.instances.setdefault(uuid, InstanceRow(
                host=host, uuid=uuid, name=item.get("name"), vm_state=item.get("vm_state"),
                power_state=item.get("power_state"), last_event="(listed)", seen_at=now))

    def apply(self, event: Event, now: float) -> Facts | None:
        """Take one event in; the facts of it when it was about a watched host."""
        seen = facts(event)
        if not self.watches(seen.host):
            return None
        assert seen.host is not None
        self.events += 1
        if seen.event_type.startswith("service."):
            self._service(seen, now)
        elif seen.event_type.startswith("instance.") and seen.uuid:
            self._instance(seen, now)
        if seen.event_type.endswith(".error"):
            who = (seen.name or (seen.uuid or "")[:8]) or seen.host
            self.faults.append(f"{seen.time} {seen.host} {who} {seen.event_type}: "
                               f"{seen.detail or '?'}")
        return seen

    def _service(self, seen: Facts, now: float) -> None:
        assert seen.host is not None
        row = self.services.setdefault(seen.host, HostRow(seen.host))
        row.up = seen.detail is None
        row.reason = seen.detail
        row.seen_at = now

    def _instance(self, seen: Facts, now: float) -> None:
        assert seen.host is not None and seen.uuid is not None
        self.services.setdefault(seen.host, HostRow(seen.host))
        parts = seen.event_type.split(".")
        action = parts[1] if len(parts) > 2 else None
        phase = parts[-1]
        if action == "delete" and phase == "end":
            self.instances.pop(seen.uuid, None)
            return
        row = self.instances.setdefault(seen.uuid, InstanceRow(seen.host, seen.uuid))
        row.host = seen.host  # a live migration moves it
        row.name = seen.name or row.name
        row.vm_state = seen.vm_state or row.vm_state
        row.power_state = seen.power_state or row.power_state
        if phase == "start":
            row.task = action
        elif phase in ("end", "error"):
            row.task = None
        row.fault = seen.detail if phase == "error" else None if phase == "end" else row.fault
        row.last_event = ".".join(parts[1:])
        row.seen_at = now

    def rows(self) -> list[InstanceRow]:
        """The instances by host, then name."""
        return sorted(self.instances.values(), key=lambda r: (r.host, r.name or "", r.uuid))

    def power_counts(self) -> Counter[str]:
        """How many instances are in each power state."""
        return Counter(r.power_state or "?" for r in self.instances.values())
