"""A running domain's counters as nova's libvirt driver reads them for its diagnostics.

A companion of Guest (nova's guest.py has the same split): vCPU times, memory, and the
block and interface counters of the devices the live XML names. A counter the driver
cannot read is left out, as nova leaves it out; a domain that is gone, or libvirt gone,
is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lxml import etree

from worker.errors import HypervisorError
from worker.virt.guest import Guest


@dataclass(frozen=True)
class Nic:
    """An interface of the live XML: its MAC, and its host-side device if it has one."""

    mac: str | None
    target: str | None
    #: It has a <target> element (with or without a dev).
    has_target: bool = False


class GuestStats:
    """Reads one domain's counters; each method one libvirt call, None where unsupported."""

    def __init__(self, guest: Guest) -> None:
        self._guest = guest
        # Guest gives verbs short names; the counters are only read here, through its
        # error mapping (_call), so they need no verb of their own there.
        self._dom = guest._dom
        self._root = etree.fromstring(guest.xml().encode("utf-8"))

    def _read(self, fn: Any, *args: Any) -> Any:
        try:
            return self._guest._call(fn, *args)
        except HypervisorError:
            return None  # the driver has no such counter (or not for this device)

    def disk_targets(self) -> list[str]:
        """Target names of every disk (vda, sda, hdc, ...) in the live XML, in its order."""
        return [str(t.get("dev")) for t in self._root.iterfind("devices/disk/target")
                if t.get("dev")]

    def nics(self) -> list[Nic]:
        """Every interface of the live XML, in its order."""
        found = []
        for iface in self._root.iterfind("devices/interface"):
            mac, target = iface.find("mac"), iface.find("target")
            found.append(Nic(mac.get("address") if mac is not None else None,
                             target.get("dev") if target is not None else None,
                             target is not None))
        return found

    def vcpu_times(self) -> list[tuple[int, int]] | None:
        """(vCPU number, CPU time in ns) of each vCPU."""
        found = self._read(self._dom.vcpus)
        return None if found is None else [(int(v[0]), int(v[2])) for v in found[0]]

    def block_stats(self, target: str) -> tuple[int, int, int, int, int] | None:
        """(read requests, read bytes, write requests, write bytes, errors) of a disk."""
        found = self._read(self._dom.blockStats, target)
        if found is None:
            return None
        req_r, bytes_r, req_w, bytes_w, errors = (int(n) for n in found)
        return req_r, bytes_r, req_w, bytes_w, errors

    def interface_stats(self, target: str) -> tuple[int, ...] | None:
        """(rx bytes, rx packets, rx errors, rx drop, tx bytes, tx packets, tx errors, tx drop)."""
        found = self._read(self._dom.interfaceStats, target)
        return None if found is None else tuple(int(n) for n in found)

    def max_memory_kb(self) -> int:
        """The most memory the domain may have, KiB."""
        return int(self._guest._call(self._dom.maxMemory))

    def memory_stats(self) -> dict[str, int] | None:
        """The balloon's and QEMU's memory figures, KiB (actual, rss, ...)."""
        found = self._read(self._dom.memoryStats)
        return None if found is None else {str(k): int(v) for k, v in found.items()}


_DISK_KEYS = ("_read_req", "_read", "_write_req", "_write", "_errors")
_NIC_KEYS = ("_rx", "_rx_packets", "_rx_errors", "_rx_drop",
             "_tx", "_tx_packets", "_tx_errors", "_tx_drop")


def flat(guest: Guest) -> dict[str, int]:
    """nova's get_diagnostics dict: cpuN_time, <disk>_read..., <nic>_rx..., memory, memory-*."""
    stats = GuestStats(guest)
    out: dict[str, int] = {}
    for vcpu, ns in stats.vcpu_times() or []:
        out[f"cpu{vcpu}_time"] = ns
    for target in stats.disk_targets():
        block = stats.block_stats(target)
        if block is not None:
            out.update({target + key: value for key, value in zip(_DISK_KEYS, block, strict=True)})
    for nic in stats.nics():
        dev = nic.target
        counters = stats.interface_stats(dev) if dev else None
        if dev and counters is not None:
            out.update({dev + key: value for key, value in zip(_NIC_KEYS, counters, strict=True)})
    out["memory"] = stats.max_memory_kb()
    for key, value in (stats.memory_stats() or {}).items():
        out[f"memory-{key}"] = value
    return out


def details(guest: Guest) -> dict[str, Any]:
    """What nova's get_instance_diagnostics reads of a domain, as plain values.

    memory in MiB (the API's unit), cpus as (id, time ns), disks and nics as nova's
    DiskDiagnostics and NicDiagnostics fields.
    """
    stats = GuestStats(guest)
    info = guest.info()
    disks = []
    for target in stats.disk_targets():
        block = stats.block_stats(target)
        if block is not None:
            disks.append(dict(zip(("read_requests", "read_bytes", "write_requests",
                                   "write_bytes", "errors_count"), block, strict=True)))
    nics: list[dict[str, Any]] = []
    for nic in stats.nics():
        entry: dict[str, Any] = {"mac_address": nic.mac}
        counters = stats.interface_stats(nic.target) if nic.target else None
        if nic.has_target and counters is None:
            continue  # as nova: a nic with no target is listed bare, one unreadable not at all
        if counters is not None:
            entry.update(zip(("rx_octets", "rx_packets", "rx_errors", "rx_drop", "tx_octets",
                              "tx_packets", "tx_errors", "tx_drop"), counters, strict=True))
        nics.append(entry)
    return {"power_state": info["power_state"],
            "memory": {"maximum": info["max_mem_kb"] // 1024, "used": info["mem_kb"] // 1024},
            "cpus": stats.vcpu_times() or [], "disks": disks, "nics": nics}
