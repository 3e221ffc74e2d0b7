"""libvirt domain states to the wire's power_state and vm_state."""

from __future__ import annotations

import libvirt
import pytest

from worker.core import schemas
from worker.virt import power_state

#: The mapping table of DESIGN.md, for every virDomainState.
DESIGN_TABLE = {
    libvirt.VIR_DOMAIN_NOSTATE: "pending",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutdown",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


def test_table_covers_every_libvirt_state() -> None:
    """The table names all virDomainState values libvirt defines."""
    defined = {getattr(libvirt, n) for n in dir(libvirt)
               if n.startswith("VIR_DOMAIN_") and n[len("VIR_DOMAIN_"):] in {
                   "NOSTATE", "RUNNING", "BLOCKED", "PAUSED", "SHUTDOWN", "SHUTOFF", "CRASHED",
                   "PMSUSPENDED"}}

    assert defined == set(DESIGN_TABLE)
    assert set(range(libvirt.VIR_DOMAIN_PMSUSPENDED + 1)) == set(DESIGN_TABLE)


@pytest.mark.parametrize(("state", "expected"), sorted(DESIGN_TABLE.items()))
def test_libvirt_state_maps_as_design_says(state: int, expected: str) -> None:
    """Each libvirt state gives the power_state DESIGN.md lists."""
    assert expected == power_state.from_libvirt(state)


def test_unknown_future_state_is_pending() -> None:
    """A state newer than this code knows is reported as pending, not an error."""
    assert "pending" == power_state.from_libvirt(libvirt.VIR_DOMAIN_PMSUSPENDED + 50)


@pytest.mark.parametrize(("state", "saved", "expected"), [
    ("running", False, "active"),
    ("paused", False, "paused"),
    ("suspended", False, "suspended"),
    ("crashed", False, "error"),
    ("shutdown", False, "stopped"),
    ("shutdown", True, "suspended"),
    ("pending", False, "active"),
])
def test_vm_state(state: str, saved: bool, expected: str) -> None:
    """vm_state follows nova: a shut-off domain with a managed save is suspended."""
    assert expected == power_state.vm_state(state, saved)


def test_every_mapped_state_is_allowed_by_the_event_schema() -> None:
    """Whatever the mapping returns fits InstanceActionPayload's enums."""
    props = schemas.raw("events", "InstanceActionPayload")["$defs"]["instance"]["properties"]

    for state in DESIGN_TABLE:
        mapped = power_state.from_libvirt(state)
        assert mapped in props["power_state"]["enum"]
        for saved in (False, True):
            assert power_state.vm_state(mapped, saved) in props["state"]["enum"]
