"""Read-only calls: one instance's info, and every instance on the host."""

from __future__ import annotations

from handlers.common import Args, Result, find_guest
from worker.core.context import Context
from worker.errors import InstanceNotFound


def get_instance_info(ctx: Context, args: Args) -> Result:
    """uuid, name, power_state, vm_state, memory, vCPUs and CPU time of one instance."""
    guest = find_guest(ctx, args)
    return {**guest.describe(), **guest.info()}


def list_instances(ctx: Context, args: Args) -> list[Result]:
    """uuid, name, power_state and vm_state of every domain on this host."""
    found = []
    for guest in ctx.hypervisor.guests():
        try:
            found.append(guest.describe())
        except InstanceNotFound:
            continue  # undefined between the listing and the look: not there any more
    return found
