"""Pause, unpause, suspend (managed save) and resume: each reads state first."""

from __future__ import annotations

from handlers import network
from handlers.common import Args, Result, find_guest
from worker.core.context import Context
from worker.errors import InstanceInvalidState
from worker.virt import power_state as ps


def pause_instance(ctx: Context, args: Args) -> Result:
    """Freeze a running instance; a paused one is left as it is."""
    guest = find_guest(ctx, args)
    current = guest.power_state()
    if current == ps.RUNNING:
        guest.pause()
    elif current != ps.PAUSED:
        raise InstanceInvalidState(f"cannot pause an instance that is {current}")
    return guest.describe()


def unpause_instance(ctx: Context, args: Args) -> Result:
    """Thaw a paused instance; a running one is left as it is."""
    guest = find_guest(ctx, args)
    current = guest.power_state()
    if current == ps.PAUSED:
        guest.unpause()
    elif current != ps.RUNNING:
        raise InstanceInvalidState(f"cannot unpause an instance that is {current}")
    return guest.describe()


def suspend_instance(ctx: Context, args: Args) -> Result:
    """Save memory to disk and stop (libvirt managed save); already saved is success."""
    guest = find_guest(ctx, args)
    current = guest.power_state()
    if current in (ps.RUNNING, ps.PAUSED):
        guest.save_to_disk()
    elif guest.is_active() or not guest.has_managed_save():
        raise InstanceInvalidState(f"cannot suspend an instance that is {current}")
    return guest.describe()


def resume_instance(ctx: Context, args: Args) -> Result:
    """Restore a suspended instance from its saved image; a running one is success."""
    guest = find_guest(ctx, args)
    current = guest.power_state()
    if not guest.is_active() and guest.has_managed_save():
        network.replug(ctx, guest.uuid)  # the saved guest's taps, if a host reboot took them
        guest.start()
    elif current != ps.RUNNING:
        raise InstanceInvalidState(f"cannot resume an instance that is {current}, not suspended")
    return guest.describe()
