"""build_and_run_instance: the disks nova's flavor and block device mapping ask for, then a domain.

Disks, in nova's order and target names: the root disk ``disk`` (vda), the
ephemeral ``disk.eph0`` (next free), the swap ``disk.swap`` (next free).
Everything is made inside ``instances_path/<uuid>/``; the base image is shared
in the cache and is never part of what a failed build removes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from handlers import network
from handlers.common import Args, Result, find_guest, instance_uuid
from worker import logs
from worker.codec import nova_objects
from worker.core.context import Context
from worker.errors import DevicePathInUse, HypervisorUnavailable, InstanceNotFound, NotSupported
from worker.virt import consoles, domain_xml, images, volumes
from worker.virt import power_state as ps
from worker.virt.disk_xml import DiskSpec
from worker.virt.guest import Guest
from worker.virt.image_cache import ImageCache

log = logs.get(__name__)

# virt_type -> <domain type=...> of a new domain. lxc and xen need other
# device models than the x86 HVM one domain_xml builds.
BUILD_DOMAIN_TYPES = {"kvm": "kvm", "qemu": "qemu", "test": "test"}
ROOT_DISK, EPHEMERAL_DISK, SWAP_DISK = "disk", "disk.eph0", "disk.swap"


@dataclass(frozen=True)
class Sizes:
    """What the flavor asks for."""

    memory_mb: int
    vcpus: int
    root_gb: int
    ephemeral_gb: int
    swap_mb: int


def sizes(instance: Args) -> Sizes:
    """The sizes of nova's Flavor (instance.flavor), else the instance's own fields."""
    return Sizes(memory_mb=_size(instance, "memory_mb", 512), vcpus=_size(instance, "vcpus", 1),
                 root_gb=_size(instance, "root_gb", 0),
                 ephemeral_gb=_size(instance, "ephemeral_gb", 0),
                 swap_mb=_size(instance, "swap", 0))


def _size(instance: Args, name: str, default: int) -> int:
    # A plain instance may still carry nova's Flavor primitive (the schema allows both).
    given = nova_objects.plain(instance.get("flavor"))
    flavor: Args = given if isinstance(given, dict) else {}
    for source in (flavor, instance):
        value = source.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return default


def build_and_run_instance(ctx: Context, args: Args) -> Result:
    """Make the disks, define the domain from lxml-built XML, start it, wait for running.

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
            network.replug(ctx, uuid)
            existing.start()
        log.info("build_found_existing_domain", uuid=uuid)
        return existing.describe()
    domain_type = BUILD_DOMAIN_TYPES.get(ctx.config.libvirt.virt_type)
    if domain_type is None:
        raise NotSupported(f"building instances on virt_type {ctx.config.libvirt.virt_type} "
                           f"is not supported (only {', '.join(BUILD_DOMAIN_TYPES)})")
    instance = args["instance"]
    flavor = sizes(instance)
    mappings = _mappings(args)
    # Checked before anything is made: names, MACs, ports, bridges.
    vifs = network.build_vifs(ctx, args, uuid)
    # No domain has this UUID, so a directory left here is an earlier attempt of
    # this build that was killed part way: start again from nothing (its taps too).
    network.unplug_all(ctx, uuid)
    ctx.paths.remove_instance_dir(uuid)
    directory = ctx.paths.instance_dir(uuid)
    guest: Guest | None = None
    try:
        directory.mkdir(mode=0o700)
        disks = _disks(ctx, args, flavor, mappings, directory)
        interfaces = network.plug_for_build(ctx, uuid, vifs)
        spec = domain_xml.DomainSpec(
            name=instance.get("name") or f"instance-{uuid}", uuid=uuid,
            memory_mib=flavor.memory_mb, vcpus=flavor.vcpus, domain_type=domain_type,
            disks=tuple(disks), interfaces=interfaces,
            console_log=str(directory / consoles.CONSOLE_LOG),
            vnc_listen=ctx.config.vnc.server_listen)
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


@dataclass(frozen=True)
class Mappings:
    """A build's block device mapping, sorted by what the build does with each entry."""

    image_root: Args | None
    #: Volume mappings (destination volume, with nova's connection_info), boot volume first.
    volumes: tuple[Args, ...]

    @property
    def boots_from_volume(self) -> bool:
        """A volume has boot_index 0: the instance has no local root disk."""
        return bool(self.volumes) and self.volumes[0].get("boot_index") == 0


def _is_image_root(mapping: Args) -> bool:
    return (mapping.get("source_type") == "image" and mapping.get("destination_type") == "local"
            and mapping.get("boot_index") in (0, None))


def _mappings(args: Args) -> Mappings:
    root = None
    found: list[Args] = []
    for mapping in args.get("block_device_mapping") or []:
        if _is_image_root(mapping) and root is None:
            root = mapping
        elif mapping.get("destination_type") == "volume":
            if not mapping.get("connection_info"):
                # nova's compute gets it from cinder; this worker is handed it.
                raise NotSupported(
                    f"block_device_mapping: volume {mapping.get('volume_id')} has no "
                    "connection_info (this worker does not talk to cinder)")
            found.append(mapping)
        else:
            raise NotSupported(
                f"block_device_mapping: a {mapping.get('source_type')} -> "
                f"{mapping.get('destination_type')} mapping is not supported (the image root "
                "mapping and volumes with connection_info are; ephemeral and swap come from "
                "the flavor)")
    boot = [m for m in found if m.get("boot_index") == 0]
    if len(boot) + (root is not None and root.get("boot_index") == 0) > 1:
        raise NotSupported("block_device_mapping: more than one mapping has boot_index 0")
    return Mappings(image_root=None if boot else root,
                    volumes=tuple(boot + [m for m in found if m not in boot]))


