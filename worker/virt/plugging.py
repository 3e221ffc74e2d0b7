"""Plugging VIFs: the taps, bridges and nwfilters a VIF needs, and the record of what was made.

What the worker made for an instance is kept in ``instances_path/<uuid>/vifs.json``
(one entry per VIF: nova's model entry, and which tap, bridge flag and filter the worker
made), so terminate and replug know it without trusting a message. A bridge the worker
made is marked by ``instances_path/_bridges/<name>``: it goes when the last interface
leaves it and no instance's record still names it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from worker import logs
from worker.config import Config
from worker.errors import InvalidInput, NetworkNotFoundForBridge, WorkerError
from worker.virt import interface_xml, netdev, vifs
from worker.virt.hypervisor import Hypervisor
from worker.virt.interface_xml import FilterSpec, InterfaceSpec
from worker.virt.paths import InstancePaths
from worker.virt.vifs import Vif

log = logs.get(__name__)
RECORD = "vifs.json"
BRIDGE_MARKS = "_bridges"


@dataclass(frozen=True)
class Plugged:
    """One VIF as recorded: the VIF, and what the worker made for it."""

    vif: Vif
    made_tap: bool = False
    filter: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record entry."""
        return {"vif": vifs.to_model(self.vif), "tag": self.vif.tag,
                "made": {"tap": self.made_tap, "filter": self.filter}}

    @staticmethod
    def from_json(uuid: str, entry: dict[str, Any]) -> Plugged:
        """An entry read back (checked again: a record is a file, not a promise)."""
        vif = vifs.from_model(entry["vif"], uuid, 0, {})
        made = entry.get("made") or {}
        name = made.get("filter")
        return Plugged(replace(vif, tag=entry.get("tag")), bool(made.get("tap")),
                       vifs.filter_name(vif.id) if name else None)


