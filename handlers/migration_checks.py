"""The checks before a live migration, in nova's order: the destination's, then the source's.

The conductor calls check_can_live_migrate_destination on the destination;
that compares the source's CPU with its own, looks at its free memory and
disk, leaves a test file in its instances_path and calls the source's
check_can_live_migrate_source, which decides from that file whether the two
share the instance directory, and so whether this is a block migration.
The answer is nova's LibvirtLiveMigrateData, which the conductor hands to
the source's live_migration.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from handlers import build
from handlers.common import Args, find_guest, instance_uuid
from handlers.migration_common import data_of, instance_arg, other_host, peers, timeout
from worker import logs
from worker.codec import migrate_data
from worker.core.context import Context
from worker.errors import (
    InvalidCPUInfo,
    InvalidLocalStorage,
    InvalidSharedStorage,
    MigrationPreCheckError,
    WorkerError,
)
from worker.virt import host_info, images, migration
from worker.virt.paths import inside

log = logs.get(__name__)
MIB = 1 << 20


def check_can_live_migrate_destination(ctx: Context, args: Args) -> dict[str, Any]:
    """On the destination: can this host take the instance? nova's LibvirtLiveMigrateData."""
    instance = args["instance"]
    source = other_host(ctx, _source_host(args), "source")
    _check_cpu(ctx, source, instance)
    _check_memory(build.sizes(instance).memory_mb)
    root = ctx.paths.root
    free_mb = images.free_bytes(root) // MIB
    fd, path = tempfile.mkstemp(dir=root)
    os.close(fd)
    data: dict[str, Any] = {
        "filename": os.path.basename(path),
        "image_type": "qcow2" if ctx.config.use_cow_images else "raw",
        "disk_over_commit": bool(args.get("disk_over_commit")),
        "disk_available_mb": int(free_mb),
        "graphics_listen_addr_vnc": ctx.config.vnc.server_listen,
        "serial_listen_addr": None,
    }
    if args.get("block_migration") is not None:
        data["block_migration"] = bool(args["block_migration"])
    try:
        answer = peers(ctx).call(
            source, "check_can_live_migrate_source",
            {"instance": instance_arg(args), "dest_check_data": migrate_data.primitive(data)},
            timeout=timeout(ctx, slow=True), request_id=ctx.request_id)
    finally:
        # nova's cleanup_live_migration_destination_check: the file only served the question.
        os.unlink(path)
    checked = migrate_data.fields(answer.get("nova_object.data")
                                  if isinstance(answer, dict) else None)
    log.info("live_migration_destination_checked", source=source,
             block_migration=checked.get("block_migration"),
             shared_instance_path=checked.get("is_shared_instance_path"))
    return migrate_data.primitive({**data, **checked})


def check_can_live_migrate_source(ctx: Context, args: Args) -> dict[str, Any]:
    """On the source: shared storage or block copy, and room on the destination for it."""
    uuid = instance_uuid(args)
    guest = find_guest(ctx, args)
    data = data_of(args, "dest_check_data")
    filename = data.get("filename")
    if not isinstance(filename, str) or not migration.TEST_FILE.fullmatch(filename):
        raise MigrationPreCheckError(f"dest_check_data.filename {filename!r:.60} is not a "
                                     "shared-storage test file name")
    shared_path = inside(ctx.paths.root, filename).exists()
    disks = migration.local_disks(guest.xml(), ctx.paths.instance_dir(uuid))
    # nova's _is_shared_block_storage: the disks are files in a shared instance directory,
    # or there are none (booted from a volume).
    shared_block = shared_path or not disks
    block = data.get("block_migration")
    if block is None:
        block = not shared_block
    where = str(ctx.paths.instance_dir(uuid))
    if block and shared_block:
        raise InvalidLocalStorage(where, "Block migration can not be used with shared storage.")
    if not block and not shared_block:
        raise InvalidSharedStorage(where, "Shared storage live-migration requires either "
                                   "shared storage or boot-from-volume with no local disks.")
    if block and not data.get("disk_over_commit"):
        needed = sum(d.virtual_size for d in disks) // MIB
        available = data.get("disk_available_mb")
        if isinstance(available, int) and needed > available:
            raise MigrationPreCheckError(
                f"Unable to migrate {uuid}: Disk of instance is too large(available on "
                f"destination host:{available} < need:{needed})")  # nova's wording
    log.info("live_migration_source_checked", block_migration=block,
             shared_instance_path=shared_path, local_disks=len(disks))
    return migrate_data.primitive({
        **data, "block_migration": bool(block), "is_shared_instance_path": shared_path,
        "is_shared_block_storage": shared_block, "instance_relative_path": uuid,
        "is_volume_backed": not disks})


def _source_host(args: Args) -> Any:
    given = args.get("migration")
    if isinstance(given, dict) and given.get("source_compute"):
        return given["source_compute"]
    return args["instance"].get("host")


def _check_cpu(ctx: Context, source: str, instance: Args) -> None:
    """nova's _compare_cpu: the source host's CPU (or the instance's model) must run here.

    Only for KVM: an emulated (TCG) CPU runs anywhere, and the test driver has none.
    """
    if ctx.config.libvirt.virt_type != "kvm" or ctx.config.workarounds.skip_cpu_compare_on_dest:
        return
    model = instance.get("vcpu_model")
    if isinstance(model, dict) and model.get("model"):
        info: dict[str, Any] = {"arch": model.get("arch"), "model": model.get("model"),
                                "vendor": model.get("vendor"),
                                "features": [f.get("name") for f in model.get("features") or []
                                             if isinstance(f, dict)]}
    else:
        resources = peers(ctx).call(source, "get_available_resource", {},
                                    timeout=timeout(ctx), request_id=ctx.request_id)
        try:
            info = json.loads(resources["cpu_info"])
        except (TypeError, KeyError, ValueError):
            raise MigrationPreCheckError(f"host {source} did not say what CPU it has") from None
    xml = migration.cpu_xml(info)
    try:
        verdict = ctx.hypervisor.compare_cpu(xml, "kvm")
    except WorkerError as exc:
        raise InvalidCPUInfo(f"CPU doesn't have compatibility: {exc.message}") from None
    if verdict is not None and verdict <= 0:
        raise InvalidCPUInfo(f"CPU doesn't have compatibility ({verdict}): this host cannot "
                             f"run {info.get('model')} with the source's features")


def _check_memory(memory_mb: int) -> None:
    free_mb = host_info.available_memory_kb() // 1024
    if memory_mb > free_mb:
        raise MigrationPreCheckError(f"the instance needs {memory_mb} MiB of memory, this host "
                                     f"has {free_mb} MiB available")
