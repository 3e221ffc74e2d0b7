"""Live migration with libvirt: flags, URIs, the running job, and the disks a block copy needs.

Peer to peer, as nova and the 2011 driver do it: the source's libvirtd opens
the destination's libvirt itself and drives both QEMUs; the worker makes one
call (migrateToURI3) and watches the job from beside it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import libvirt
from lxml import etree

from worker import logs
from worker.config import LibvirtOptions
from worker.errors import InvalidArguments, UnsafePath, WorkerError
from worker.virt import images
from worker.virt.guest import Guest
from worker.virt.image_cache import cache_name
from worker.virt.paths import inside

log = logs.get(__name__)

#: nova's live_migration_flag: the guest keeps running, the source's libvirtd drives the move,
#: the destination keeps the definition and the source drops it.
BASE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
              | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
#: nova's block_migration_flag adds: copy the disks' top layers (the destination has the bases).
BLOCK_FLAGS = libvirt.VIR_MIGRATE_NON_SHARED_INC
#: Formats a block migration recreates on the destination.
DISK_FORMATS = ("raw", "qcow2")
#: Largest disk a destination creates for a block migration (a hostile size is refused).
MAX_DISK_BYTES = 64 << 40
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")
#: nova's shared-storage test file: mkstemp's name, one path part.
TEST_FILE = re.compile(r"tmp[A-Za-z0-9_]{1,32}")


def flags(*, block: bool, unsafe: bool) -> int:
    """The migrateToURI3 flags of a live (or, block=True, block) migration."""
    value = BASE_FLAGS | (BLOCK_FLAGS if block else 0)
    return int(value | (libvirt.VIR_MIGRATE_UNSAFE if unsafe else 0))


def check_address(addr: str) -> str:
    """A host name or IP literal fit for a URI; InvalidArguments otherwise."""
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        pass
    if not _HOST.fullmatch(addr):
        raise InvalidArguments(f"{addr!r:.80} is not a host name or an IP address")
    return addr


def _uri_host(addr: str) -> str:
    """addr as the host part of a URI (an IPv6 literal in brackets, as oslo's escape_ipv6)."""
    addr = check_address(addr)
    return f"[{addr}]" if ":" in addr else addr


def destination_uri(opts: LibvirtOptions, dest: str) -> str:
    """The destination's libvirt URI, as nova's _live_migration_uri builds it."""
    if opts.live_migration_uri:
        return opts.live_migration_uri.replace("%s", _uri_host(dest), 1)
    return f"qemu+{opts.live_migration_scheme or 'tcp'}://{_uri_host(dest)}/system"


def params(*, connect_addr: str | None, bandwidth_mib: int,
           disks: list[str] | None) -> dict[str, Any]:
    """migrateToURI3's parameters: where QEMU sends the memory, how fast, which disks.

    Without a data URI the destination's libvirtd names its own host name,
    which need not reach it (nova sends tcp://<target_connect_addr> too).
    """
    out: dict[str, Any] = {}
    if connect_addr:
        out[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://{_uri_host(connect_addr)}"
    if bandwidth_mib > 0:
        out[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth_mib
    if disks is not None:
        out[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = disks
    return out


@dataclasses.dataclass(frozen=True)
class Progress:
    """One look at a migration job, as libvirt's job statistics tell it."""

    elapsed_ms: int
    data_total: int
    data_processed: int
    data_remaining: int
    memory_remaining: int
    disk_remaining: int

    def details(self) -> dict[str, int]:
        """The progress event's details."""
        return dataclasses.asdict(self)


def progress(stats: dict[str, Any]) -> Progress | None:
    """The job statistics as Progress; None when no job runs."""
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return None

    def num(key: str) -> int:
        return int(stats.get(key) or 0)
    return Progress(num("time_elapsed"), num("data_total"), num("data_processed"),
                    num("data_remaining"), num("memory_remaining"), num("disk_remaining"))


def is_migrating(stats: dict[str, Any]) -> bool:
    """True while an outgoing migration job runs on the domain."""
    return (stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE
            and stats.get("operation") in (None, libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT))


class Run:
    """migrateToURI3 on a thread of its own, so the verb thread can watch, abort or force it."""

    def __init__(self, guest: Guest, uri: str, parameters: dict[str, Any], flags: int) -> None:
        self.began = time.monotonic()
        self.error: WorkerError | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(guest, uri, parameters, flags),
                                        name=f"migrate-{guest.uuid[:8]}", daemon=True)
        self._thread.start()

    def _run(self, guest: Guest, uri: str, parameters: dict[str, Any], flags: int) -> None:
        try:
            guest.migrate(uri, parameters, flags)
        except WorkerError as exc:
            self.error = exc
        except Exception as exc:  # a bug must still end the wait, as a failure
            log.exception("migration_thread_crashed")
            self.error = WorkerError(f"internal error ({type(exc).__name__})")
        finally:
            self._done.set()

    def wait(self, timeout: float) -> bool:
        """True once the call has returned (success or error)."""
        return self._done.wait(timeout)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.began


# --- CPUs ------------------------------------------------------------------------------


def cpu_xml(cpu_info: dict[str, Any]) -> str:
    """A <cpu> from nova's cpu_info (a host's get_available_resource), as nova builds it."""
    cpu = etree.Element("cpu")
    for key in ("arch", "model", "vendor"):
        value = cpu_info.get(key)
        if isinstance(value, str) and value:
            etree.SubElement(cpu, key).text = value
    topology = cpu_info.get("topology")
    if isinstance(topology, dict):
        etree.SubElement(cpu, "topology", {k: str(int(topology[k])) for k in
                                           ("sockets", "cores", "threads")
                                           if isinstance(topology.get(k), int)})
    for feature in cpu_info.get("features") or []:
        if isinstance(feature, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", feature):
            etree.SubElement(cpu, "feature", {"policy": "require", "name": feature})
    return str(etree.tostring(cpu, encoding="unicode"))


# --- disks of a block migration ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LocalDisk:
    """A disk file in the instance directory, as nova's get_instance_disk_info lists it."""

    target: str
    path: str
    fmt: str
    virtual_size: int
    #: The backing file's name (a base in the image cache), for a qcow2 overlay.
    backing_file: str | None

    def nova(self) -> dict[str, Any]:
        """The entry of nova's disk info list."""
        return {"type": self.fmt, "path": self.path, "virt_disk_size": self.virtual_size,
                "backing_file": self.backing_file or "", "disk_size": 0,
                "over_committed_disk_size": 0, "target": self.target}


def local_disks(domain_xml: str, instance_dir: Path) -> list[LocalDisk]:
    """The guest's file disks in its instance directory: what a block migration copies.

    Volumes (block devices, files elsewhere, network disks) stay where they are.
    """
    found = []
    for disk in etree.fromstring(domain_xml.encode("utf-8")).iterfind("devices/disk"):
        source, target = disk.find("source"), disk.find("target")
        if (disk.get("type") != "file" or disk.get("device", "disk") != "disk"
                or source is None or target is None or not source.get("file")):
            continue
        path = Path(str(source.get("file")))
        if path.parent != instance_dir:
            continue
        driver = disk.find("driver")
        fmt = str(driver.get("type") if driver is not None else "raw")
        about = images.info(path, fmt, shared=True)
        backing = about.get("backing-filename") or about.get("full-backing-filename")
        found.append(LocalDisk(str(target.get("dev")), str(path), fmt,
                               int(about["virtual-size"]),
                               Path(str(backing)).name if backing else None))
    return found


def disk_info(disks: list[LocalDisk]) -> str:
    """nova's disk info: a JSON string (pre_live_migration's ``disk``)."""
    return json.dumps([disk.nova() for disk in disks])


def parse_disk_info(text: str | None, instance_dir: Path, image_ref: str | None
                    ) -> list[LocalDisk]:
    """The source's disk info, checked: every disk a file directly in this instance's
    directory, of a known format and a sane size, backed only by the instance's image."""
    if not text:
        return []
    try:
        entries = json.loads(text)
    except ValueError:
        raise InvalidArguments("disk is not JSON") from None
    if not isinstance(entries, list) or len(entries) > 64:
        raise InvalidArguments("disk is not a list of at most 64 disks")
    disks = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise InvalidArguments("a disk info entry is not an object")
        path, fmt = entry.get("path"), entry.get("type")
        size = entry.get("virt_disk_size")
        backing = entry.get("backing_file") or None
        if not isinstance(path, str) or fmt not in DISK_FORMATS:
            raise InvalidArguments(f"disk {path!r:.80}: type {fmt!r:.20} is not raw or qcow2")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_DISK_BYTES:
            raise InvalidArguments(f"disk {path!r:.80}: virt_disk_size {size!r:.30}")
        # Same path on both hosts (libvirt keeps it); it must be one of this instance's files.
        name = Path(path).name
        if Path(path) != instance_dir / name:
            raise UnsafePath(f"disk {path!r:.120} is not in the instance's directory")
        inside(instance_dir, name)
        if backing is not None and (fmt != "qcow2" or image_ref is None
                                    or backing != cache_name(image_ref)):
            raise InvalidArguments(f"disk {name}: backing file {backing!r:.60} is not the "
                                   "cached base of the instance's image")
        target = entry.get("target")
        disks.append(LocalDisk(str(target) if isinstance(target, str) else "", path, fmt,
                               size, backing))
    return disks


def create_disk(disk: LocalDisk, base: Path | None) -> None:
    """The destination's empty copy of disk, ready for the block copy to fill.

    A file already there (a pre_live_migration delivered again) is made again:
    nothing has used it yet.
    """
    path = Path(disk.path)
    path.unlink(missing_ok=True)
    if disk.fmt == "qcow2":
        backing = ["-b", str(base), "-F", "raw"] if base is not None else []
        images.qemu_img("create", "-q", "-f", "qcow2", *backing, str(path),
                        str(disk.virtual_size))
    else:
        images.qemu_img("create", "-q", "-f", "raw", str(path), str(disk.virtual_size))
    log.info("migration_disk_created", path=str(path), format=disk.fmt,
             virtual_size=disk.virtual_size, backing=str(base) if base else None)
