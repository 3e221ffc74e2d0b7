"""The test guest on real QEMU: its marker reaches the serial log and it lets go of virtio devices.

Without the guest image a domain has no OS, and a virtio NIC asked to detach stays
(no device-removed event): that case is here too, so the image is what makes the
difference.
"""

from __future__ import annotations

import queue
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from tests.domains import Vm, remove_domain
from tests.e2e.support import NAME_PREFIX
from tests.guest_image import GUEST_DOMAIN_TYPE, GUEST_MARKER, make_guest_image
from worker.virt.disk_xml import DiskSpec, disk
from worker.virt.domain_xml import DomainSpec, domain, to_string

pytestmark = pytest.mark.e2e

#: How long a device the guest acks may take to go (it polls every timer tick, 55 ms).
REMOVAL_SECONDS = 2.0
#: How long the marker may take to show: SeaBIOS boot on TCG (0.3-1.5 s seen) plus one print.
MARKER_SECONDS = 10.0

NIC_ALIAS = "ua-test-nic"
DISK_ALIAS = "ua-test-disk"


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A private directory for images and console logs, removed after the test."""
    with tempfile.TemporaryDirectory(prefix="cw-guest-") as name:
        yield Path(name)


@pytest.fixture
def boot(qemu: libvirt.virConnect, workdir: Path) -> Iterator[Callable[..., libvirt.virDomain]]:
    """Factory for started domains logging COM1 to workdir; all removed after the test."""
    made: list[Vm] = []

    def start(*, image: bool) -> libvirt.virDomain:
        vm = Vm.new(NAME_PREFIX)
        made.append(vm)
        disks: tuple[DiskSpec, ...] = ()
        if image:
            path = make_guest_image(workdir / f"{vm.name}.img", GUEST_MARKER)
            disks = (DiskSpec("file", str(path), "vda", fmt="raw"),)
        root = domain(DomainSpec(name=vm.name, uuid=vm.uuid, memory_mib=64, vcpus=1,
                                 domain_type=GUEST_DOMAIN_TYPE, disks=disks))
        root.find("devices").append(serial_file(workdir / f"{vm.name}.log"))
        dom = qemu.defineXML(to_string(root))
        dom.create()
        return dom

    yield start
    for vm in made:
        remove_domain(qemu, vm.uuid)
    assert [] == [vm.name for vm in made if _exists(qemu, vm)], "test domains left behind"


def _exists(conn: libvirt.virConnect, vm: Vm) -> bool:
    try:
        conn.lookupByUUIDString(vm.uuid)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise
    return True


def serial_file(path: Path) -> etree._Element:
    """<serial type='file'>: COM1 written to path by QEMU."""
    serial = etree.Element("serial", type="file")
    etree.SubElement(serial, "source", path=str(path))
    etree.SubElement(serial, "target", port="0")
    return serial


def virtio_nic() -> etree._Element:
    """A virtio NIC on QEMU's user network (no host device needed), with a user alias."""
    nic = etree.Element("interface", type="user")
    etree.SubElement(nic, "model", type="virtio")
    etree.SubElement(nic, "alias", name=NIC_ALIAS)
    return nic


def virtio_disk(path: Path) -> etree._Element:
    """A raw virtio disk vdb on a 1 MiB file, with a user alias."""
    with open(path, "wb") as handle:
        handle.truncate(1 << 20)
    element = disk(DiskSpec("file", str(path), "vdb", fmt="raw"))
    etree.SubElement(element, "alias", name=DISK_ALIAS)
    return element


def live_aliases(dom: libvirt.virDomain) -> set[str]:
    """Aliases of the devices in the domain's live XML."""
    root = etree.fromstring(dom.XMLDesc(0))
    return {str(name) for name in root.xpath("/domain/devices/*/alias/@name")}


def wait_for_marker(log: Path, count: int) -> str:
    """The console log once it holds count marker lines (fails after MARKER_SECONDS)."""
    deadline = time.monotonic() + MARKER_SECONDS
    text = ""
    while time.monotonic() < deadline:
        # Bytes, not read_text: its newline translation would turn the guest's CR LF into LF.
        text = log.read_bytes().decode("ascii", "replace") if log.exists() else ""
        if text.count(GUEST_MARKER + "\r\n") >= count:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{count} x {GUEST_MARKER!r} not in {log} after {MARKER_SECONDS} s: "
                         f"{text[-200:]!r}")


