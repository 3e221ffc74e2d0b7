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
    migration,
    migration_checks,
    migration_dest,
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
    # Live migration, in nova's order. The checks are calls that change nothing; the
    # destination's asks the source's.
    Method("check_can_live_migrate_destination",
           migration_checks.check_can_live_migrate_destination, None, mutating=False),
    Method("check_can_live_migrate_source", migration_checks.check_can_live_migrate_source,
           None, mutating=False),
    # Its events are its phases (post or rollback), sent as they happen; its result is the
    # instance's state here after (gone, or running still) for the state watch.
    Method("live_migration", migration.live_migration, None, tracks_state=True),
    Method("pre_live_migration", migration_dest.pre_live_migration, "live_migration_pre"),
    Method("post_live_migration_at_destination",
           migration_dest.post_live_migration_at_destination, "live_migration_post_dest"),
    Method("rollback_live_migration_at_destination",
           migration_dest.rollback_live_migration_at_destination,
           "live_migration_rollback_dest"),
    # They act on the job live_migration watches, which holds the instance's line.
    Method("live_migration_abort", migration.live_migration_abort, "live_migration_abort",
           ordered=False),
    Method("live_migration_force_complete", migration.live_migration_force_complete,
           "live_migration_force_complete", ordered=False),
)}
#: What the service hands its dispatcher.
TABLE = MethodTable(API_VERSION, METHODS)
