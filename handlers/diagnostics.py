"""nova's two diagnostics calls: the libvirt driver's flat dict, and the Diagnostics object."""

from __future__ import annotations

import datetime
from typing import Any

from handlers.common import Args, Result, find_guest
from worker.core.context import Context
from worker.errors import InstanceInvalidState
from worker.virt import diagnostics
from worker.virt.guest import Guest

#: nova 34's versions of the objects get_instance_diagnostics answers with.
VERSION = "1.0"


def _running(ctx: Context, args: Args, method: str) -> Guest:
    """The instance's guest; InstanceInvalidState, in nova's words, unless it is running."""
    guest = find_guest(ctx, args)
    current = guest.power_state()
    if current != "running":
        # nova's compute manager checks the same before asking its driver.
        raise InstanceInvalidState(
            f"Instance {guest.uuid} in power state {current}. Cannot {method} while the "
            "instance is in this state.")
    return guest


def get_diagnostics(ctx: Context, args: Args) -> Result:
    """nova's libvirt get_diagnostics: cpuN_time, <disk>_read..., <nic>_rx..., memory-*."""
    return diagnostics.flat(_running(ctx, args, "get_diagnostics"))


def _object(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """A nova object primitive as nova's obj_to_primitive writes it (every field set)."""
    return {"nova_object.name": name, "nova_object.namespace": "nova",
            "nova_object.version": VERSION, "nova_object.data": data,
            "nova_object.changes": sorted(data)}


_NIC_FIELDS = ("mac_address", "rx_octets", "rx_errors", "rx_drop", "rx_packets", "rx_rate",
               "tx_octets", "tx_errors", "tx_drop", "tx_packets", "tx_rate")


def _uptime(instance: dict[str, Any]) -> int | None:
    """Seconds since the Instance's launched_at (nova's uptime); None when it has none."""
    launched = instance.get("launched_at")
    if not isinstance(launched, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(launched.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int((datetime.datetime.now(datetime.UTC) - moment).total_seconds())


def get_instance_diagnostics(ctx: Context, args: Args) -> Result:
    """nova's Diagnostics 1.0 primitive of a running instance; nova's client rebuilds it."""
    found = diagnostics.details(_running(ctx, args, "get_instance_diagnostics"))
    instance: dict[str, Any] = args["instance"]
    cpus = [_object("CpuDiagnostics", {"id": vcpu, "time": ns, "utilisation": None})
            for vcpu, ns in found["cpus"]]
    nics = [_object("NicDiagnostics", {key: nic.get(key) for key in _NIC_FIELDS})
            for nic in found["nics"]]
    disks = [_object("DiskDiagnostics", disk) for disk in found["disks"]]
    return _object("Diagnostics", {
        "state": found["power_state"],
        "driver": "libvirt",
        "hypervisor": ctx.config.libvirt.virt_type,
        "hypervisor_os": "linux",
        "uptime": _uptime(instance),
        # nova's configdrive.required_by, from what the Instance says.
        "config_drive": bool(instance.get("config_drive")),
        "memory_details": _object("MemoryDiagnostics", found["memory"]),
        "cpu_details": cpus,
        "nic_details": nics,
        "disk_details": disks,
        "num_cpus": len(cpus),
        "num_nics": len(nics),
        "num_disks": len(disks),
    })
