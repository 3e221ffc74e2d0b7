"""Volumes: reserve a device name, attach a volume's disk, detach it the way nova does.

A volume's disk carries the volume id as its <serial>: that is how a detach (or a
redelivered attach) finds it again, in the running domain and in its definition.
"""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from handlers.common import Args, Result, find_guest, instance_uuid, unplug_live
from worker import logs
from worker.core.context import Context
from worker.errors import (
    DeviceDetachFailed,
    DevicePathInUse,
    InstanceInvalidState,
    InvalidVolume,
    NotSupported,
)
from worker.virt import disk_xml, domain_xml, volumes
from worker.virt.guest import Guest

log = logs.get(__name__)

#: The instance's root disk name, never handed to a volume (nova keeps root_device_name).
ROOT_TARGET = "vda"
#: nova's object version of the BlockDeviceMapping reserve_block_device_name returns.
BDM_VERSION = "1.21"
#: A reservation nobody attached within this long is forgotten (nova drops its BDM too
#: when the attach fails; without a database we only learn by time).
RESERVATION_SECONDS = 3600.0


@dataclass(frozen=True)
class Reservation:
    """A device name handed to one volume of one instance, not yet attached."""

    target: str
    bdm_uuid: str
    at: float


class Reservations:
    """Names handed out and not attached yet, per instance, so none is handed out twice.

    In memory only: a worker restart forgets them, and a name reserved before the
    restart may be handed out again until its attach arrives (which then fails with
    DevicePathInUse if another volume took the name first).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._by_instance: dict[str, dict[str, Reservation]] = {}

    def _live(self, instance: str, now: float) -> dict[str, Reservation]:
        # Called with the lock held; drops what has expired.
        kept = {v: r for v, r in self._by_instance.get(instance, {}).items()
                if now - r.at < RESERVATION_SECONDS}
        if kept:
            self._by_instance[instance] = kept
        else:
            self._by_instance.pop(instance, None)
        return kept

    def of(self, instance: str) -> dict[str, Reservation]:
        """volume id -> reservation, for one instance."""
        with self._lock:
            return dict(self._live(instance, self._clock()))

    def reserve(self, instance: str, volume: str, target: str) -> Reservation:
        """Keep target for volume; the caller has checked it is free."""
        with self._lock:
            now = self._clock()
            self._live(instance, now)
            made = Reservation(target, str(uuidlib.uuid4()), now)
            self._by_instance.setdefault(instance, {})[volume] = made
            return made

    def release(self, instance: str, volume: str) -> None:
        """Forget volume's reservation (it is attached, detached or failed)."""
        with self._lock:
            held = self._by_instance.get(instance)
            if held is not None:
                held.pop(volume, None)
                if not held:
                    del self._by_instance[instance]

    def forget(self, instance: str) -> None:
        """Drop every reservation of an instance (it is terminated)."""
        with self._lock:
            self._by_instance.pop(instance, None)


#: One per process: every worker in it serves its own instances (UUIDs do not collide).
RESERVATIONS = Reservations()


def _refuse_suspended(guest: Guest, verb: str) -> None:
    """nova allows no volume change on a suspended instance: the restore would bring back
    the devices its saved memory knows, not the definition's."""
    if not guest.is_active() and guest.has_managed_save():
        raise InstanceInvalidState(f"cannot {verb} a volume while the instance is suspended")


def _xmls(guest: Guest) -> tuple[str, str | None]:
    """The definition, and the live XML when the domain runs."""
    return guest.persistent_xml(), (guest.xml() if guest.is_active() else None)


def _used(persistent: str, live: str | None) -> set[str]:
    used = disk_xml.targets(persistent)
    if live is not None:
        used |= disk_xml.targets(live)
    return used


def _reserved_by_others(instance: str, volume: str) -> set[str]:
    return {r.target for v, r in RESERVATIONS.of(instance).items() if v != volume}


def reserve_block_device_name(ctx: Context, args: Args) -> dict[str, Any]:
    """The next free device name (or the one asked for, if free), kept until the attach.

    Returns nova's BlockDeviceMapping primitive, as nova's compute manager does.
    """
    guest = find_guest(ctx, args)
    uuid = instance_uuid(args)
    bus = volumes.bus_of(args)
    if args.get("device_type") not in (None, "disk"):
        raise NotSupported(f"device_type {args.get('device_type')!r:.40} is not supported "
                           "for volumes (only disk)")
    if args.get("multiattach"):
        raise NotSupported("multiattach volumes are not supported")
    volume = volumes.volume_id(args)
    persistent, live = _xmls(guest)
    if any(disk_xml.by_serial(x, volume) is not None for x in (persistent, live) if x):
        raise InvalidVolume(f"Invalid volume: volume {volume} already attached")
    if volume in RESERVATIONS.of(uuid):
        raise InvalidVolume(f"Invalid volume: volume {volume} already has a device name "
                            "reserved")
    used = _used(persistent, live) | _reserved_by_others(uuid, volume) | {ROOT_TARGET}
    asked = volumes.target_of(args.get("device"), bus)
    if asked is not None and asked in used:
        raise DevicePathInUse(f"The supplied device path (/dev/{asked}) is in use.")
    target = asked or volumes.next_free_target(used, bus)
    made = RESERVATIONS.reserve(uuid, volume, target)
    log.info("device_name_reserved", volume_id=volume, device=f"/dev/{target}")
    return bdm_primitive(args, uuid, volume, target, bus, made.bdm_uuid)


