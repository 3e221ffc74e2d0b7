"""Networks: VIFs at build, attach_interface and detach_interface, unplug and replug.

An interface carries the user alias ``ua-<port id>``: that is how a detach (or a
redelivered attach) finds it again, in the running domain and in its definition, as a
volume's disk is found by its serial.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from handlers.common import Args, Result, find_guest, instance_uuid, unplug_live
from worker import logs
from worker.core.context import Context
from worker.core.methods import Answer
from worker.errors import (
    HypervisorError,
    InstanceInvalidState,
    InstanceNotFound,
    InterfaceAttachFailed,
    InterfaceDetachFailed,
    InvalidInput,
    WorkerError,
)
from worker.virt import interface_xml, vifs
from worker.virt.guest import Guest
from worker.virt.interface_xml import InterfaceSpec
from worker.virt.plugging import Plumbing
from worker.virt.vifs import Vif

log = logs.get(__name__)


def plumbing(ctx: Context) -> Plumbing:
    """What makes and removes taps, bridges and filters, for this context."""
    return Plumbing(ctx.hypervisor, ctx.config, ctx.paths)


def _mappings(ctx: Context) -> dict[str, str]:
    return vifs.parse_bridge_mappings(ctx.config.worker.bridge_mappings)


# --- build ------------------------------------------------------------------------------


def build_vifs(ctx: Context, args: Args, uuid: str) -> list[Vif]:
    """The build's VIFs, every one checked against this host; nothing is made yet."""
    found = vifs.vifs_of(args, uuid, _mappings(ctx))
    plumb = plumbing(ctx)
    for vif in found:
        plumb.check(uuid, vif)
    return found


def plug_for_build(ctx: Context, uuid: str, found: list[Vif]) -> tuple[InterfaceSpec, ...]:
    """Plug each VIF (the record is written as things are made) and say what libvirt gets."""
    plumb = plumbing(ctx)
    return tuple(plumb.interface(plumb.plug(uuid, vif)) for vif in found)


def unplug_all(ctx: Context, uuid: str, *, keep_record: bool = False) -> None:
    """Remove every tap, filter and emptied bridge the worker made for uuid; best effort.

    keep_record: the instance moved to a host that shares its directory (and record).
    """
    try:
        count = plumbing(ctx).unplug_all(uuid, keep_record=keep_record)
    except WorkerError as exc:
        log.error("vifs_not_unplugged", uuid=uuid, error=exc.message[:200])
        return
    if count:
        log.info("vifs_unplugged", uuid=uuid, count=count)


def replug(ctx: Context, uuid: str) -> None:
    """Make again the taps, bridges and filters uuid's VIFs lost, before the domain starts."""
    plumbing(ctx).replug(uuid)


def migrating_vifs(ctx: Context, uuid: str) -> list[dict[str, Any]]:
    """The instance's VIFs as a live migration hands them to the destination: nova's
    VIFMigrateData fields, the VIF itself (nova's network model entry) as source_vif."""
    return [{"port_id": entry.vif.id, "vif_type": entry.vif.type,
             "vnic_type": entry.vif.vnic_type, "source_vif": vifs.to_model(entry.vif)}
            for entry in plumbing(ctx).recorded(uuid)]


def plug_arriving(ctx: Context, uuid: str, given: Any) -> int:
    """Plug here the VIFs of an instance arriving by live migration; how many.

    given: the migrate data's vifs (ours, or nova's VIFMigrateData with its
    source_vif as JSON); each is checked as a build's VIF is.
    """
    plumb = plumbing(ctx)
    entries = given if isinstance(given, list) else []
    found = []
    for index, entry in enumerate(entries):
        model = entry.get("source_vif") if isinstance(entry, dict) else None
        if isinstance(model, str):
            try:
                model = json.loads(model)
            except ValueError:
                raise InvalidInput(f"vifs[{index}].source_vif is not JSON") from None
        vif = vifs.from_model(model, uuid, index, _mappings(ctx))
        plumb.check(uuid, vif)
        found.append(vif)
    for vif in found:
        plumb.plug(uuid, vif)
    return len(found)


def replug_host(ctx: Context) -> int:
    """At start: replug every instance with a VIF record (after a host reboot none survive)."""
    plumb = plumbing(ctx)
    made = 0
    for uuid in plumb.instances():
        try:
            ctx.hypervisor.guest(uuid)  # a record without a domain is left for terminate
            made += plumb.replug(uuid)
        except InstanceNotFound:
            continue
        except WorkerError as exc:
            log.error("vifs_not_replugged", uuid=uuid, error=exc.message[:200])
    return made


# --- attach and detach ------------------------------------------------------------------


