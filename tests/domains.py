"""libvirt domains for tests: the two URIs, the KVM probe, tiny no-OS domains and their state."""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from worker.virt.domain_xml import DomainSpec, domain, to_string

QEMU_URI = "qemu:///system"
#: libvirt's test driver; its state is shared in-process while a connection stays open.
TEST_URI = "test:///default"
#: Where libvirt's QEMU driver keeps managed-save images (<name>.save).
MANAGED_SAVE_DIR = "/var/lib/libvirt/qemu/save"

#: Starts libvirtd under a subreaper, as scripts/services.sh does; restarts must use it too.
LIBVIRTD_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "libvirtd.sh"

_KVM_GET_API_VERSION = 0xAE00
_KVM_CREATE_VM = 0xAE01
_KVM_API_VERSION = 12


@contextlib.contextmanager
def connection(uri: str) -> Iterator[libvirt.virConnect]:
    """A libvirt connection to uri, closed on exit."""
    conn = libvirt.open(uri)
    try:
        yield conn
    finally:
        conn.close()


def kvm_works(conn: libvirt.virConnect) -> bool:
    """True when /dev/kvm exists, answers the KVM API and libvirt offers kvm domains."""
    if not os.path.exists("/dev/kvm"):
        return False
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if fcntl.ioctl(fd, _KVM_GET_API_VERSION) != _KVM_API_VERSION:
            return False
        os.close(fcntl.ioctl(fd, _KVM_CREATE_VM, 0))
    except OSError:
        return False
    finally:
        os.close(fd)
    try:
        conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
    except libvirt.libvirtError:
        return False
    return True


def qemu_domain_type(conn: libvirt.virConnect) -> str:
    """kvm where /dev/kvm works, else qemu (TCG); COMPUTE_WORKER_TEST_DOMAIN_TYPE forces one."""
    forced = os.environ.get("COMPUTE_WORKER_TEST_DOMAIN_TYPE")  # "qemu" to try TCG on a KVM host
    if forced is not None:
        assert forced in ("kvm", "qemu"), forced
        return forced
    return "kvm" if kvm_works(conn) else "qemu"


@dataclass(frozen=True)
class Vm:
    """A test domain: its UUID and name, and the args that name it in a message."""

    uuid: str
    name: str

    @classmethod
    def new(cls, prefix: str) -> Vm:
        """A fresh UUID and a name from prefix and its start (unique on one host)."""
        uid = str(uuid.uuid4())
        return cls(uid, f"{prefix}{uid[:13]}")

    @property
    def args(self) -> dict[str, Any]:
        """``{"instance": {...}}`` as a scheduler sends it."""
        return {"instance": {"uuid": self.uuid, "name": self.name}}

    @property
    def save_image(self) -> str:
        """Path of its managed-save image on the QEMU driver."""
        return os.path.join(MANAGED_SAVE_DIR, f"{self.name}.save")


def define_vms(conn: libvirt.virConnect, domain_type: str, count: int, made: list[Vm], *,
               prefix: str, start: bool = True) -> list[Vm]:
    """Define count 64 MiB, 1 vCPU domains with no OS (started unless told not); the new ones.

    Each is added to made before anything can fail, so cleanup finds it.
    """
    new = []
    for _ in range(count):
        vm = Vm.new(prefix)
        made.append(vm)
        spec = DomainSpec(name=vm.name, uuid=vm.uuid, memory_mib=64, vcpus=1,
                          domain_type=domain_type)
        dom = conn.defineXML(to_string(domain(spec)))
        if start:
            dom.create()
        new.append(vm)
    return new


def remove_domain(conn: libvirt.virConnect, uid: str) -> None:
    """Destroy, drop the managed-save image and undefine a domain if it is still there."""
    try:
        dom = conn.lookupByUUIDString(uid)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return
        raise
    if dom.isActive():
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            # Racing libvirtd's reconnect to the guest after a restart, destroy stops
            # it and still reports "domain is not running".
            if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID or dom.isActive():
                raise
    if dom.hasManagedSaveImage(0):
        dom.managedSaveRemove(0)
    if dom.isPersistent():
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                          | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)


def remove_domains(uri: str, uuids: list[str]) -> None:
    """Destroy and undefine the domains of uri that are still there."""
    with connection(uri) as conn:
        for uid in uuids:
            remove_domain(conn, uid)


def domain_state(uri: str, uid: str) -> tuple[int, int] | None:
    """(state, reason) of a domain through libvirt itself; None when it does not exist."""
    with connection(uri) as conn:
        try:
            state, reason = conn.lookupByUUIDString(uid).state()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
        return int(state), int(reason)


def state_of(uri: str, uid: str) -> int | None:
    """libvirt's state code of a domain, through libvirt itself; None when it does not exist."""
    found = domain_state(uri, uid)
    return None if found is None else found[0]


def has_managed_save(uri: str, uid: str) -> bool:
    """True when libvirt keeps a managed-save image of the domain."""
    with connection(uri) as conn:
        return bool(conn.lookupByUUIDString(uid).hasManagedSaveImage(0))
