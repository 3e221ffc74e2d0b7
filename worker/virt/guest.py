"""A thin wrapper giving each libvirt domain verb a short, honest name."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import libvirt
from lxml import etree

from worker.errors import HypervisorError, ImageError, NotSupported, OperationTimeout
from worker.virt import errors, power_state


class Guard(Protocol):
    """What a Guest needs from its Hypervisor: error mapping around each call."""

    def guard(self, uuid: str | None = None,
              conn: libvirt.virConnect | None = None) -> AbstractContextManager[None]:
        """Map libvirt errors raised inside the block (calls made on conn)."""

    def rescued(self, uuid: str) -> bool:
        """True while the instance is rescued (its saved definition exists)."""


@dataclass(frozen=True)
class DiskFile:
    """A file-backed disk of a domain as its live XML says."""

    path: str
    #: The format libvirt opens it as (<driver type>); raw when the XML names none.
    fmt: str
    #: The destination file of a block copy running on this disk, if one is.
    mirror: str | None = None


def _mirror_file(disk: etree._Element) -> str | None:
    """The destination file of a block copy on a <disk>: <mirror file=...> or its <source>."""
    mirror = disk.find("mirror")
    if mirror is None:
        return None
    source = mirror.find("source")
    found = mirror.get("file") or (source.get("file") if source is not None else None)
    return str(found) if found else None


class Guest:
    """One libvirt domain. Method names say what happens, not what libvirt calls it."""

    def __init__(self, dom: libvirt.virDomain, owner: Guard, uuid: str | None = None) -> None:
        """uuid: the domain's canonical UUID when the caller already knows it (saves a call)."""
        self._dom = dom
        self._conn = dom.connect()  # the Python object libvirt-python keeps: no call
        self._owner = owner
        self.uuid: str = uuid if uuid is not None else dom.UUIDString()
        self._name: str | None = None

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._owner.guard(self.uuid, self._conn):
            return fn(*args)

    # --- reading state -------------------------------------------------------

    @property
    def name(self) -> str:
        """The domain's name (read once: a Guest lives for one message, and a
        domain can only be renamed while it is off)."""
        if self._name is None:
            self._name = str(self._call(self._dom.name))
        return self._name

    def state(self) -> tuple[int, int]:
        """libvirt's (state, reason) pair."""
        state, reason = self._call(self._dom.state)
        return int(state), int(reason)

    def power_state(self) -> str:
        """The wire power_state."""
        return power_state.from_libvirt(self.state()[0])

    def is_active(self) -> bool:
        """True while QEMU (or the driver's equivalent) runs, shutting down included."""
        return bool(self._call(self._dom.isActive))

    def has_managed_save(self) -> bool:
        """True when a managed-save image waits to be restored (our *suspended*)."""
        return bool(self._call(self._dom.hasManagedSaveImage, 0))

    def is_persistent(self) -> bool:
        """True for a defined domain, false for a transient one."""
        return bool(self._call(self._dom.isPersistent))

    def xml(self, flags: int = 0) -> str:
        """The domain XML (live definition unless flags ask otherwise)."""
        return str(self._call(self._dom.XMLDesc, flags))

    def describe(self) -> dict[str, Any]:
        """What an event says of an instance now: uuid, name, power_state, vm_state.

        A rescued instance is *rescued* whatever its power state, as nova keeps it.
        """
        current = self.power_state()
        if self._owner.rescued(self.uuid):
            return {"uuid": self.uuid, "name": self.name, "power_state": current,
                    "vm_state": "rescued"}
        saved = current == power_state.SHUTDOWN and self.has_managed_save()
        return {"uuid": self.uuid, "name": self.name, "power_state": current,
                "vm_state": power_state.vm_state(current, saved)}

    def info(self) -> dict[str, Any]:
        """Sizes and counters as get_instance_info reports them."""
        state, max_mem, mem, cpus, cpu_time = self._call(self._dom.info)
        return {"max_mem_kb": max_mem, "mem_kb": mem, "num_cpu": cpus, "cpu_time_ns": cpu_time,
                "power_state": power_state.from_libvirt(state)}

    # --- verbs ---------------------------------------------------------------

    def pause(self) -> None:
        """Freeze the vCPUs (libvirt calls it suspend)."""
        self._call(self._dom.suspend)

    def unpause(self) -> None:
        """Thaw the vCPUs (libvirt calls it resume)."""
        self._call(self._dom.resume)

    def save_to_disk(self) -> None:
        """Managed save: memory to disk, domain off; our *suspend*."""
        # SAVE_RUNNING: a guest saved while paused comes back running on resume.
        self._call(self._dom.managedSave, libvirt.VIR_DOMAIN_SAVE_RUNNING)

    def discard_saved_state(self) -> None:
        """Remove a managed-save image so the next start boots afresh."""
        self._call(self._dom.managedSaveRemove, 0)

    def start(self) -> None:
        """Start a defined domain; from its managed-save image when it has one."""
        self._call(self._dom.create)

    def shutdown(self) -> None:
        """Ask the guest OS to power off (ACPI); returns at once."""
        self._call(self._dom.shutdown)

    def power_off(self) -> None:
        """Pull the plug (libvirt calls it destroy): the definition stays."""
        self._call(self._dom.destroy)

    def undefine(self) -> None:
        """Remove the definition with its managed-save image, snapshot metadata and NVRAM."""
        flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                 | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        # Ask for NVRAM removal only when there is NVRAM: some drivers (the
        # test driver among them) refuse the flag outright.
        if etree.fromstring(self.xml(libvirt.VIR_DOMAIN_XML_INACTIVE)).find("os/nvram") is not None:
            flags |= libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        self._call(self._dom.undefineFlags, flags)

    def wait_off(self, timeout: float, interval: float = 0.1,
                 sleep: Callable[[float], None] = time.sleep) -> bool:
        """Poll until the domain is inactive; False if it still runs after timeout seconds."""
        if not math.isfinite(timeout):
            raise ValueError(f"timeout must be finite, got {timeout}")
        deadline = time.monotonic() + timeout
        while self.is_active():
            if time.monotonic() >= deadline:
                return False
            sleep(interval)
        return True

    def wait_for(self, targets: set[str], timeout: float, interval: float = 0.1,
                 sleep: Callable[[float], None] = time.sleep) -> str:
        """Poll until power_state is one of targets; OperationTimeout after timeout seconds."""
        if not math.isfinite(timeout):
            raise ValueError(f"timeout must be finite, got {timeout}")
        deadline = time.monotonic() + timeout
        while True:
            current = self.power_state()
            if current in targets:
                return current
            if time.monotonic() >= deadline:
                raise OperationTimeout(
                    f"{self.uuid} stayed {current}, wanted {'/'.join(sorted(targets))}")
            sleep(interval)

    # --- disks and block jobs (snapshots) -----------------------------------

    def disk_file(self, target: str) -> DiskFile | None:
        """The file disk at target (vda, ...) in the live XML; None when there is no such disk
        or it is not a plain file (a volume, a network disk, a CD-ROM)."""
        root = etree.fromstring(self.xml().encode("utf-8"))
        for disk in root.iterfind("devices/disk"):
            dev = disk.find("target")
            if dev is None or dev.get("dev") != target:
                continue
            source = disk.find("source")
            if (disk.get("type") != "file" or disk.get("device", "disk") != "disk"
                    or source is None or not source.get("file")):
                return None
            driver = disk.find("driver")
            fmt = driver.get("type") if driver is not None else None
            return DiskFile(str(source.get("file")), str(fmt or "raw"), _mirror_file(disk))
        return None

    def block_copy(self, target: str, destination_xml: str) -> None:
        """Start mirroring disk target into the existing image destination_xml describes,
        copying only the top layer (the destination has the same backing file).

        The job is transient (it ends with the domain, so a persistent domain
        may run it) and is never pivoted here: the guest stays on its own
        disk. NotSupported where the driver cannot copy (libvirt's test driver).
        """
        flags = (libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT | libvirt.VIR_DOMAIN_BLOCK_COPY_SHALLOW
                 | libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB)
        try:
            self._call(self._dom.blockCopy, target, destination_xml, None, flags)
        except HypervisorError as exc:
            if errors.unsupported(exc):
                raise NotSupported(f"block copy is not supported here: {exc.message}") from None
            raise

    def block_job_progress(self, target: str) -> tuple[int, int] | None:
        """(cur, end) of the block job on disk target; None when none runs."""
        info = self._call(self._dom.blockJobInfo, target, 0)
        if not info:
            return None
        return int(info["cur"]), int(info["end"])

    def abort_block_job(self, target: str) -> None:
        """End the block job on disk target and wait until it has; a copy not pivoted leaves
        the guest on its own disk and the destination as it was at this moment."""
        self._call(self._dom.blockJobAbort, target, 0)

    def wait_block_job_ready(self, target: str, timeout: float, interval: float = 0.05,
                             sleep: Callable[[float], None] = time.sleep) -> None:
        """Poll until the job on target has copied everything and mirrors new writes
        (cur == end, as nova reads it); ImageError if the job ends first, OperationTimeout
        after timeout seconds."""
        if not math.isfinite(timeout):
            raise ValueError(f"timeout must be finite, got {timeout}")
        deadline = time.monotonic() + timeout
        while True:
            progress = self.block_job_progress(target)
            if progress is None:
                raise ImageError(f"the block job on {target} ended before it was ready")
            cur, end = progress
            # end is 0 until QEMU has sized the job; libvirt keeps cur below end until ready.
            if end > 0 and cur == end:
                return
            if time.monotonic() >= deadline:
                raise OperationTimeout(f"block job on {target} at {cur} of {end} bytes after "
                                       f"{timeout:.0f}s")
            sleep(interval)

    # --- devices -------------------------------------------------------------

    def persistent_xml(self) -> str:
        """The definition the domain starts from next time (not the running config)."""
        return self.xml(libvirt.VIR_DOMAIN_XML_INACTIVE)

    def attach_device(self, device_xml: str, *, live: bool) -> None:
        """Add a device to the definition, and to the running domain too when live."""
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if live:
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        self._call(self._dom.attachDeviceFlags, device_xml, flags)

    def attach_device_live_only(self, device_xml: str) -> None:
        """Add a device to the running domain and not to its definition."""
        self._call(self._dom.attachDeviceFlags, device_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def remove_device_from_definition(self, device_xml: str) -> None:
        """Drop a device from the definition; the running domain keeps it."""
        self._call(self._dom.detachDeviceFlags, device_xml, libvirt.VIR_DOMAIN_AFFECT_CONFIG)

    def request_unplug(self, alias: str) -> None:
        """Ask QEMU to unplug the live device alias; returns before the guest lets go.

        Only libvirt's device-removed event (Hypervisor.watch_removal) says it is
        gone; a guest may also refuse, or never answer.
        """
        # detachDeviceAlias only sends the request; detachDeviceFlags with
        # AFFECT_LIVE would also sit up to 5 s inside libvirtd waiting for it.
        self._call(self._dom.detachDeviceAlias, alias, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    # --- live migration -----------------------------------------------------------

    def migrate(self, uri: str, params: dict[str, Any], flags: int) -> None:
        """Move the running domain to the libvirt at uri; returns when it is there (or failed).

        Peer to peer, the source's libvirtd talks to the destination's: an
        error about *that* connection says the destination failed, not that
        ours is lost, and must not send the worker into its libvirt outage.
        """
        with self._owner.guard(self.uuid, self._conn):
            try:
                self._dom.migrateToURI3(uri, params, flags)
            except libvirt.libvirtError as exc:
                if errors.is_connection_error(exc) and self._connection_answers():
                    raise HypervisorError(str(exc.get_error_message()),
                                          exc.get_error_code()) from None
                raise

    def _connection_answers(self) -> bool:
        try:
            self._conn.getLibVersion()
            return True
        except libvirt.libvirtError:
            return False

    def job_stats(self, completed: bool = False) -> dict[str, Any]:
        """libvirt's statistics of the job running now (or, completed=True, of the last one)."""
        flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED if completed else 0
        return dict(self._call(self._dom.jobStats, flags))

    def abort_job(self) -> None:
        """Cancel the job running now (a migration: the domain stays here, running)."""
        self._call(self._dom.abortJob)