def _refuse_suspended(guest: Guest, verb: str) -> None:
    if not guest.is_active() and guest.has_managed_save():
        raise InstanceInvalidState(f"cannot {verb} an interface while the instance is "
                                   "suspended")


def _vif_of(ctx: Context, args: Args, uuid: str) -> Vif:
    mappings = _mappings(ctx)
    if args.get("vif") is not None:
        vif = vifs.from_model(args["vif"], uuid, 0, mappings)
    else:
        request = {"network_id": args.get("network_id"), "port_id": args.get("port_id"),
                   "address": args.get("requested_ip")}
        if request["port_id"] is None and request["network_id"] is not None:
            # Stable across redeliveries: the same request names the same port.
            request["port_id"] = vifs.derive_port(
                uuid, str(request["network_id"]).lower(), hash_ip(args.get("requested_ip")))
        vif = vifs.from_request(request, uuid, 0, mappings)
    return replace(vif, tag=args.get("tag") if isinstance(args.get("tag"), str) else None)


def hash_ip(ip: Any) -> int:
    """A place number for derive_port from a requested IP (0 without one)."""
    return 0 if not isinstance(ip, str) else 1 + sum(ip.encode()) % 100000


def attach_interface(ctx: Context, args: Args) -> Answer:
    """Plug a VIF and add its interface: live and to the definition, the definition if off.

    Answers the VIF as nova's network model entry. An interface already there (its
    alias is) is success, not a second one: a redelivered attach finishes what is half
    done.
    """
    guest = find_guest(ctx, args)
    _refuse_suspended(guest, "attach")
    uuid = instance_uuid(args)
    vif = _vif_of(ctx, args, uuid)
    alias = vifs.alias(vif.id)
    active = guest.is_active()
    persistent = guest.persistent_xml()
    live = guest.xml() if active else None
    in_config = interface_xml.find_by_alias(persistent, alias)
    in_live = interface_xml.find_by_alias(live, alias) if live is not None else None
    if in_config is not None and (live is None or in_live is not None):
        log.info("interface_already_attached", port_id=vif.id)
        return Answer(guest.describe(), vifs.to_model(vif))
    fresh = in_config is None and in_live is None
    plumb = plumbing(ctx)
    if fresh:
        for xml in (persistent, live):
            if xml is not None and interface_xml.by_mac(xml, vif.address) is not None:
                raise InvalidInput(f"MAC address {vif.address} is already on the instance")
        plumb.check(uuid, vif)
    plugged = plumb.plug(uuid, vif)
    xml = interface_xml.to_string(interface_xml.interface(plumb.interface(plugged)))
    try:
        if in_config is None:
            guest.attach_device(xml, live=live is not None and in_live is None)
        else:
            guest.attach_device_live_only(xml)
    except HypervisorError as exc:
        if fresh:
            plumb.unplug(uuid, plugged)
        raise InterfaceAttachFailed(f"Failed to attach network adapter device to {uuid}: "
                                    f"{exc.message}") from None
    log.info("interface_attached", port_id=vif.id, type=vif.type, devname=vif.devname,
             live=live is not None)
    return Answer(guest.describe(), vifs.to_model(vif))


def detach_interface(ctx: Context, args: Args) -> Result:
    """Remove the interface of port_id from the definition, then from the running guest,
    then what the worker made for it. A port that is not attached is success."""
    guest = find_guest(ctx, args)
    _refuse_suspended(guest, "detach")
    uuid = instance_uuid(args)
    port = vifs.check_id(args.get("port_id"), "port id")
    alias = vifs.alias(port)
    in_config = interface_xml.find_by_alias(guest.persistent_xml(), alias)
    if in_config is not None:
        guest.remove_device_from_definition(interface_xml.to_string(in_config))
    in_live = (interface_xml.find_by_alias(guest.xml(), alias) if guest.is_active()
               else None)
    if in_live is not None:
        _unplug(ctx, guest, alias)
    plumb = plumbing(ctx)
    entry = next((e for e in plumb.recorded(uuid) if e.vif.id == port), None)
    if entry is not None:
        plumb.unplug(uuid, entry)
    if in_config is None and in_live is None and entry is None:
        log.info("interface_already_detached", port_id=port)
    else:
        log.info("interface_detached", port_id=port)
    return guest.describe()


def _still_plugged(guest: Guest, alias: str) -> bool:
    return guest.is_active() and interface_xml.find_by_alias(guest.xml(), alias) is not None


def _unplug(ctx: Context, guest: Guest, alias: str) -> None:
    """Unplug the live interface with nova's retries; InterfaceDetachFailed after the last."""
    failed = unplug_live(ctx, guest, alias, lambda: _still_plugged(guest, alias))
    if failed is not None:
        raise InterfaceDetachFailed(f"Failed to detach network adapter device from "
                                    f"{guest.uuid}: {failed}")