def _image_id(args: Args, mappings: Mappings) -> str | None:
    image = args.get("image") or {}
    if image.get("id"):
        return str(image["id"])
    if mappings.image_root is not None and mappings.image_root.get("image_id"):
        return str(mappings.image_root["image_id"])
    return None


def _check_space(flavor: Sizes, directory: Path, base_size: int) -> None:
    """Refuse sizes the instances file system could never hold, before making anything.

    Disks are sparse, so a build needs little space now; but a disk larger
    than the whole file system's free space can only fail the guest later.
    """
    wanted = (max(flavor.root_gb * images.GIB, base_size) + flavor.ephemeral_gb * images.GIB
              + flavor.swap_mb * images.MIB)
    images.require_space(directory, wanted, "the flavor's disks")


def _disks(ctx: Context, args: Args, flavor: Sizes, mappings: Mappings,
           directory: Path) -> list[DiskSpec]:
    """Every disk of the new domain: local ones made now, volumes checked and named.

    Volumes that ask for a device name get it first, so the local disks take
    the free names around them, as nova's device naming does.
    """
    used: set[str] = set()
    volume_disks: list[DiskSpec] = []
    for index, mapping in enumerate(mappings.volumes):
        bus = volumes.bus_of(mapping)
        target = volumes.target_of(mapping.get("device_name"), bus)
        if target is None:
            continue
        if target in used:
            raise DevicePathInUse(f"The supplied device path ({target}) is in use.")
        used.add(target)
        boot = 1 if index == 0 and mappings.boots_from_volume else None
        volume_disks.append(volumes.volume_disk(ctx.config, mapping, target, boot_order=boot))
    for index, mapping in enumerate(mappings.volumes):
        bus = volumes.bus_of(mapping)
        if volumes.target_of(mapping.get("device_name"), bus) is None:
            target = volumes.next_free_target(used, bus)
            used.add(target)
            boot = 1 if index == 0 and mappings.boots_from_volume else None
            volume_disks.append(volumes.volume_disk(ctx.config, mapping, target,
                                                    boot_order=boot))
    return _local_disks(ctx, args, flavor, mappings, directory, used) + volume_disks


def _local_disks(ctx: Context, args: Args, flavor: Sizes, mappings: Mappings,
                 directory: Path, used: set[str]) -> list[DiskSpec]:
    disks: list[DiskSpec] = []

    def add(path: Path, fmt: str, boot: bool = False) -> None:
        target = volumes.next_free_target(used, "virtio")
        used.add(target)
        disks.append(DiskSpec("file", str(path), target, fmt=fmt,
                              boot_order=1 if boot else None))

    image_id = None if mappings.boots_from_volume else _image_id(args, mappings)
    cfg = ctx.config
    root_gb = 0 if mappings.boots_from_volume else flavor.root_gb
    # A flavor too big for this file system is refused before anything is made or cached.
    _check_space(flavor, directory, 0)
    if image_id is not None:
        cache = ImageCache(cfg.instances_path, cfg.images_path)
        with cache.base(image_id) as base:
            _check_space(flavor, directory, base.virtual_size)
            images.root_disk(directory / ROOT_DISK, root_gb, base.path, base.fmt,
                             cow=cfg.use_cow_images)
        add(directory / ROOT_DISK, "qcow2", boot=True)
    elif root_gb > 0:
        images.root_disk(directory / ROOT_DISK, root_gb, None)
        add(directory / ROOT_DISK, "qcow2", boot=True)
    # else diskless, or booting from a volume: no local root disk
    if flavor.ephemeral_gb > 0:
        images.ephemeral_disk(directory / EPHEMERAL_DISK, flavor.ephemeral_gb,
                              cfg.default_ephemeral_format)
        add(directory / EPHEMERAL_DISK, "raw")
    if flavor.swap_mb > 0:
        images.swap_disk(directory / SWAP_DISK, flavor.swap_mb)
        add(directory / SWAP_DISK, "raw")
    return disks


def _roll_back(ctx: Context, uuid: str, guest: Guest | None) -> None:
    """Undo a failed build; log (not raise) what cannot be undone, so the first error is kept.

    The instance's directory goes whoever made it: no domain had this UUID
    when the build began, so whatever the directory holds was left by an
    earlier attempt of the same build (killed after making its disk). The
    base image in the cache stays: other builds share it.
    """
    try:
        if guest is not None:
            if guest.is_active():
                guest.power_off()
            guest.undefine()
        network.unplug_all(ctx, uuid)
        ctx.paths.remove_instance_dir(uuid)
        log.warning("build_rolled_back", uuid=uuid)
    except Exception as exc:
        log.error("build_roll_back_incomplete", uuid=uuid, error=str(exc)[:200])

