"""The source's part of a live migration: prepare the destination, move, then post or roll back.

live_migration runs in the instance's line for as long as the move takes;
live_migration_abort and live_migration_force_complete run beside it
(unordered) and act on the libvirt job it watches. Its events are nova's
phases, published as they happen: instance.live_migration_post.* once the
guest is on the destination, or instance.live_migration_rollback.* when it
stays here, and instance.live_migration.progress (ours) while it moves.

A delivery after a worker restart finds the instance where the first one
left it: still migrating (the job is libvirtd's, it goes on), moved (post
runs again), or here and running (the move starts again).
"""

from __future__ import annotations

import math
import time
from typing import Any

from handlers import network
from handlers.common import Args, Result, find_guest, instance_uuid
from handlers.migration_common import data_of, instance_arg, other_host, peers, timeout
from worker import logs
from worker.codec import migrate_data
from worker.core.context import Context
from worker.errors import (
    InstanceInvalidState,
    InstanceNotFound,
    MigrationError,
    WorkerError,
)
from worker.virt import migration
from worker.virt import power_state as ps
from worker.virt.guest import Guest

log = logs.get(__name__)
GIB = 1 << 30
#: How often the verb thread looks at the job.
POLL = 0.2


def live_migration(ctx: Context, args: Args) -> Result:
    """Move the running instance to args.dest, peer to peer; it runs on exactly one host after."""
    uuid = instance_uuid(args)
    dest = other_host(ctx, args.get("dest"), "destination")
    data = data_of(args)
    block = bool(args.get("block_migration") or data.get("block_migration"))
    try:
        guest = find_guest(ctx, args)
    except InstanceNotFound:
        # Gone from here: an earlier delivery moved it and died before post was done.
        log.warning("live_migration_found_moved_finishing_post")
        return _post(ctx, args, dest, data, block)
    _wait_running_job(guest)
    if not _still_here(ctx, uuid):
        return _post(ctx, args, dest, data, block)
    if guest.power_state() != ps.RUNNING:
        raise InstanceInvalidState(f"instance {uuid} is {guest.power_state()}: a live "
                                   "migration moves a running guest")
    disks = migration.local_disks(guest.xml(), ctx.paths.instance_dir(uuid)) if block else []
    # A destination that does not share the directory has no VIF record: it gets the VIFs.
    sent = data if data.get("is_shared_instance_path") else {
        **data, "vifs": network.migrating_vifs(ctx, uuid)}
    try:
        answer = peers(ctx).call(dest, "pre_live_migration", {
            "instance": instance_arg(args), "migrate_data": migrate_data.primitive(sent),
            "disk": migration.disk_info(disks) if block else None},
            timeout=timeout(ctx, slow=True), request_id=ctx.request_id)
    except WorkerError as exc:
        return _rollback(ctx, args, dest, data, guest, f"pre_live_migration failed: {exc}")
    data = {**data, **migrate_data.fields(answer.get("nova_object.data")
                                          if isinstance(answer, dict) else None)}
    try:
        _move(ctx, guest, dest, data, block, [d.target for d in disks if d.target])
    except WorkerError as exc:
        if not _still_here(ctx, uuid):
            # The call failed but the guest left (the error came after the switch-over).
            return _post(ctx, args, dest, data, block)
        return _rollback(ctx, args, dest, data, guest, exc.message)
    return _post(ctx, args, dest, data, block)


def _still_here(ctx: Context, uuid: str) -> bool:
    return uuid in ctx.hypervisor.domain_uuids()


def _wait_running_job(guest: Guest) -> None:
    """A migration job an earlier delivery started (libvirtd runs it on): wait for its end."""
    waited = False
    while True:
        try:
            stats = guest.job_stats()
        except InstanceNotFound:
            return
        if not migration.is_migrating(stats):
            break
        waited = True
        time.sleep(POLL)
    if waited:
        log.warning("live_migration_earlier_job_ended")


def _move(ctx: Context, guest: Guest, dest: str, data: dict[str, Any], block: bool,
          disks: list[str]) -> None:
    """Run the libvirt migration and watch it: progress events, the completion timeout."""
    opts = ctx.config.libvirt
    addr = str(data.get("target_connect_addr") or dest)
    uri = migration.destination_uri(opts, addr)
    flags = migration.flags(block=block, unsafe=opts.live_migration_permit_unsafe)
    parameters = migration.params(connect_addr=data.get("target_connect_addr"),
                                  bandwidth_mib=opts.live_migration_bandwidth,
                                  disks=disks if block else None)
    limit = _completion_timeout(ctx, guest, data, block)
    log.info("live_migration_started", dest=dest, uri=uri, block_migration=block,
             completion_timeout=limit)
    run = migration.Run(guest, uri, parameters, flags)
    interval = opts.live_migration_progress_interval
    next_report = interval
    acted = False
    while not run.wait(POLL):
        elapsed = run.elapsed
        if limit and elapsed > limit and not acted:
            acted = True
            _on_timeout(guest, opts.live_migration_timeout_action, limit)
        if elapsed >= next_report:
            next_report = elapsed + interval
            _report_progress(ctx, guest, elapsed)
    if run.error is not None:
        raise MigrationError(run.error.message)
    log.info("live_migration_moved", dest=dest, seconds=round(run.elapsed, 3))


