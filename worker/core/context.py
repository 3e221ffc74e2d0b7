"""What a handler gets besides its args: the hypervisor, options and the caller's ids."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker.config import Config
from worker.core.peers import Arrivals, Peers
from worker.virt.guest import Guest
from worker.virt.hypervisor import Hypervisor
from worker.virt.paths import InstancePaths


@dataclass
class Context:
    """Per-message handler context; handlers read it and never keep it."""

    hypervisor: Hypervisor
    config: Config
    paths: InstancePaths
    request_id: str | None = None
    #: Other hosts' workers (None: this worker was wired without them, as in unit tests).
    peers: Peers | None = None
    #: notify(action, phase, state): publish instance.<action>.<phase> for this message now,
    #: for a verb whose events are phases of its own (a live migration's post or rollback).
    notify: Callable[[str, str, dict[str, Any]], None] | None = None
    #: Instances arriving here by live migration (the state watch leaves them alone).
    arrivals: Arrivals = field(default_factory=Arrivals)
    _guests: dict[str, Guest] = field(default_factory=dict, repr=False)

    def guest(self, uuid: str) -> Guest:
        """The domain with this (canonical) UUID, looked up once per message."""
        found = self._guests.get(uuid)
        if found is None:
            found = self._guests[uuid] = self.hypervisor.guest(uuid)
        return found
