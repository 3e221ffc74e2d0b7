"""The one owner of the libvirt connection: lazy connect, health, reconnect, error mapping."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt

from worker import logs
from worker.errors import HypervisorUnavailable, WorkerError
from worker.virt import errors, lifecycle, rescue
from worker.virt.errors import libvirt_errors
from worker.virt.guest import Guest
from worker.virt.lifecycle import LifecycleEvent

log = logs.get(__name__)
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")

LifecycleCallback = Callable[[LifecycleEvent], None]
"""Called with each domain lifecycle event, from libvirt's event thread."""


_loop_lock = threading.Lock()
_loop_started = False


def start_event_loop() -> None:
    """Register libvirt's default event loop and run it on a daemon thread, once per process."""
    # Without a registered loop, isAlive() stays true after libvirtd dies and no
    # close callback fires: a dead daemon would go unnoticed until a call fails.
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


class DeviceRemoval:
    """One device's removal as libvirt reports it: removed, refused by the guest, or neither."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.outcome: str | None = None

    def _report(self, outcome: str) -> None:
        self.outcome = outcome
        self._done.set()

    def wait(self, timeout: float) -> str | None:
        """"removed", "failed" (the guest refused), or None when nothing came within timeout."""
        self._done.wait(timeout)
        return self.outcome

    def reset(self) -> None:
        """Forget an outcome, to watch the next attempt."""
        self.outcome = None
        self._done.clear()


class Hypervisor:
    """Owns one libvirt connection; every libvirt call goes through it or its Guests."""

    def __init__(
        self,
        uri: str,
        *,
        read_only: bool = False,
        on_lifecycle: LifecycleCallback | None = None,
        on_close: Callable[[str], None] | None = None,
        instances_path: str | None = None,
    ) -> None:
        """instances_path: where rescued instances keep their saved definition (none:
        no instance is ever seen as rescued)."""
        self.uri = uri
        self._instances = Path(instances_path) if instances_path else None
        self.read_only = read_only
        self._on_lifecycle = on_lifecycle
        self._on_close = on_close
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        #: Connections opened: the first and every reopening after a loss.
        self.opened = 0
        self._callback_ids: list[int] = []
        # (domain uuid, device alias) -> who waits for that device to go.
        self._removals: dict[tuple[str, str], DeviceRemoval] = {}
        self._removals_lock = threading.Lock()

    # --- connection ------------------------------------------------------

    def _open(self) -> libvirt.virConnect:
        start_event_loop()
        opener = libvirt.openReadOnly if self.read_only else libvirt.open
        try:
            conn = opener(self.uri)
        except libvirt.libvirtError as exc:
            reason = exc.get_error_message()
            raise HypervisorUnavailable(f"cannot open {self.uri}: {reason}") from None
        with contextlib.suppress(libvirt.libvirtError):
            # Keepalive catches a daemon that is black-holed rather than dead.
            conn.setKeepAlive(5, 3)
        conn.registerCloseCallback(self._closed, None)
        self._callback_ids = []
        if self._on_lifecycle is not None:
            self._callback_ids.append(conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None))
        # Detaching a disk returns before the guest lets go of it; these say when it has.
        for event_id, outcome in ((libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, "removed"),
                                  (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED, "failed")):
            with contextlib.suppress(libvirt.libvirtError):
                self._callback_ids.append(conn.domainEventRegisterAny(
                    None, event_id, self._device_event, outcome))
        log.info("libvirt_connected", uri=self.uri, read_only=self.read_only)
        return conn

    def _closed(self, conn: libvirt.virConnect, reason: int, _opaque: Any) -> None:
        # Runs on libvirt's event thread: only record and hand off.
        with self._lock:
            if self._conn is conn:
                self._conn = None
        log.warning("libvirt_connection_lost", uri=self.uri, reason=reason)
        if self._on_close is not None:
            self._on_close(f"libvirt connection closed (reason {reason})")

    def _lifecycle(self, _conn: libvirt.virConnect, dom: libvirt.virDomain,
                   event: int, detail: int, _opaque: Any) -> None:
        if self._on_lifecycle is not None:
            self._on_lifecycle(lifecycle.from_libvirt(dom.UUIDString(), event))

    def _device_event(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, alias: str,
                      outcome: str) -> None:
        # libvirt's event thread: look up and signal, nothing more.
        with self._removals_lock:
            waiter = self._removals.get((dom.UUIDString(), alias))
        if waiter is not None:
            waiter._report(outcome)

    @contextlib.contextmanager
    def watch_removal(self, uuid: str, alias: str) -> Iterator[DeviceRemoval]:
        """Watch for the removal of the device alias of domain uuid.

        Enter before asking for the detach: the event may come before the
        detach call returns.
        """
        waiter = DeviceRemoval()
        key = (uuid.lower(), alias)
        with self._removals_lock:
            self._removals[key] = waiter
        try:
            yield waiter
        finally:
            with self._removals_lock:
                if self._removals.get(key) is waiter:
                    del self._removals[key]

    @property
    def connected(self) -> bool:
        """True while a connection is open (none yet, or lost and not reopened: False)."""
        return self._conn is not None

    def connection(self) -> libvirt.virConnect:
        """The live connection, opened (or reopened) on first use."""
        with self._lock:
            conn = self._conn
            if conn is not None:
                try:
                    alive = conn.isAlive() == 1
                except libvirt.libvirtError:
                    alive = False
                if alive:
                    return conn
                self._drop(conn)
            self._conn = self._open()
            self.opened += 1
            return self._conn

    def _drop(self, conn: libvirt.virConnect) -> None:
        self._conn = None
        with contextlib.suppress(libvirt.libvirtError):
            for cb_id in self._callback_ids:
                conn.domainEventDeregisterAny(cb_id)
            conn.unregisterCloseCallback()
            conn.close()
        self._callback_ids = []

    def mark_broken(self, conn: libvirt.virConnect | None = None) -> bool:
        """Forget the connection after a call saw it broken; the next use reopens.

        With conn (the connection the failing call used), only that one: a
        handle left over from before a reconnect fails with "client socket is
        closed", which says nothing about the new connection. True when the
        current connection was dropped.
        """
        with self._lock:
            if self._conn is None or (conn is not None and conn is not self._conn):
                return False
            self._drop(self._conn)
            return True

    def close(self) -> None:
        """Close the connection for good (at shutdown)."""
        self.mark_broken()

    def alive(self) -> bool:
        """True when a connection is open and answers."""
        try:
            with libvirt_errors():
                self.connection().getLibVersion()
            return True
        except WorkerError:
            return False

    @contextlib.contextmanager
    def guard(self, uuid: str | None = None,
              conn: libvirt.virConnect | None = None) -> Iterator[None]:
        """Map libvirt errors inside the block; a connection seen broken is forgotten.

        conn is the connection the calls in the block use, when known.
        """
        try:
            with libvirt_errors(uuid):
                yield
        except HypervisorUnavailable as exc:
            # A failing call is the other way (besides the close callback) to
            # learn that libvirt is gone: tell the owner the same way. Not for
            # a stale handle whose connection was already replaced.
            if (self.mark_broken(conn) or conn is None) and self._on_close is not None:
                self._on_close(exc.message)
            raise

    @contextlib.contextmanager
    def calls(self, uuid: str | None = None) -> Iterator[libvirt.virConnect]:
        """The live connection, with errors mapped as ``guard`` does."""
        with self.guard(uuid):
            conn = self.connection()
        with self.guard(uuid, conn):
            yield conn

    # --- domains -----------------------------------------------------------

    def rescued(self, uuid: str) -> bool:
        """True while instance uuid is rescued: its saved definition exists (a stat)."""
        # uuid comes from libvirt or a checked message: a canonical UUID, one path part.
        return self._instances is not None and _CANONICAL_UUID.fullmatch(uuid) is not None \
            and (self._instances / uuid.lower() / rescue.UNRESCUE_XML).is_file()

    def guest(self, uuid: str) -> Guest:
        """The domain with this UUID; InstanceNotFound when there is none."""
        with self.calls(uuid) as conn:
            dom = conn.lookupByUUIDString(uuid)
            # Found by this exact spelling: its lowercase is what UUIDString() would say.
            return Guest(dom, self, uuid.lower() if _CANONICAL_UUID.fullmatch(uuid) else None)

    def guests(self) -> list[Guest]:
        """Every domain on this host, running or only defined."""
        with self.calls() as conn:
            return [Guest(dom, self) for dom in conn.listAllDomains(0)]

    def define(self, xml: str) -> Guest:
        """Define a persistent domain from XML."""
        with self.calls() as conn:
            return Guest(conn.defineXML(xml), self)

    def host_info(self) -> dict[str, Any]:
        """Capacity of this host: model, memory (MiB), CPUs, MHz."""
        with self.calls() as conn:
            model, memory_mb, cpus, mhz, *_ = conn.getInfo()
            return {"hostname": conn.getHostname(), "uri": conn.getURI(), "cpu_model": model,
                    "memory_mb": memory_mb, "vcpus": cpus, "cpu_mhz": mhz,
                    "hypervisor_version": conn.getVersion(),
                    "libvirt_version": conn.getLibVersion()}

    def compare_cpu(self, cpu_xml: str, virt_type: str) -> int | None:
        """libvirt's verdict on running a guest with this <cpu> here (compareHypervisorCPU):
        above 0 compatible, 0 or less not; None when the driver cannot compare."""
        try:
            with self.calls() as conn:
                return int(conn.compareHypervisorCPU(None, None, None, virt_type, cpu_xml, 0))
        except WorkerError as exc:
            if errors.unsupported(exc):
                return None
            raise

    def domain_uuids(self) -> set[str]:
        """The UUIDs of every domain here (one call)."""
        with self.calls() as conn:
            return {str(dom.UUIDString()).lower() for dom in conn.listAllDomains(0)}

    # --- network filters (nwfilter) -------------------------------------------------

    def define_nwfilter(self, xml: str) -> None:
        """Define (or redefine) an nwfilter from XML."""
        with self.calls() as conn:
            conn.nwfilterDefineXML(xml)

    def has_nwfilter(self, name: str) -> bool:
        """True when an nwfilter of this name is defined."""
        with self.calls() as conn:
            return name in conn.listNWFilters()

    def undefine_nwfilter(self, name: str) -> bool:
        """Remove the nwfilter name; False when there was none."""
        with self.calls() as conn:
            if name not in conn.listNWFilters():
                return False
            conn.nwfilterLookupByName(name).undefine()
            return True

    def nwfilter_bindings(self) -> list[tuple[str, str]]:
        """(port device, filter) of every nwfilter binding: the filters in force now."""
        with self.calls() as conn:
            found = []
            for binding in conn.listAllNWFilterBindings(0):
                found.append((str(binding.portDev()), str(binding.filterName())))
            return found
