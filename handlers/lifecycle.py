"""Reboot, power off and on, and terminate (the build has handlers/build.py)."""

from __future__ import annotations

from handlers import network, volumes
from handlers.common import Args, Result, find_guest, instance_uuid
from worker import logs
from worker.core.context import Context
from worker.errors import (
    InstanceInvalidState,
    InstanceNotFound,
)
from worker.virt import power_state as ps
from worker.virt.guest import Guest

log = logs.get(__name__)

# "On or off" is decided by isActive(), not by the wire power_state: libvirt's
# VIR_DOMAIN_SHUTDOWN ("being shut down") maps to "shutdown" on the wire while
# QEMU still runs, and a domain in that window must still be powered off.


def _suspended(guest: Guest) -> bool:
    return not guest.is_active() and guest.has_managed_save()


def _hard_reboot(ctx: Context, guest: Guest) -> None:
    # The original re-created the domain from its live XML; a persistent
    # domain starts again from its definition, which is that same config.
    if guest.is_active():
        guest.power_off()
    if guest.has_managed_save():
        guest.discard_saved_state()  # HARD asks for a fresh boot, saved memory included
    network.replug(ctx, guest.uuid)  # taps and bridges a host reboot took
    guest.start()


def reboot_instance(ctx: Context, args: Args) -> Result:
    """SOFT: ask the guest to shut down, wait, start; fall back to HARD on timeout."""
    guest = find_guest(ctx, args)
    if args.get("reboot_type", "SOFT") == "SOFT":
        if _suspended(guest):
            # A soft reboot must not throw away the saved memory of a suspended guest.
            raise InstanceInvalidState("instance is suspended: resume it, or reboot HARD")
        if guest.power_state() == ps.RUNNING:
            guest.shutdown()
            if not guest.wait_off(ctx.config.soft_reboot_timeout):
                log.warning("soft_reboot_timed_out", timeout=ctx.config.soft_reboot_timeout)
    _hard_reboot(ctx, guest)
    return guest.describe()


def stop_instance(ctx: Context, args: Args) -> Result:
    """Power off: a clean shutdown within a timeout, then pull the plug."""
    guest = find_guest(ctx, args)
    if guest.is_active():
        if args.get("clean_shutdown", True) and guest.power_state() == ps.RUNNING:
            timeout = float(args.get("timeout", ctx.config.shutdown_timeout))
            guest.shutdown()
            if not guest.wait_off(timeout):
                log.warning("clean_shutdown_timed_out", timeout=timeout)
        if guest.is_active():
            guest.power_off()
    return guest.describe()


def start_instance(ctx: Context, args: Args) -> Result:
    """Power on a stopped instance; running is success, a suspended one needs resume."""
    guest = find_guest(ctx, args)
    current = guest.power_state()
    if not guest.is_active():
        if guest.has_managed_save():
            raise InstanceInvalidState("instance is suspended: resume it instead")
        network.replug(ctx, guest.uuid)
        guest.start()
    elif current == ps.CRASHED:
        guest.power_off()
        network.replug(ctx, guest.uuid)
        guest.start()
    elif current not in (ps.RUNNING, ps.PAUSED):
        raise InstanceInvalidState(f"cannot start an instance that is {current}")
    return guest.describe()


def terminate_instance(ctx: Context, args: Args) -> Result:
    """Destroy, undefine (with saved image and snapshot metadata), remove its dir."""
    uuid = instance_uuid(args)
    name = args["instance"].get("name")
    try:
        guest = find_guest(ctx, args)
    except InstanceNotFound:
        guest = None  # already gone: still clean up what is left on disk
    if guest is not None:
        name = guest.name
        if guest.is_active():
            guest.power_off()
        if guest.is_persistent():
            guest.undefine()
    # Off and undefined: no interface holds a tap or a filter any more.
    network.unplug_all(ctx, uuid)
    removed = ctx.paths.remove_instance_dir(uuid)
    volumes.RESERVATIONS.forget(uuid)
    log.info("instance_files_removed" if removed else "instance_files_absent", uuid=uuid)
    return {"uuid": uuid, "name": name, "power_state": None, "vm_state": "deleted"}