class Removals:
    """libvirt's device-removed events for one domain, as aliases in arrival order."""

    def __init__(self, conn: libvirt.virConnect, dom: libvirt.virDomain) -> None:
        self.conn = conn
        self.aliases: queue.Queue[str] = queue.Queue()
        self.callback_id = conn.domainEventRegisterAny(
            dom, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._removed, None)

    def _removed(self, _conn: libvirt.virConnect, _dom: libvirt.virDomain, alias: str,
                 _opaque: object) -> None:
        self.aliases.put(alias)

    def wait(self, alias: str, timeout: float) -> bool:
        """True when alias is reported removed within timeout seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                if alias == self.aliases.get(timeout=left):
                    return True
            except queue.Empty:
                return False
        return False

    def close(self) -> None:
        """Stop listening."""
        self.conn.domainEventDeregisterAny(self.callback_id)


@pytest.fixture
def removals(qemu: libvirt.virConnect) -> Iterator[Callable[[libvirt.virDomain], Removals]]:
    """Factory for Removals on qemu; each stops listening after the test."""
    made: list[Removals] = []

    def listen(dom: libvirt.virDomain) -> Removals:
        made.append(Removals(qemu, dom))
        return made[-1]

    yield listen
    for listener in made:
        listener.close()


def test_marker_reaches_the_serial_log_again_and_again(
        boot: Callable[..., libvirt.virDomain], workdir: Path) -> None:
    """The guest prints its marker on COM1 more than once within seconds of starting."""
    dom = boot(image=True)
    text = wait_for_marker(workdir / f"{dom.name()}.log", count=3)
    assert text.startswith(GUEST_MARKER + "\r\n"), text[:200]


@pytest.mark.parametrize("device", ["nic", "disk"])
def test_guest_lets_go_of_a_hot_plugged_virtio_device(
        device: str, boot: Callable[..., libvirt.virDomain], workdir: Path,
        removals: Callable[[libvirt.virDomain], Removals]) -> None:
    """A virtio NIC or disk attached live detaches live, with libvirt's device-removed event."""
    # Given a running guest past its boot (its loop acks unplug from now on)
    dom = boot(image=True)
    log = workdir / f"{dom.name()}.log"
    wait_for_marker(log, count=1)
    alias, element = ((NIC_ALIAS, virtio_nic()) if device == "nic"
                      else (DISK_ALIAS, virtio_disk(workdir / "extra.img")))
    listener = removals(dom)
    dom.attachDeviceFlags(to_string(element), libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert alias in live_aliases(dom)
    printed = log.read_bytes().count(GUEST_MARKER.encode())
    # When it is detached as the worker does it (libvirt waits for QEMU's DEVICE_DELETED)
    started = time.monotonic()
    dom.detachDeviceFlags(to_string(element), libvirt.VIR_DOMAIN_AFFECT_LIVE)
    # Then the removal is reported and the device is gone from the live XML, quickly
    assert listener.wait(alias, REMOVAL_SECONDS)
    assert time.monotonic() - started < REMOVAL_SECONDS
    assert alias not in live_aliases(dom)
    wait_for_marker(log, count=printed + 1)  # and the guest still runs


def test_guest_without_the_image_keeps_its_virtio_nic(
        boot: Callable[..., libvirt.virDomain],
        removals: Callable[[libvirt.virDomain], Removals]) -> None:
    """With no OS nobody acks the unplug: no device-removed event, the NIC stays."""
    dom = boot(image=False)
    listener = removals(dom)
    dom.attachDeviceFlags(to_string(virtio_nic()), libvirt.VIR_DOMAIN_AFFECT_LIVE)
    # By alias, libvirt only sends the request (detachDeviceFlags would wait 5 s for nothing).
    dom.detachDeviceAlias(NIC_ALIAS, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert not listener.wait(NIC_ALIAS, REMOVAL_SECONDS)
    assert NIC_ALIAS in live_aliases(dom)
