"""Build, reboot, power off and on, and terminate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from handlers.common import Args, Result, find_guest, instance_uuid
from worker import logs
from worker.core.context import Context
from worker.errors import (
    HypervisorUnavailable,
    InstanceInvalidState,
    InstanceNotFound,
    NotSupported,
)
from worker.virt import domain_xml, images
from worker.virt import power_state as ps
from worker.virt.guest import Guest

log = logs.get(__name__)

# "On or off" is decided by isActive(), not by the wire power_state: libvirt's
# VIR_DOMAIN_SHUTDOWN ("being shut down") maps to "shutdown" on the wire while
# QEMU still runs, and a domain in that window must still be powered off.


def _suspended(guest: Guest) -> bool:
    return not guest.is_active() and guest.has_managed_save()


def _hard_reboot(guest: Guest) -> None:
    # The original re-created the domain from its live XML; a persistent
    # domain starts again from its definition, which is that same config.
    if guest.is_active():
        guest.power_off()
    if guest.has_managed_save():
        guest.discard_saved_state()  # HARD asks for a fresh boot, saved memory included
    guest.start()


def reboot_instance(ctx: Context, args: Args) -> Result:
    """SOFT: ask the guest to shut down, wait, start; fall back to HARD on timeout."""
    guest = find_guest(ctx, args)
    if args.get("reboot_type", "SOFT") == "SOFT":
        if _suspended(guest):
            # A soft reboot must not throw away the saved memory of a suspended guest.
            raise InstanceInvalidState("instance is suspended: resume it, or reboot HARD")
        if guest.power_state() == ps.RUNNING:
            guest.shutdown()
            if not guest.wait_off(ctx.config.soft_reboot_timeout):
                log.warning("soft_reboot_timed_out", timeout=ctx.config.soft_reboot_timeout)
    _hard_reboot(guest)
    return guest.describe()


def stop_instance(ctx: Context, args: Args) -> Result:
    """Power off: a clean shutdown within a timeout, then pull the plug."""
    guest = find_guest(ctx, args)
    if guest.is_active():
        if args.get("clean_shutdown", True) and guest.power_state() == ps.RUNNING:
            timeout = float(args.get("timeout", ctx.config.shutdown_timeout))
            guest.shutdown()
            if not guest.wait_off(timeout):
                log.warning("clean_shutdown_timed_out", timeout=timeout)
        if guest.is_active():
            guest.power_off()
    return guest.describe()


def start_instance(ctx: Context, args: Args) -> Result:
    """Power on a stopped instance; running is success, a suspended one needs resume."""
    guest = find_guest(ctx, args)
    current = guest.power_state()
    if not guest.is_active():
        if guest.has_managed_save():
            raise InstanceInvalidState("instance is suspended: resume it instead")
        guest.start()
    elif current == ps.CRASHED:
        guest.power_off()
        guest.start()
    elif current not in (ps.RUNNING, ps.PAUSED):
        raise InstanceInvalidState(f"cannot start an instance that is {current}")
    return guest.describe()


def terminate_instance(ctx: Context, args: Args) -> Result:
    """Destroy, undefine (with saved image and snapshot metadata), remove its dir."""
    uuid = instance_uuid(args)
    name = args["instance"].get("name")
    try:
        guest = find_guest(ctx, args)
    except InstanceNotFound:
        guest = None  # already gone: still clean up what is left on disk
    if guest is not None:
        name = guest.name
        if guest.is_active():
            guest.power_off()
        if guest.is_persistent():
            guest.undefine()
    removed = ctx.paths.remove_instance_dir(uuid)
    log.info("instance_files_removed" if removed else "instance_files_absent", uuid=uuid)
    return {"uuid": uuid, "name": name, "power_state": None, "vm_state": "deleted"}


# virt_type -> <domain type=...> of a new domain. lxc and xen need other
# device models than the x86 HVM one domain_xml builds.
BUILD_DOMAIN_TYPES = {"kvm": "kvm", "qemu": "qemu", "test": "test"}


def build_and_run_instance(ctx: Context, args: Args) -> Result:
    """Make the root disk, define the domain from lxml-built XML, start it, wait for running.

    A domain that already exists with this UUID was built by an earlier
    delivery of this message (the worker died before acking): it is finished,
    not built twice. A build that fails part way is rolled back (domain and
    directory), so nothing half-built stays on the host.
    """
    uuid = instance_uuid(args)
    try:
        existing: Guest | None = find_guest(ctx, args)
    except InstanceNotFound:
        existing = None
    if existing is not None:
        if not existing.is_active() and not existing.has_managed_save():
            existing.start()
        log.info("build_found_existing_domain", uuid=uuid)
        return existing.describe()
    domain_type = BUILD_DOMAIN_TYPES.get(ctx.config.libvirt.virt_type)
    if domain_type is None:
        raise NotSupported(f"building instances on virt_type {ctx.config.libvirt.virt_type} "
                           f"is not supported (only {', '.join(BUILD_DOMAIN_TYPES)})")
    instance = args["instance"]
    _refuse_what_a_plain_build_cannot_do(args)
    directory = ctx.paths.instance_dir(uuid)
    guest: Guest | None = None
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        spec = domain_xml.DomainSpec(
            name=instance.get("name") or f"instance-{uuid}", uuid=uuid,
            memory_mib=_size(instance, "memory_mb", 512), vcpus=_size(instance, "vcpus", 1),
            domain_type=domain_type, disks=_root_disk(ctx, args, directory))
        xml = domain_xml.to_string(domain_xml.domain(spec))
        # Kept beside the disk, as the original driver did: what was asked for.
        (directory / "libvirt.xml").write_text(xml, encoding="utf-8")
        guest = ctx.hypervisor.define(xml)
        guest.start()
        guest.wait_for({ps.RUNNING}, ctx.config.build_timeout)
    except HypervisorUnavailable:
        # libvirt went away: the dispatcher retries this verb, and the retry
        # finds whatever was defined and finishes it (the branch above).
        raise
    except Exception:
        _roll_back(ctx, uuid, guest)
        raise
    return guest.describe()


def _size(instance: Args, name: str, default: int) -> int:
    """A size from nova's Flavor, else the instance's own field, else the default."""
    given = instance.get("flavor")
    flavor: Args = given if isinstance(given, dict) else {}
    for source in (flavor, instance):
        value = source.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return default


def _is_image_root(mapping: Any) -> bool:
    """nova's image root mapping: what every build from an image carries."""
    return (isinstance(mapping, dict) and mapping.get("source_type") == "image"
            and mapping.get("destination_type") == "local"
            and mapping.get("boot_index") in (0, None))


