"""This host's capacity and use, as nova's libvirt driver reports them.

``resources()`` is nova's ``get_available_resource`` dict, ``cpu_stats()`` what nova's
``cpu.virt_driver`` monitor samples, ``uptime()`` nova's ``get_host_uptime``. A companion
of the Hypervisor (it asks libvirt through it, so errors are mapped in one place).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import libvirt
from lxml import etree

from worker import logs
from worker.errors import HypervisorError, InstanceNotFound, NotSupported
from worker.virt.hypervisor import Hypervisor

log = logs.get(__name__)
GiB = 1 << 30
_QCOW2_MAGIC = b"QFI\xfb"

# nova 34's names (nova/objects/fields.py): a triple nova cannot name is left out, as
# nova's _get_instance_capabilities leaves out an architecture it does not know.
ARCHITECTURES = frozenset((
    "alpha", "armv6", "armv7l", "armv7b", "aarch64", "cris", "i686", "ia64", "lm32", "m68k",
    "microblaze", "microblazeel", "mips", "mipsel", "mips64", "mips64el", "openrisc",
    "parisc", "parisc64", "ppc", "ppcle", "ppc64", "ppc64le", "ppcemb", "s390", "s390x",
    "sh4", "sh4eb", "sparc", "sparc64", "unicore32", "x86_64", "xtensa", "xtensaeb"))
HV_TYPES = frozenset((
    "baremetal", "bhyve", "docker", "fake", "hyperv", "ironic", "kqemu", "kvm", "lxc", "lxd",
    "openvz", "parallels", "phyp", "qemu", "test", "uml", "vbox", "vz", "vmware", "xen", "zvm",
    "prsm"))
VM_MODES = frozenset(("hvm", "xen", "uml", "exe"))
_ARCH_ALIASES = {"i386": "i686", "i486": "i686", "i586": "i686", "x86_32": "i686",
                 "x86_32p": "i686", "amd64": "x86_64"}
_VM_MODE_ALIASES = {"pv": "xen", "hv": "hvm", "baremetal": "hvm"}


def canonical_instance_type(arch: str, hv_type: str, vm_mode: str) -> list[str] | None:
    """[arch, hv_type, vm_mode] canonicalized as nova's fields do; None when nova has no name."""
    arch = _ARCH_ALIASES.get(arch.lower(), arch.lower())
    hv_type = "xen" if hv_type.lower() == "xapi" else hv_type.lower()
    vm_mode = _VM_MODE_ALIASES.get(vm_mode.lower(), vm_mode.lower())
    if arch in ARCHITECTURES and hv_type in HV_TYPES and vm_mode in VM_MODES:
        return [arch, hv_type, vm_mode]
    return None


def cpu_info(caps: etree._Element) -> dict[str, Any]:
    """nova's _get_cpu_info from libvirt's capabilities: host/cpu and the NUMA cell count."""
    cpu = caps.find("host/cpu")
    if cpu is None:
        cpu = etree.Element("cpu")
    topology = cpu.find("topology")

    def number(name: str) -> int | None:
        value = topology.get(name) if topology is not None else None
        return int(value) if value is not None else None

    cells = caps.find("host/topology")
    info: dict[str, Any] = {
        "arch": cpu.findtext("arch"), "model": cpu.findtext("model"),
        "vendor": cpu.findtext("vendor"),
        # nova: len(getattr(caps.host.topology, 'cells', [1])): 1 without a NUMA topology.
        "topology": {"cells": len(cells.findall("cells/cell")) if cells is not None else 1,
                     "sockets": number("sockets"), "cores": number("cores"),
                     "threads": number("threads")},
    }
    phys = cpu.find("maxphysaddr")
    if phys is not None:
        bits = phys.get("bits")
        info["maxphysaddr"] = {"mode": phys.get("mode"),
                               "bits": int(bits) if bits is not None else None}
    # nova sends a set (as a JSON list in no particular order); sorted here.
    info["features"] = sorted({str(f.get("name")) for f in cpu.iterfind("feature")
                               if f.get("name")})
    return info


def supported_instances(caps: etree._Element) -> list[list[str]]:
    """nova's _get_instance_capabilities: [arch, hv_type, vm_mode] for each guest domain."""
    found = []
    for guest in caps.iterfind("guest"):
        arch = guest.find("arch")
        if arch is None:
            continue
        # nova keys a guest's domains by type: a type listed twice counts once.
        types = dict.fromkeys(str(d.get("type")) for d in arch.iterfind("domain") if d.get("type"))
        for hv_type in types:
            triple = canonical_instance_type(str(arch.get("name", "")), hv_type,
                                             guest.findtext("os_type") or "")
            if triple is not None:
                found.append(triple)
    return found


def fs_info(path: str) -> dict[str, int]:
    """nova's get_fs_info: total, free (to unprivileged users) and used bytes of path's FS."""
    st = os.statvfs(path)
    return {"total": st.f_frsize * st.f_blocks, "free": st.f_frsize * st.f_bavail,
            "used": st.f_frsize * (st.f_blocks - st.f_bfree)}


def available_memory_kb(meminfo: str = "/proc/meminfo") -> int:
    """MemFree + Buffers + Cached in KiB: what nova's host counts as available."""
    fields = Path(meminfo).read_text().split()
    return sum(int(fields[fields.index(key) + 1]) for key in ("MemFree:", "Buffers:", "Cached:"))


