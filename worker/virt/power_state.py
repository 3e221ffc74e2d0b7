"""libvirt domain states to the power states and vm states on the wire."""

from __future__ import annotations

import libvirt

PENDING = "pending"
RUNNING = "running"
PAUSED = "paused"
SHUTDOWN = "shutdown"
CRASHED = "crashed"
SUSPENDED = "suspended"

_FROM_LIBVIRT = {
    libvirt.VIR_DOMAIN_NOSTATE: PENDING,
    libvirt.VIR_DOMAIN_RUNNING: RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: SHUTDOWN,
    libvirt.VIR_DOMAIN_CRASHED: CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: SUSPENDED,
}


def from_libvirt(state: int) -> str:
    """The wire power_state of a libvirt ``virDomainState``."""
    return _FROM_LIBVIRT.get(state, PENDING)


def vm_state(power_state: str, has_managed_save: bool) -> str:
    """nova's vm_state: a managed-saved domain is shut off but *suspended*."""
    if power_state == SHUTDOWN:
        return "suspended" if has_managed_save else "stopped"
    return {
        RUNNING: "active", PAUSED: "paused", SUSPENDED: "suspended", CRASHED: "error",
    }.get(power_state, "active")
