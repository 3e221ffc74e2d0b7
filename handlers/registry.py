"""The method table: RPC method name -> handler, event action, schema (rpc/<name>.json).

The service hands TABLE to its dispatcher, as oslo hands endpoints to its own.
"""

from __future__ import annotations

from handlers import (
    build,
    consoles,
    diagnostics,
    host,
    lifecycle,
    network,
    power,
    queries,
    rescue,
    snapshots,
    volumes,
)
from worker.core.methods import Method, MethodTable

#: The RPC API version this table serves (oslo rules: same major, minor not higher).
API_VERSION = "6.5"


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("build_and_run_instance", build.build_and_run_instance, "create",
           vm_state_on_error="error"),
    Method("pause_instance", power.pause_instance, "pause"),
    Method("unpause_instance", power.unpause_instance, "unpause"),
    Method("suspend_instance", power.suspend_instance, "suspend"),
    Method("resume_instance", power.resume_instance, "resume"),
    Method("reboot_instance", lifecycle.reboot_instance, "reboot"),
    Method("stop_instance", lifecycle.stop_instance, "power_off"),
    Method("start_instance", lifecycle.start_instance, "power_on"),
    Method("terminate_instance", lifecycle.terminate_instance, "delete"),
    Method("snapshot_instance", snapshots.snapshot_instance, "snapshot"),
    # A call, answered with nova's BlockDeviceMapping; in the instance's line so two
    # reservations (or a reservation and an attach) never pick the same free name.
    Method("reserve_block_device_name", volumes.reserve_block_device_name, None),
    Method("attach_volume", volumes.attach_volume, "volume_attach"),
    Method("detach_volume", volumes.detach_volume, "volume_detach"),
    # A call (nova's), answered with the VIF as nova's network model entry.
    Method("attach_interface", network.attach_interface, "interface_attach"),
    Method("detach_interface", network.detach_interface, "interface_detach"),
    Method("get_instance_info", queries.get_instance_info, None, mutating=False,
           ordered=False),
    Method("list_instances", queries.list_instances, None, mutating=False, ordered=False),
    Method("get_diagnostics", diagnostics.get_diagnostics, None, mutating=False,
           ordered=False),
    Method("get_instance_diagnostics", diagnostics.get_instance_diagnostics, None,
           mutating=False, ordered=False),
    # Ours (nova's resource tracker asks its driver in-process); no instance: like
    # list_instances, it runs in the query pool.
    Method("get_available_resource", host.get_available_resource, None, mutating=False,
           ordered=False),
    Method("get_host_uptime", host.get_host_uptime, None, mutating=False, ordered=False),
    Method("rescue_instance", rescue.rescue_instance, "rescue"),
    Method("unrescue_instance", rescue.unrescue_instance, "unrescue"),
    Method("get_console_output", consoles.get_console_output, None, mutating=False,
           ordered=False),
    Method("get_vnc_console", consoles.get_vnc_console, None, mutating=False, ordered=False),
    Method("get_serial_console", consoles.get_serial_console, None, mutating=False,
           ordered=False),
)}
#: What the service hands its dispatcher.
TABLE = MethodTable(API_VERSION, METHODS)