def over_committed_bytes(xml: str) -> int:
    """nova's over_committed_disk_size summed over a domain's local file disks.

    qcow2: its virtual size less what it holds (never below 0); raw: its size less what it
    holds. A volume (a disk with a serial: how the worker marks volumes, as nova does) and
    any disk not a plain file are left out, as nova leaves out volumes.
    """
    total = 0
    for disk in etree.fromstring(xml.encode("utf-8")).iterfind("devices/disk"):
        source = disk.find("source")
        if (disk.get("type") != "file" or disk.get("device", "disk") != "disk"
                or disk.find("serial") is not None or source is None or not source.get("file")):
            continue
        driver = disk.find("driver")
        fmt = (driver.get("type") if driver is not None else None) or "raw"
        path = str(source.get("file"))
        try:
            st = os.stat(path)
            held = st.st_blocks * 512
            if fmt == "qcow2":
                with open(path, "rb") as handle:
                    header = handle.read(32)
                if header[:4] != _QCOW2_MAGIC:
                    continue
                total += max(0, int.from_bytes(header[24:32], "big") - held)
            elif fmt == "raw":
                total += st.st_size - held
        except FileNotFoundError:
            continue  # removed by a terminate running beside us (or never there)
        except OSError as exc:
            log.warning("disk_size_unreadable", path=path, error=exc.strerror)
    return total


def uptime(timeout: float = 10.0) -> str:
    """nova's get_host_uptime: the output of ``env LANG=C uptime``, run without a shell."""
    found = shutil.which("uptime")
    if found is None:
        raise NotSupported("uptime is not installed (Debian package procps)")
    try:
        done = subprocess.run([found], capture_output=True, text=True, timeout=timeout,
                              check=False, env={**os.environ, "LANG": "C", "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise HypervisorError(f"uptime took longer than {timeout:.0f}s") from None
    if done.returncode != 0:
        raise HypervisorError(f"uptime failed: {done.stderr.strip()[:200]}")
    return done.stdout


class HostInfo:
    """Capacity and use of the host behind one Hypervisor's connection."""

    def __init__(self, hypervisor: Hypervisor) -> None:
        self._hv = hypervisor

    def _domains(self, conn: libvirt.virConnect, flags: int = 0
                 ) -> list[tuple[libvirt.virDomain, str]]:
        with self._hv.guard(None, conn):
            return [(dom, str(dom.UUIDString())) for dom in conn.listAllDomains(flags)]

    def resources(self, instances_path: str) -> dict[str, Any]:
        """nova's get_available_resource dict (no uuid, no stats): see README."""
        disk = fs_info(instances_path)
        with self._hv.calls() as conn:
            caps = etree.fromstring(conn.getCapabilities().encode("utf-8"))
            _model, memory_mb, cpus, _mhz, *_ = conn.getInfo()
            hv_type = str(conn.getType())
            data: dict[str, Any] = {
                "supported_instances": supported_instances(caps),
                "vcpus": int(cpus),
                "memory_mb": int(memory_mb),
                "local_gb": disk["total"] // GiB,
                "vcpus_used": self._vcpus_used(conn),
                "memory_mb_used": self._memory_mb_used(conn, int(memory_mb), hv_type),
                "local_gb_used": disk["used"] // GiB,
                "hypervisor_type": hv_type,
                "hypervisor_version": int(conn.getVersion()),
                "hypervisor_hostname": str(conn.getHostname()),
                "cpu_info": json.dumps(cpu_info(caps)),
            }
            least = disk["free"] - self._over_committed(conn)
            # int() as nova's ComputeNode stores it: towards zero.
            data["disk_available_least"] = int(least / GiB)
        data["pci_passthrough_devices"] = "[]"
        data["numa_topology"] = None
        return data

    def _vcpus_used(self, conn: libvirt.virConnect) -> int:
        """vCPUs of running domains; 1 for one whose vCPUs cannot be read, as nova counts."""
        total = 0
        for dom, uuid in self._domains(conn, libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                with self._hv.guard(uuid, conn):
                    total += len(dom.vcpus()[0])
            except (HypervisorError, InstanceNotFound):
                total += 1
        return total

    def _memory_mb_used(self, conn: libvirt.virConnect, total_mb: int, hv_type: str) -> int:
        """nova's: total less MemFree, Buffers and Cached of this machine.

        libvirt's test driver is no machine: there, its running domains' memory.
        """
        if hv_type != "TEST":
            return total_mb - available_memory_kb() // 1024
        used_kb = 0
        for dom, uuid in self._domains(conn, libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                with self._hv.guard(uuid, conn):
                    used_kb += int(dom.info()[2])
            except (HypervisorError, InstanceNotFound):
                continue
        return used_kb // 1024

    def _over_committed(self, conn: libvirt.virConnect) -> int:
        """Bytes every domain's local disks may still grow by (nova's disk over-commit)."""
        total = 0
        for dom, uuid in self._domains(conn):
            try:
                with self._hv.guard(uuid, conn):
                    xml = str(dom.XMLDesc(0))
            except (HypervisorError, InstanceNotFound):
                continue  # undefined while we looked
            total += over_committed_bytes(xml)
        return total

    def cpu_stats(self) -> dict[str, int]:
        """Node CPU times over all CPUs (ns: user, kernel, idle, iowait) and MHz (frequency)."""
        with self._hv.calls() as conn:
            stats = {str(k): int(v) for k, v in
                     conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS, 0).items()}
            stats["frequency"] = int(conn.getInfo()[3])
        return stats

