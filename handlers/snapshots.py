"""snapshot_instance: the root disk exported as a new image in images_path.

A running guest keeps running, as nova's live snapshot does it: a qcow2
delta on the disk's own backing file, a shallow block copy into it, the job
ended once it mirrors (the guest stays on its disk), and the delta exported.
Where the driver cannot copy live, the guest is paused only while its top
layer is copied; a stopped guest is exported as it is. The end event's
details say which, and the format, size and SHA-256 of the new image.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from handlers.common import Args, Result, find_guest, instance_uuid
from worker import logs
from worker.core.context import Context
from worker.errors import InstanceInvalidState, InvalidArguments, NotSupported, UnsafePath
from worker.virt import disk_xml, domain_xml, snapshot
from worker.virt import power_state as ps
from worker.virt.guest import DiskFile, Guest
from worker.virt.paths import canonical_uuid, inside

log = logs.get(__name__)
#: The root disk's target, as the build names it.
ROOT = "vda"
#: Longest a live block copy may take to catch up with the guest's writes.
COPY_TIMEOUT = 600.0


def snapshot_instance(ctx: Context, args: Args) -> Result:
    """Export the root disk to images_path/<image_id>; an image already there is success."""
    guest = find_guest(ctx, args)
    image_id = _image_id(args)
    images = Path(ctx.config.images_path).resolve()
    images.mkdir(parents=True, exist_ok=True)
    final = inside(images, image_id)
    if final.exists():
        # An earlier delivery of this message finished the image, then the worker died.
        log.info("snapshot_already_published", image_id=image_id)
        return _result(guest, snapshot.describe(final), "existing")
    root = _root_disk(ctx, guest, instance_uuid(args))
    disk = snapshot.inspect(Path(root.path), root.fmt)
    fmt = ctx.config.libvirt.snapshot_image_format or root.fmt
    if fmt not in snapshot.FORMATS:
        raise NotSupported(f"snapshots in {fmt} (only {', '.join(snapshot.FORMATS)})")
    snapshot.check_space(images, snapshot.space_needed(disk, fmt))
    delta = ctx.paths.instance_dir(instance_uuid(args)) / f"snapshot-{image_id}.delta"
    _end_leftover_copy(guest, root, delta)
    paused: float | None = None
    with snapshot.staging(images, image_id) as staged, snapshot.removed_after(delta):
        if not guest.is_active():
            how, source, source_fmt = "cold", disk.path, disk.fmt
        else:
            try:
                _copy_live(guest, disk, delta)
                how, source, source_fmt = "live", delta, "qcow2"
            except NotSupported as exc:
                log.info("snapshot_live_copy_unsupported", reason=exc.message)
                delta.unlink(missing_ok=True)
                paused = _copy_paused(guest, disk, delta)
                how, source, source_fmt = "paused", delta, disk.fmt
        image = snapshot.export(source, source_fmt, fmt, staged)
        if not snapshot.publish(staged, final):
            log.warning("snapshot_published_meanwhile", image_id=image_id)
            return _result(guest, snapshot.describe(final), "existing")
    log.info("snapshot_published", image_id=image_id, method=how, format=fmt,
             size=image.size, paused_seconds=paused)
    return _result(guest, image, how, paused)


def _image_id(args: Args) -> str:
    image_id = canonical_uuid(str(args["image_id"]).lower())
    image = args.get("image")
    given = image.get("id") if isinstance(image, dict) else None
    if given is not None and str(given).lower() != image_id:
        raise InvalidArguments(f"image.id {given!r:.60} is not image_id {image_id}")
    return image_id


def _root_disk(ctx: Context, guest: Guest, uuid: str) -> DiskFile:
    """The guest's vda file, checked to be in its instance directory and of a known format."""
    root = guest.disk_file(ROOT)
    if root is None:
        raise NotSupported(f"instance {uuid} has no file disk {ROOT} to snapshot")
    try:
        path = inside(ctx.paths.instance_dir(uuid), root.path)
    except UnsafePath:
        raise UnsafePath(f"root disk {root.path!r:.120} is not in the instance's "
                         "directory") from None
    if root.fmt not in disk_xml.FORMATS:
        raise NotSupported(f"snapshots of a {root.fmt} root disk")
    return DiskFile(str(path), root.fmt, root.mirror)


def _end_leftover_copy(guest: Guest, root: DiskFile, delta: Path) -> None:
    """A copy into this snapshot's delta outlived a worker killed mid-snapshot: end it.
    A copy of someone else's is left alone, and the snapshot refused."""
    if root.mirror is None:
        return
    if Path(root.mirror) != delta:
        raise InstanceInvalidState(f"{ROOT} already has a block copy running (to {root.mirror})")
    log.warning("snapshot_leftover_copy_aborted", delta=str(delta))
    guest.abort_block_job(ROOT)


def _copy_live(guest: Guest, disk: snapshot.Disk, delta: Path) -> None:
    """Mirror the disk's top layer into delta until it is in step, then end the job."""
    snapshot.create_delta(delta, disk)
    guest.block_copy(ROOT, domain_xml.to_string(disk_xml.disk(
        disk_xml.DiskSpec("file", str(delta), ROOT, fmt="qcow2"))))
    try:
        guest.wait_block_job_ready(ROOT, COPY_TIMEOUT)
    except BaseException:
        _abort_quietly(guest)
        raise
    # Ended unpivoted, the delta holds the disk as of now and the guest stays on its own.
    guest.abort_block_job(ROOT)


def _abort_quietly(guest: Guest) -> None:
    """End a failed copy; an error doing so is logged so the first error is the one raised."""
    try:
        if guest.block_job_progress(ROOT) is not None:
            guest.abort_block_job(ROOT)
    except Exception as exc:
        log.error("snapshot_copy_abort_failed", error=str(exc)[:200])


def _copy_paused(guest: Guest, disk: snapshot.Disk, delta: Path) -> float:
    """Pause (if running) only while the top layer is copied; seconds it was paused."""
    began = time.monotonic()
    was_running = guest.power_state() == ps.RUNNING
    if was_running:
        guest.pause()
    try:
        snapshot.copy_top(disk.path, delta)
    finally:
        if was_running:
            guest.unpause()
    return round(time.monotonic() - began, 3) if was_running else 0.0


def _result(guest: Guest, image: snapshot.Image, how: str,
            paused: float | None = None) -> Result:
    details: dict[str, Any] = {"format": image.fmt, "size": image.size,
                               "virtual_size": image.virtual_size, "sha256": image.sha256,
                               "method": how}
    if paused is not None:
        details["paused_seconds"] = paused
    return {**guest.describe(), "details": details}