def bdm_primitive(args: Args, uuid: str, volume: str, target: str, bus: str,
                   bdm_uuid: str) -> dict[str, Any]:
    """nova's BlockDeviceMapping primitive for a new volume mapping, as nova creates it."""
    data = {
        "uuid": bdm_uuid, "instance_uuid": uuid, "volume_id": volume,
        "source_type": "volume", "destination_type": "volume",
        "device_name": f"/dev/{target}", "disk_bus": bus,
        "device_type": args.get("device_type") or "disk", "tag": args.get("tag"),
        "boot_index": None, "guest_format": None, "delete_on_termination": False,
    }
    return {"nova_object.name": "BlockDeviceMapping", "nova_object.namespace": "nova",
            "nova_object.version": BDM_VERSION, "nova_object.data": data}


def attach_volume(ctx: Context, args: Args) -> Result:
    """Attach bdm's volume: live and to the definition when running, the definition if not.

    A volume already attached (its serial is there) is success, not a second disk:
    a redelivered attach must not fail or double the disk.
    """
    guest = find_guest(ctx, args)
    _refuse_suspended(guest, "attach")
    uuid = instance_uuid(args)
    bdm: dict[str, Any] = args["bdm"]
    bus = volumes.bus_of(bdm)
    volume = volumes.volume_id(bdm)
    persistent, live = _xmls(guest)
    in_config = disk_xml.by_serial(persistent, volume)
    in_live = disk_xml.by_serial(live, volume) if live is not None else None
    if in_config is not None and (live is None or in_live is not None):
        RESERVATIONS.release(uuid, volume)
        log.info("volume_already_attached", volume_id=volume)
        return guest.describe()
    existing = in_config if in_config is not None else in_live
    half_done = None if existing is None else existing.find("target")
    if half_done is not None:
        # Half done before (one side has it): finish the other side under the same name.
        target = str(half_done.get("dev"))
    else:
        target = _pick_target(uuid, volume, bdm, bus, _used(persistent, live))
    spec = volumes.volume_disk(ctx.config, bdm, target)
    xml = domain_xml.to_string(disk_xml.disk(spec))
    to_config, to_live = in_config is None, live is not None and in_live is None
    if bus == "scsi":
        _ensure_scsi_controller(guest, persistent if to_config else None,
                                live if to_live else None)
    if to_config:
        guest.attach_device(xml, live=to_live)
    else:
        guest.attach_device_live_only(xml)
    RESERVATIONS.release(uuid, volume)
    log.info("volume_attached", volume_id=volume, device=f"/dev/{target}", bus=bus,
             kind=spec.kind, live=to_live)
    return guest.describe()


def _pick_target(uuid: str, volume: str, bdm: dict[str, Any], bus: str,
                 used: set[str]) -> str:
    """bdm.device_name when free, else this volume's reservation, else the next free name."""
    taken = used | _reserved_by_others(uuid, volume)
    asked = volumes.target_of(bdm.get("device_name"), bus)
    if asked is not None:
        if asked in taken:
            raise DevicePathInUse(f"The supplied device path (/dev/{asked}) is in use.")
        return asked
    mine = RESERVATIONS.of(uuid).get(volume)
    if mine is not None and mine.target not in taken and mine.target.startswith(
            disk_xml.BUS_PREFIXES[bus]):
        return mine.target
    return volumes.next_free_target(taken | {ROOT_TARGET}, bus)


def _ensure_scsi_controller(guest: Guest, persistent: str | None, live: str | None) -> None:
    """A virtio-scsi controller where a scsi disk is about to go and none is (libvirt
    would add QEMU's slow lsi one)."""
    controller = domain_xml.to_string(disk_xml.scsi_controller())
    need_config = persistent is not None and not disk_xml.has_scsi_controller(persistent)
    need_live = live is not None and not disk_xml.has_scsi_controller(live)
    if need_config:
        guest.attach_device(controller, live=need_live)
    elif need_live:
        guest.attach_device_live_only(controller)


def detach_volume(ctx: Context, args: Args) -> Result:
    """Detach the volume's disk from the definition, then from the running guest.

    The live part follows nova: ask for the unplug, wait device_detach_timeout for
    libvirt's device-removed event, ask again up to device_detach_attempts times,
    then DeviceDetachFailed (the disk stays in the running guest, gone from the
    definition, as nova leaves it). A volume that is not attached is success.
    """
    guest = find_guest(ctx, args)
    _refuse_suspended(guest, "detach")
    volume = volumes.volume_id(args)
    RESERVATIONS.release(instance_uuid(args), volume)
    in_config = disk_xml.by_serial(guest.persistent_xml(), volume)
    if in_config is not None:
        guest.remove_device_from_definition(domain_xml.to_string(in_config))
    in_live = disk_xml.by_serial(guest.xml(), volume) if guest.is_active() else None
    if in_live is not None:
        _unplug(ctx, guest, volume, in_live)
    if in_config is None and in_live is None:
        log.info("volume_already_detached", volume_id=volume)
    else:
        log.info("volume_detached", volume_id=volume)
    return guest.describe()


def _still_plugged(guest: Guest, volume: str) -> bool:
    return guest.is_active() and disk_xml.by_serial(guest.xml(), volume) is not None


def _unplug(ctx: Context, guest: Guest, volume: str, disk: Any) -> None:
    """Unplug a live disk with nova's retries; DeviceDetachFailed after the last."""
    name = disk_xml.alias(disk)
    if name is None:
        raise DeviceDetachFailed(f"Device detach failed for {volume}: the running domain "
                                 "names no alias for its disk")
    failed = unplug_live(ctx, guest, name, lambda: _still_plugged(guest, volume),
                         volume_id=volume)
    if failed is not None:
        raise DeviceDetachFailed(f"Device detach failed for {name}: {failed}")
