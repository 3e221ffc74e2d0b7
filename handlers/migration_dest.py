"""The destination's part of a live migration: prepare, take over, or clean up.

pre_live_migration makes what the guest will need here before libvirt moves
it: its directory (when the hosts do not share one), empty disks of the same
sizes on the same bases for a block copy to fill, and its VIFs. A directory
this host made for an arrival carries a marker file until the arrival is
taken over, so a rollback removes only what the migration made, never a
directory the hosts share.
"""

from __future__ import annotations

from pathlib import Path

from handlers import network
from handlers.common import Args, Result, instance_uuid
from handlers.migration_common import data_of, state_of
from worker import logs
from worker.codec import migrate_data
from worker.core.context import Context
from worker.core.methods import Answer
from worker.errors import InstanceNotFound, MigrationError, MigrationPreCheckError
from worker.virt import migration
from worker.virt import power_state as ps
from worker.virt.guest import Guest
from worker.virt.image_cache import ImageCache
from worker.virt.paths import canonical_uuid

log = logs.get(__name__)
#: In an instance directory this host made for an arriving instance, until it is taken over.
ARRIVING = ".arriving"


def pre_live_migration(ctx: Context, args: Args) -> Answer:
    """Get ready to take the instance in; answers nova's LibvirtLiveMigrateData with our
    address (its events say the instance as the message has it: not here yet)."""
    uuid = instance_uuid(args)
    data = data_of(args)
    shared = bool(data.get("is_shared_instance_path"))
    block = bool(data.get("block_migration"))
    if uuid in ctx.hypervisor.domain_uuids():
        raise MigrationPreCheckError(f"instance {uuid} already has a domain on this host")
    directory = ctx.paths.instance_dir(uuid)
    # Shared, the directory is the source's (the checks saw their test file on both
    # hosts), or there is none (a domain the worker did not build); nothing to make.
    if not shared:
        made = not directory.exists()
        directory.mkdir(mode=0o700, exist_ok=True)
        if made or (directory / ARRIVING).exists():
            (directory / ARRIVING).touch()
        else:
            raise MigrationPreCheckError(f"{directory} already exists here and was not made "
                                         "for this migration")
    ctx.arrivals.add(uuid)
    if block and not shared:
        _make_disks(ctx, args, directory)
    if shared:
        network.replug(ctx, uuid)  # from the record in the directory both hosts see
    else:
        network.plug_arriving(ctx, uuid, data.get("vifs"))
    inbound = ctx.config.libvirt.live_migration_inbound_addr
    log.info("live_migration_prepared", shared_instance_path=shared, block_migration=block,
             target_connect_addr=inbound or None)
    return Answer(state_of(args), migrate_data.primitive({
        **data, "target_connect_addr": inbound or None,
        "graphics_listen_addr_vnc": ctx.config.vnc.server_listen, "serial_listen_addr": None,
        "serial_listen_ports": [], "supported_perf_events": []}))


def _make_disks(ctx: Context, args: Args, directory: Path) -> None:
    """The disks of the source's disk info, empty, on this host's copy of their base."""
    image_ref = args["instance"].get("image_ref")
    disks = migration.parse_disk_info(args.get("disk"), directory,
                                      image_ref if isinstance(image_ref, str) else None)
    cache = ImageCache(ctx.config.instances_path, ctx.config.images_path)
    for disk in disks:
        if disk.backing_file is not None and isinstance(image_ref, str):
            # Under the cache's lock until the overlay names the base: no sweep takes it.
            with cache.base(image_ref) as base:
                migration.create_disk(disk, base.path)
        else:
            migration.create_disk(disk, None)


def post_live_migration_at_destination(ctx: Context, args: Args) -> Result:
    """The instance is here now: take it over (and let it run, if a force paused it)."""
    uuid = instance_uuid(args)
    try:
        guest = ctx.guest(uuid)
    except InstanceNotFound:
        ctx.arrivals.discard(uuid)
        raise
    if guest.power_state() == ps.PAUSED and args["instance"].get("vm_state") in (None, "active"):
        # Paused by a forced completion on the source: the instance was running, as it is
        # again now. A guest its user paused is in vm_state paused and stays so.
        guest.unpause()
        log.info("live_migration_forced_pause_ended")
    (ctx.paths.instance_dir(uuid) / ARRIVING).unlink(missing_ok=True)
    ctx.arrivals.discard(uuid)
    log.info("live_migration_taken_over", persistent=guest.is_persistent())
    return guest.describe()


def rollback_live_migration_at_destination(ctx: Context, args: Args) -> Result:
    """The move failed: remove what pre_live_migration made here; the source keeps it."""
    uuid = instance_uuid(args)
    data = data_of(args)
    try:
        guest: Guest | None = ctx.guest(uuid)
    except InstanceNotFound:
        guest = None
    if guest is not None:
        _remove_arrival(guest)
    directory = ctx.paths.instance_dir(uuid)
    if (directory / ARRIVING).exists() and not data.get("is_shared_instance_path"):
        network.unplug_all(ctx, uuid)
        ctx.paths.remove_instance_dir(canonical_uuid(uuid))
        log.info("live_migration_arrival_removed", directory=str(directory))
    else:
        # Shared (or not made by this migration): what pre plugged goes, the record stays.
        network.unplug_all(ctx, uuid, keep_record=True)
        log.info("live_migration_rollback_kept_directory", directory=str(directory),
                 reason="shared" if data.get("is_shared_instance_path")
                 else "not made for this migration")
    ctx.arrivals.discard(uuid)
    return state_of(args)


def _remove_arrival(guest: Guest) -> None:
    """A domain left here by a failed move: removed only if it is not running (a running
    one means the move succeeded after all, and the instance lives here)."""
    if guest.power_state() == ps.RUNNING:
        raise MigrationError(f"instance {guest.uuid} runs on this host: not rolled back")
    if guest.is_active():
        guest.power_off()
    if guest.is_persistent():
        guest.undefine()
    log.warning("live_migration_leftover_domain_removed")
