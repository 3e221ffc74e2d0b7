"""Helpers every verb family shares: the instance a message names, and its guest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worker import logs
from worker.core.context import Context
from worker.errors import HypervisorError
from worker.virt.guest import Guest
from worker.virt.paths import canonical_uuid

log = logs.get(__name__)

Args = dict[str, Any]
Result = dict[str, Any]


def instance_uuid(args: Args) -> str:
    """The canonical UUID of ``args.instance`` (the schema has checked its shape)."""
    return canonical_uuid(str(args["instance"]["uuid"]).lower())


def find_guest(ctx: Context, args: Args) -> Guest:
    """The domain the message names; InstanceNotFound when it is missing."""
    return ctx.guest(instance_uuid(args))


def unplug_live(ctx: Context, guest: Guest, alias: str,
                still_plugged: Callable[[], bool], **about: Any) -> str | None:
    """Ask the running guest to let go of device alias, with nova's retries.

    Each of ``device_detach_attempts`` asks, then waits ``device_detach_timeout``
    for libvirt's device-removed event. None once the device is gone; else why
    it is still there after the last attempt (the caller raises its own nova error).
    about: what the device is, for the log (volume_id=..., port_id=...).
    """
    attempts = ctx.config.libvirt.device_detach_attempts
    timeout = ctx.config.libvirt.device_detach_timeout
    outcome: str | None = None
    for attempt in range(1, attempts + 1):
        # Watch before asking: the event can come before the request returns.
        with ctx.hypervisor.watch_removal(guest.uuid, alias) as removal:
            try:
                guest.request_unplug(alias)
            except HypervisorError:
                if not still_plugged():
                    return None  # it went between our look and the request
                raise
            outcome = removal.wait(timeout)
        if outcome == "removed" or not still_plugged():
            return None
        log.warning("device_detach_attempt_failed", alias=alias, attempt=attempt,
                    attempts=attempts, outcome=outcome or "timeout", **about)
    reason = ("the guest refused to release it" if outcome == "failed"
              else f"the guest did not release it within {timeout:g} s")
    return f"{reason} ({attempts} attempts)"
