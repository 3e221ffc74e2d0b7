"""Helpers every verb family shares: finding the guest and describing it."""

from __future__ import annotations

from typing import Any

from worker import power_state
from worker.context import Context
from worker.guest import Guest
from worker.paths import canonical_uuid

Args = dict[str, Any]
Result = dict[str, Any]


def instance_uuid(args: Args) -> str:
    """The canonical UUID of ``args.instance`` (the schema has checked its shape)."""
    return canonical_uuid(str(args["instance"]["uuid"]).lower())


def find_guest(ctx: Context, args: Args) -> Guest:
    """The domain the message names; InstanceNotFound when it is missing."""
    return ctx.guest(instance_uuid(args))


def describe(guest: Guest) -> Result:
    """What an end event says of an instance: uuid, name, power_state, vm_state."""
    current = guest.power_state()
    saved = current == power_state.SHUTDOWN and guest.has_managed_save()
    return {"uuid": guest.uuid, "name": guest.name, "power_state": current,
            "vm_state": power_state.vm_state(current, saved)}