def _completion_timeout(ctx: Context, guest: Guest, data: dict[str, Any], block: bool) -> float:
    """nova's rule: live_migration_completion_timeout per GiB of memory (and disks copied)."""
    per_gib = ctx.config.libvirt.live_migration_completion_timeout
    if not per_gib:
        return 0.0
    size = int(guest.info()["max_mem_kb"]) * 1024
    if block:
        size += sum(d.virtual_size for d in migration.local_disks(
            guest.xml(), ctx.paths.instance_dir(guest.uuid)))
    return float(per_gib * max(1, math.ceil(size / GIB)))


def _on_timeout(guest: Guest, action: str, limit: float) -> None:
    log.warning("live_migration_completion_timeout", action=action, timeout=limit)
    try:
        if action == "force_complete":
            guest.pause()
        else:
            guest.abort_job()
    except WorkerError as exc:  # the job may have ended meanwhile
        log.warning("live_migration_timeout_action_failed", error=exc.message)


def _report_progress(ctx: Context, guest: Guest, elapsed: float) -> None:
    try:
        seen = migration.progress(guest.job_stats())
    except WorkerError:
        return  # the job (or the domain) just ended
    if seen is None or ctx.notify is None:
        return
    ctx.notify("live_migration", "progress", {
        "uuid": guest.uuid, "power_state": ps.RUNNING, "vm_state": "active",
        "details": {**seen.details(), "elapsed_seconds": round(elapsed, 3)}})


def _post(ctx: Context, args: Args, dest: str, data: dict[str, Any], block: bool) -> Result:
    """The guest runs on dest: the destination takes over, this host lets go of it."""
    uuid = instance_uuid(args)
    moved = {"uuid": uuid, "name": args["instance"].get("name"), "vm_state": "active",
             "power_state": ps.RUNNING}
    _notify(ctx, "live_migration_post", "start", moved)
    answer = peers(ctx).call(dest, "post_live_migration_at_destination",
                             {"instance": instance_arg(args), "block_migration": block},
                             timeout=timeout(ctx), request_id=ctx.request_id)
    if isinstance(answer, dict) and answer.get("power_state"):
        moved = {**moved, "power_state": answer["power_state"],
                 "vm_state": answer.get("vm_state") or "active"}
    _clean_source(ctx, uuid, data)
    _notify(ctx, "live_migration_post", "end", moved)
    log.info("live_migration_completed", dest=dest)
    # Not here any more: the state watch must not report it gone (it lives on dest).
    return {"uuid": uuid, "name": moved.get("name"), "vm_state": "active", "power_state": None}


def _clean_source(ctx: Context, uuid: str, data: dict[str, Any]) -> None:
    """What this host held for the instance: its directory unless shared, its VIFs."""
    shared = bool(data.get("is_shared_instance_path"))
    network.unplug_all(ctx, uuid, keep_record=shared)
    if not shared:
        ctx.paths.remove_instance_dir(uuid)
        log.info("live_migration_source_directory_removed")


def _rollback(ctx: Context, args: Args, dest: str, data: dict[str, Any], guest: Guest,
              reason: str) -> Result:
    """The guest stays here, running: the destination removes what it made for it."""
    log.warning("live_migration_rolling_back", reason=reason[:300])
    _notify(ctx, "live_migration_rollback", "start", guest.describe())
    try:
        peers(ctx).call(dest, "rollback_live_migration_at_destination", {
            "instance": instance_arg(args), "migrate_data": migrate_data.primitive(data),
            "destroy_disks": not data.get("is_shared_instance_path")},
            timeout=timeout(ctx), request_id=ctx.request_id)
    except WorkerError as exc:
        log.error("live_migration_rollback_at_destination_failed", error=exc.message[:300])
    if guest.power_state() == ps.PAUSED and args["instance"].get("vm_state") in (None, "active"):
        guest.unpause()  # paused by a forced completion that did not complete
    state = guest.describe()
    _notify(ctx, "live_migration_rollback", "end", state)
    return state


def _notify(ctx: Context, action: str, phase: str, state: dict[str, Any]) -> None:
    if ctx.notify is not None:
        ctx.notify(action, phase, state)


def live_migration_abort(ctx: Context, args: Args) -> Result:
    """Cancel the running migration of the instance; it stays here, running."""
    guest = find_guest(ctx, args)
    if not migration.is_migrating(guest.job_stats()):
        raise InstanceInvalidState(f"instance {guest.uuid} is not migrating")
    guest.abort_job()
    log.info("live_migration_abort_requested", migration_id=args.get("migration_id"))
    return guest.describe()


def live_migration_force_complete(ctx: Context, args: Args) -> Result:
    """Let the running migration finish now: pause the guest so the copy catches up
    (nova's way without post-copy); the destination lets it run again."""
    guest = find_guest(ctx, args)
    if not migration.is_migrating(guest.job_stats()):
        raise InstanceInvalidState(f"instance {guest.uuid} is not migrating")
    if guest.power_state() == ps.RUNNING:
        guest.pause()
    log.info("live_migration_force_complete_requested")
    return guest.describe()
