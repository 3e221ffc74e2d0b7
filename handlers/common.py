"""Helpers every verb family shares: the instance a message names, and its guest."""

from __future__ import annotations

from typing import Any

from worker.core.context import Context
from worker.virt.guest import Guest
from worker.virt.paths import canonical_uuid

Args = dict[str, Any]
Result = dict[str, Any]


def instance_uuid(args: Args) -> str:
    """The canonical UUID of ``args.instance`` (the schema has checked its shape)."""
    return canonical_uuid(str(args["instance"]["uuid"]).lower())


def find_guest(ctx: Context, args: Args) -> Guest:
    """The domain the message names; InstanceNotFound when it is missing."""
    return ctx.guest(instance_uuid(args))