def _refuse_what_a_plain_build_cannot_do(args: Args) -> None:
    """Networks and volumes come with later verbs; a build that needs them is refused, not
    done without them."""
    networks = [n for n in args.get("requested_networks") or []
                if not (isinstance(n, dict) and n.get("network_id") == "none")]
    if networks:
        raise NotSupported("requested_networks: this worker does not plug networks yet")
    extra = [m for m in args.get("block_device_mapping") or [] if not _is_image_root(m)]
    if extra:
        raise NotSupported("block_device_mapping: only the image root mapping is supported "
                           "(no volumes, ephemeral or swap yet)")


def _root_disk(ctx: Context, args: Args, directory: Path) -> tuple[str, ...]:
    image = args.get("image") or {}
    root_gb = _size(args["instance"], "root_gb", 0)
    if not image.get("id") and root_gb == 0:
        return ()  # diskless: nothing to boot from but still a domain (tests, PXE)
    base = images.base_image(ctx.config.images_path, image["id"]) if image.get("id") else None
    return (str(images.create_root_disk(directory / "disk", root_gb, base)),)


def _roll_back(ctx: Context, uuid: str, guest: Guest | None) -> None:
    """Undo a failed build; log (not raise) what cannot be undone, so the first error is kept.

    The instance's directory goes whoever made it: no domain had this UUID
    when the build began, so whatever the directory holds was left by an
    earlier attempt of the same build (killed after making its disk).
    """
    try:
        if guest is not None:
            if guest.is_active():
                guest.power_off()
            guest.undefine()
        ctx.paths.remove_instance_dir(uuid)
        log.warning("build_rolled_back", uuid=uuid)
    except Exception as exc:
        log.error("build_roll_back_incomplete", uuid=uuid, error=str(exc)[:200])
