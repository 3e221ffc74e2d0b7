"""What a handler gets besides its args: the hypervisor, options and the caller's ids."""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.config import Config
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
    _guests: dict[str, Guest] = field(default_factory=dict, repr=False)

    def guest(self, uuid: str) -> Guest:
        """The domain with this (canonical) UUID, looked up once per message."""
        found = self._guests.get(uuid)
        if found is None:
            found = self._guests[uuid] = self.hypervisor.guest(uuid)
        return found
