"""What the migration handlers share: the other host, the peers, the args sent on."""

from __future__ import annotations

from typing import Any

from handlers.common import Args
from worker.codec import migrate_data
from worker.core.context import Context
from worker.core.peers import Peers
from worker.errors import MigrationPreCheckError, NotSupported
from worker.virt import migration

#: The instance's task_state while it moves, as nova sets it.
MIGRATING = "migrating"


def peers(ctx: Context) -> Peers:
    """The other hosts' workers; NotSupported on a worker wired without them."""
    if ctx.peers is None:
        raise NotSupported("live migration: this worker has no peers wired")
    return ctx.peers


def other_host(ctx: Context, host: Any, role: str) -> str:
    """A peer host name from the message, checked: a name, and not this host."""
    if not isinstance(host, str) or not host:
        raise MigrationPreCheckError(f"the {role} host is not named")
    migration.check_address(host)
    if host == ctx.config.host:
        raise MigrationPreCheckError(f"the {role} host {host} is this host")
    return host


def data_of(args: Args, key: str = "migrate_data") -> dict[str, Any]:
    """The known fields of the migrate data in args (empty when there is none)."""
    return migrate_data.fields(args.get(key))


def instance_arg(args: Args) -> dict[str, Any]:
    """The instance as the message carried it (plain), to send on to the other host."""
    return dict(args["instance"])


def timeout(ctx: Context, slow: bool = False) -> float:
    """How long a call to the other host waits: nova's long_rpc_timeout for the slow ones."""
    return ctx.config.long_rpc_timeout if slow else ctx.config.rpc_response_timeout


def state_of(args: Args) -> dict[str, Any]:
    """The instance's state as the message says it (for events of a host that does not
    have the domain, such as a destination rolling back)."""
    instance = args["instance"]
    return {"uuid": instance.get("uuid"), "name": instance.get("name"),
            "vm_state": instance.get("vm_state") or "active",
            "power_state": None}
