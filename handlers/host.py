"""The host itself: its capacity and use (ours; nova has no RPC for it), and its uptime."""

from __future__ import annotations

from handlers.common import Args, Result
from worker.core.context import Context
from worker.virt import host_info


def get_available_resource(ctx: Context, args: Args) -> Result:
    """nova's libvirt get_available_resource dict for this host (a call of ours)."""
    return host_info.HostInfo(ctx.hypervisor).resources(ctx.config.instances_path)


def get_host_uptime(ctx: Context, args: Args) -> str:
    """nova's get_host_uptime: what ``uptime`` prints, as nova's libvirt driver returns it."""
    return host_info.uptime()
