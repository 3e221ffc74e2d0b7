"""libvirt's domain lifecycle events as small values the rest of the worker can read."""

from __future__ import annotations

from dataclasses import dataclass

import libvirt

_CAUSES = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}


@dataclass(frozen=True)
class LifecycleEvent:
    """One domain lifecycle event: which domain, and what libvirt says happened."""

    uuid: str
    #: defined, undefined, started, suspended, resumed, stopped, shutdown, pmsuspended,
    #: crashed; "sync" for an event type this worker does not name.
    cause: str

    @property
    def may_be_half_of_something(self) -> bool:
        """A stop is often the first half of a reboot or of a verb: look again later."""
        return self.cause == "stopped"


def from_libvirt(uuid: str, event: int) -> LifecycleEvent:
    """The value for libvirt's (domain, virDomainEventType)."""
    return LifecycleEvent(uuid.lower(), _CAUSES.get(event, "sync"))
