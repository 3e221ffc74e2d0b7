"""Rescue definitions: disk.rescue boots, the own root disk is second, the rest stays."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from tests.unit.support import UUID
from worker.errors import UnsafePath
from worker.virt import rescue
from worker.virt.disk_xml import DiskSpec
from worker.virt.domain_xml import DomainSpec, domain, to_string

HOME = Path(f"/srv/instances/{UUID}")
RESCUE_DISK = HOME / rescue.RESCUE_DISK


def _built() -> str:
    """A domain as the build makes it: root (boot 1), ephemeral, swap, console, VNC."""
    disks = (DiskSpec("file", str(HOME / "disk"), "vda", boot_order=1),
             DiskSpec("file", str(HOME / "disk.eph0"), "vdb", fmt="raw"),
             DiskSpec("file", str(HOME / "disk.swap"), "vdc", fmt="raw"))
    spec = DomainSpec(name="vm1", uuid=UUID, disks=disks, console_log=str(HOME / "console.log"),
                      vnc_listen="127.0.0.1")
    return to_string(domain(spec))


def _disks(xml: str) -> list[tuple[str | None, str | None, str | None]]:
    root = etree.fromstring(xml)
    return [(d.find("source").get("file"), d.find("target").get("dev"),
             d.find("boot").get("order") if d.find("boot") is not None else None)
            for d in root.iterfind("devices/disk")]


def test_the_rescue_disk_boots_and_the_own_root_disk_is_second() -> None:
    """disk.rescue is vda with boot order 1; disk is vdb, not bootable; nothing else."""
    new = rescue.rescue_definition(_built(), UUID, RESCUE_DISK)

    assert [(str(RESCUE_DISK), "vda", "1"), (str(HOME / "disk"), "vdb", None)] == _disks(new)


def test_every_other_device_and_setting_is_kept() -> None:
    """The console log, VNC, name, memory and the rest are the instance's own."""
    before, after = etree.fromstring(_built()), etree.fromstring(
        rescue.rescue_definition(_built(), UUID, RESCUE_DISK))

    assert [d.tag for d in before.find("devices") if d.tag != "disk"] == [
        d.tag for d in after.find("devices") if d.tag != "disk"]
    assert ["disk", "disk"] == [d.tag for d in after.find("devices")][:2]
    for path in ("name", "uuid", "memory", "vcpu", "devices/serial/log"):
        assert etree.tostring(before.find(path)) == etree.tostring(after.find(path))


def test_a_libvirt_address_or_os_boot_of_the_saved_definition_does_not_stay() -> None:
    """libvirt's PCI address of the old vda and <os><boot> would clash with the new disks."""
    saved = etree.fromstring(_built())
    etree.SubElement(saved.find("os"), "boot", dev="hd")
    etree.SubElement(saved.find("devices/disk"), "address", type="pci", slot="0x04")

    new = etree.fromstring(rescue.rescue_definition(etree.tostring(saved, encoding="unicode"),
                                                    UUID, RESCUE_DISK))

    assert [] == new.findall("os/boot") + new.findall("devices/disk/address")


def test_a_diskless_instance_boots_the_rescue_disk_alone() -> None:
    """No root disk to attach: only disk.rescue."""
    saved = to_string(domain(DomainSpec(name="vm1", uuid=UUID)))

    assert [(str(RESCUE_DISK), "vda", "1")] == _disks(
        rescue.rescue_definition(saved, UUID, RESCUE_DISK))


def test_another_domain_s_saved_definition_is_refused() -> None:
    """unrescue.xml of another UUID is never defined as this instance."""
    other = _built().replace(UUID, "99999999-2222-3333-4444-555555555555")

    with pytest.raises(UnsafePath):
        rescue.rescue_definition(other, UUID, RESCUE_DISK)
    with pytest.raises(UnsafePath):
        rescue.check_saved(other, UUID)


def test_a_rescue_definition_is_told_apart_from_the_original() -> None:
    """Only a definition with disk.rescue among its disks is a rescue one."""
    assert not rescue.boots_rescue_disk(_built(), RESCUE_DISK)
    assert rescue.boots_rescue_disk(rescue.rescue_definition(_built(), UUID, RESCUE_DISK),
                                    RESCUE_DISK)


def test_the_saved_definition_is_written_whole_and_read_back(tmp_path: Path) -> None:
    """save() then load() gives the same text, mode 0600; nothing saved reads as None."""
    assert None is rescue.load(tmp_path)

    path = rescue.save(tmp_path, _built())

    assert (_built(), 0o600) == (rescue.load(tmp_path), path.stat().st_mode & 0o777)
    assert [rescue.UNRESCUE_XML] == [p.name for p in tmp_path.iterdir()]