class Plumbing:
    """Makes and removes what VIFs need on this host; keeps each instance's record."""

    def __init__(self, hypervisor: Hypervisor, config: Config, paths: InstancePaths) -> None:
        self.hypervisor = hypervisor
        self.config = config
        self.paths = paths

    # --- records --------------------------------------------------------------------

    def _record_path(self, uuid: str) -> Path:
        return self.paths.instance_dir(uuid) / RECORD

    def recorded(self, uuid: str) -> list[Plugged]:
        """What the record of instance uuid says was plugged (empty without a record)."""
        try:
            raw = json.loads(self._record_path(uuid).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("vif_record_unreadable", uuid=uuid, error=str(exc)[:200])
            return []
        found = []
        for entry in raw.get("vifs", []) if isinstance(raw, dict) else []:
            try:
                found.append(Plugged.from_json(uuid, entry))
            except (WorkerError, KeyError, TypeError) as exc:
                log.warning("vif_record_entry_skipped", uuid=uuid, error=str(exc)[:200])
        return found

    def _write(self, uuid: str, entries: list[Plugged]) -> None:
        path = self._record_path(uuid)
        if not path.parent.is_dir():
            return  # the instance's directory is gone (terminated): nothing to keep
        staged = path.with_name(f".{RECORD}.part")
        staged.write_text(json.dumps({"vifs": [e.to_json() for e in entries]}, indent=1),
                          encoding="utf-8")
        os.replace(staged, path)

    def _remember(self, uuid: str, plugged: Plugged) -> None:
        # A domain the worker did not build (defined by hand) has no directory yet.
        self.paths.instance_dir(uuid).mkdir(mode=0o700, exist_ok=True)
        kept = [e for e in self.recorded(uuid) if e.vif.id != plugged.vif.id]
        self._write(uuid, [*kept, plugged])

    def _forget(self, uuid: str, port: str) -> None:
        self._write(uuid, [e for e in self.recorded(uuid) if e.vif.id != port])

    # --- checks before anything is made ----------------------------------------------

    def check(self, uuid: str, vif: Vif) -> None:
        """Refuse a VIF this host cannot plug, before anything is made for it."""
        for other in self._instances():
            if other != uuid and any(e.vif.devname == vif.devname
                                     for e in self.recorded(other)):
                raise InvalidInput(f"devname {vif.devname} is instance {other}'s")
        if vif.type == "bridge" and vif.bridge is not None:
            if netdev.exists(vif.bridge):
                found = netdev.kind(vif.bridge)
                if found != "bridge":
                    raise InvalidInput(f"{vif.bridge} exists and is a {found or 'plain link'}, "
                                       "not a bridge")
            elif not self.config.worker.manage_bridges:
                raise NetworkNotFoundForBridge(
                    f"Network could not be found for bridge {vif.bridge}")
        if vif.devname is not None and netdev.exists(vif.devname):
            # A link of that name that we did not make: never hand it over or remove it.
            if not (vif.is_tap and netdev.kind(vif.devname) == "tun"):
                raise InvalidInput(f"devname {vif.devname} is already in use on this host")

    # --- plug and unplug --------------------------------------------------------------

    def plug(self, uuid: str, vif: Vif) -> Plugged:
        """Make the bridge, tap and filter vif needs; record each as it is made."""
        prior = next((e for e in self.recorded(uuid) if e.vif.id == vif.id), None)
        with netdev.BRIDGES:
            # The record names the bridge before the lock goes: no unplug removes it now.
            plugged = Plugged(vif, made_tap=prior is not None and prior.made_tap)
            self._remember(uuid, plugged)
            if vif.type == "bridge" and vif.bridge is not None and not netdev.exists(vif.bridge):
                if not self.config.worker.manage_bridges:
                    raise NetworkNotFoundForBridge(
                        f"Network could not be found for bridge {vif.bridge}")
                netdev.make_bridge(vif.bridge)
                self._mark_bridge(vif.bridge)
        if vif.is_tap and vif.devname is not None:
            made = netdev.make_tap(vif.devname)
            plugged = replace(plugged, made_tap=made or plugged.made_tap)
            self._remember(uuid, plugged)
        if self.config.firewall_driver == "nwfilter":
            self.hypervisor.define_nwfilter(interface_xml.to_string(
                interface_xml.nwfilter(self.filter_spec(vif))))
            plugged = replace(plugged, filter=vifs.filter_name(vif.id))
            self._remember(uuid, plugged)
        return plugged

    def unplug(self, uuid: str, plugged: Plugged, *, keep_record: bool = False) -> None:
        """Remove what the worker made for one VIF (tap, filter, an emptied bridge).

        keep_record: the instance lives on in a directory another host shares (it
        moved there), whose worker plugs the same VIFs from the same record.
        """
        vif = plugged.vif
        if plugged.made_tap and vif.devname is not None:
            netdev.remove(vif.devname)
        if plugged.filter is not None:
            try:
                self.hypervisor.undefine_nwfilter(plugged.filter)
            except WorkerError as exc:
                log.warning("nwfilter_not_removed", filter=plugged.filter, error=exc.message)
        if not keep_record:
            self._forget(uuid, vif.id)
        if vif.type == "bridge" and vif.bridge is not None and not keep_record:
            self._drop_bridge_if_unused(vif.bridge)
        log.info("vif_unplugged", port_id=vif.id, devname=vif.devname)

    def unplug_all(self, uuid: str, *, keep_record: bool = False) -> int:
        """Unplug every VIF the record of uuid names; how many."""
        entries = self.recorded(uuid)
        for entry in entries:
            self.unplug(uuid, entry, keep_record=keep_record)
        return len(entries)

    def replug(self, uuid: str) -> int:
        """Make again what a recorded VIF needs and lost (a host reboot removes it all)."""
        count = 0
        for entry in self.recorded(uuid):
            vif = entry.vif
            if vif.type == "bridge" and vif.bridge is not None and not netdev.exists(vif.bridge):
                if self._bridge_marked(vif.bridge) or self.config.worker.manage_bridges:
                    with netdev.BRIDGES:
                        netdev.make_bridge(vif.bridge)
                        self._mark_bridge(vif.bridge)
                    count += 1
            if entry.made_tap and vif.devname is not None and not netdev.exists(vif.devname):
                netdev.make_tap(vif.devname)
                count += 1
            if entry.filter is not None and not self.hypervisor.has_nwfilter(entry.filter):
                self.hypervisor.define_nwfilter(interface_xml.to_string(
                    interface_xml.nwfilter(self.filter_spec(vif))))
                count += 1
        if count:
            log.info("vifs_replugged", uuid=uuid, made=count)
        return count

    # --- bridges the worker made ------------------------------------------------------

    def _mark(self, bridge: str) -> Path:
        return self.paths.root / BRIDGE_MARKS / vifs.check_ifname(bridge, "bridge")

    def _mark_bridge(self, bridge: str) -> None:
        mark = self._mark(bridge)
        mark.parent.mkdir(mode=0o700, exist_ok=True)
        mark.touch()

    def _bridge_marked(self, bridge: str) -> bool:
        return self._mark(bridge).exists()

    def _drop_bridge_if_unused(self, bridge: str) -> None:
        with netdev.BRIDGES:
            if not self._bridge_marked(bridge) or netdev.ports(bridge):
                return
            if any(e.vif.bridge == bridge and e.vif.type == "bridge"
                   for uuid in self._instances() for e in self.recorded(uuid)):
                return
            netdev.remove(bridge)
            self._mark(bridge).unlink(missing_ok=True)

    def _instances(self) -> list[str]:
        found = []
        for child in self.paths.root.iterdir():
            try:
                found.append(vifs.check_id(child.name, "instance"))
            except InvalidInput:
                continue
        return [u for u in found if (self.paths.root / u / RECORD).exists()]

    def instances(self) -> list[str]:
        """Every instance with a VIF record on this host."""
        return self._instances()

    # --- XML --------------------------------------------------------------------------

    def filter_spec(self, vif: Vif) -> FilterSpec:
        """The per-VIF nwfilter: clean-traffic and the same-subnet rules."""
        return FilterSpec(vifs.filter_name(vif.id),
                          tuple(s.cidr for s in vif.subnets if s.cidr),
                          tuple(s.gateway for s in vif.subnets if s.gateway),
                          allow_same_net=self.config.allow_same_net_traffic)

    def interface(self, plugged: Plugged) -> InterfaceSpec:
        """The <interface> spec libvirt gets for a plugged VIF."""
        vif = plugged.vif
        kind = "ethernet" if vif.is_tap else vif.type
        params = tuple(("IP", ip) for ip in vif.fixed_ips if ":" not in ip)
        return InterfaceSpec(
            kind=kind, mac=vif.address, source=vif.bridge, target=vif.devname,
            model="virtio" if self.config.libvirt.use_virtio_for_bridges else None,
            alias=vifs.alias(vif.id), filter=plugged.filter, filter_params=params)
