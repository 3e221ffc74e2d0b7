"""rescue_instance and unrescue_instance: boot from a rescue image, then put it all back.

Rescue makes ``disk.rescue`` (an overlay on the rescue image, through the
image cache), saves the domain's definition (inactive XML) as
``unrescue.xml``, powers off (cleanly if asked), defines the rescue definition
(``worker/virt/rescue.py``) and starts it. Unrescue powers off, defines the
saved text again, removes ``disk.rescue``, starts, and removes
``unrescue.xml`` last: until then a redelivery finds the instance rescued and
finishes the job.

Both are idempotent, as every verb here is: rescuing a rescued instance and
unrescuing one that is not rescued succeed and change nothing.
"""

from __future__ import annotations

from handlers.common import Args, Result, find_guest, instance_uuid
from worker import logs
from worker.core.context import Context
from worker.errors import HypervisorUnavailable, InstanceInvalidState, InstanceNotRescuable
from worker.virt import images, rescue
from worker.virt import power_state as ps
from worker.virt.guest import Guest
from worker.virt.image_cache import ImageCache

log = logs.get(__name__)


def _rescue_image(ctx: Context, args: Args, uuid: str) -> str:
    """rescue_image_ref, else [libvirt] rescue_image_id, else the instance's own image."""
    for candidate in (args.get("rescue_image_ref"), ctx.config.libvirt.rescue_image_id,
                      args["instance"].get("image_ref")):
        if isinstance(candidate, str) and candidate:
            return candidate
    raise InstanceNotRescuable(uuid, "no rescue image: the request names none, "
                                     "rescue_image_id is not set and the instance has no image")


def _power_off(ctx: Context, guest: Guest, clean: bool) -> None:
    """As stop_instance does it: a clean shutdown within shutdown_timeout, then the plug."""
    if clean and guest.is_active() and guest.power_state() == ps.RUNNING:
        guest.shutdown()
        if not guest.wait_off(ctx.config.shutdown_timeout):
            log.warning("clean_shutdown_timed_out", timeout=ctx.config.shutdown_timeout)
    if guest.is_active():
        guest.power_off()


def _rescued(guest: Guest) -> Result:
    return {**guest.describe(), "vm_state": "rescued"}


def rescue_instance(ctx: Context, args: Args) -> Result:
    """Boot the instance from disk.rescue, its own root disk second; rescued is success."""
    uuid = instance_uuid(args)
    guest = find_guest(ctx, args)
    directory = ctx.paths.instance_dir(uuid)
    rescue_disk = ctx.paths.inside(uuid, rescue.RESCUE_DISK)
    definition = guest.persistent_xml()
    if rescue.boots_rescue_disk(definition, rescue_disk):
        # Rescued already (by an earlier delivery of this message, or another rescue).
        if not guest.is_active():
            guest.start()
        log.info("rescue_found_rescued", uuid=uuid)
        return _rescued(guest)
    if not guest.is_active() and guest.has_managed_save():
        raise InstanceInvalidState("instance is suspended: resume it before a rescue")
    if guest.power_state() == ps.PAUSED:
        raise InstanceInvalidState("instance is paused: unpause it before a rescue")
    image_id = _rescue_image(ctx, args, uuid)
    directory.mkdir(mode=0o700, exist_ok=True)
    # The disk is made before anything else: a missing image leaves the guest as it was.
    rescue_disk.unlink(missing_ok=True)
    try:
        cfg = ctx.config
        with ImageCache(cfg.instances_path, cfg.images_path).base(image_id) as base:
            images.root_disk(rescue_disk, 0, base.path, base.fmt, cow=cfg.use_cow_images)
    except Exception:
        rescue_disk.unlink(missing_ok=True)
        raise
    # The definition as it is now: an unrescue.xml left by an attempt killed before it
    # redefined the domain was written from this same definition.
    rescue.save(directory, definition)
    new = rescue.rescue_definition(definition, uuid, rescue_disk)
    was_active = guest.is_active()
    _power_off(ctx, guest, bool(args.get("clean_shutdown", True)))
    try:
        ctx.hypervisor.define(new)
    except HypervisorUnavailable:
        raise  # retried: the retry finds the marker and the definition as they are
    except Exception:
        # libvirt refused the rescue definition: the instance is its own again.
        (directory / rescue.UNRESCUE_XML).unlink(missing_ok=True)
        rescue_disk.unlink(missing_ok=True)
        if was_active:
            guest.start()
        raise
    guest.start()
    log.info("instance_rescued", uuid=uuid, rescue_image=image_id)
    return _rescued(guest)


def unrescue_instance(ctx: Context, args: Args) -> Result:
    """Define the saved definition again, exactly, and start it; not rescued is success."""
    uuid = instance_uuid(args)
    guest = find_guest(ctx, args)
    directory = ctx.paths.instance_dir(uuid)
    saved = rescue.load(directory) if directory.is_dir() else None
    if saved is None:
        log.info("unrescue_found_not_rescued", uuid=uuid)
        return guest.describe()
    rescue_disk = ctx.paths.inside(uuid, rescue.RESCUE_DISK)
    if rescue.boots_rescue_disk(guest.persistent_xml(), rescue_disk) or rescue_disk.exists():
        rescue.check_saved(saved, uuid)
        if guest.is_active():
            guest.power_off()
        if guest.has_managed_save():
            # Memory saved while rescued must never be restored into the original.
            guest.discard_saved_state()
        ctx.hypervisor.define(saved)
        rescue_disk.unlink(missing_ok=True)
    # else: an earlier attempt got this far and was killed; the original is defined.
    if not guest.is_active():
        guest.start()
    (directory / rescue.UNRESCUE_XML).unlink()
    log.info("instance_unrescued", uuid=uuid)
    return guest.describe()
