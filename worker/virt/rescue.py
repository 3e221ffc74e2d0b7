"""Rescue definitions: the saved definition, and the one that boots from the rescue disk.

A rescue keeps the instance's definition as libvirt holds it (the inactive
XML: the live one carries the expanded CPU model and runtime details) in
``instances_path/<uuid>/unrescue.xml``, and defines the domain anew from a
copy in which ``disk.rescue`` (an overlay on the rescue image) is ``vda``
and boots, the instance's own root disk is ``vdb``, and its other disks
(ephemeral, swap, volumes) are left out, as nova's (legacy) rescue does.
Every other device stays. Unrescue defines the saved text again.

While ``unrescue.xml`` exists the instance is *rescued*: that file is the one
mark, read by the hypervisor's ``rescued()`` and so by every ``describe()``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from lxml import etree

from worker.errors import UnsafePath
from worker.virt import disk_xml
from worker.virt.disk_xml import DiskSpec

#: The saved definition; while it exists the instance is rescued.
UNRESCUE_XML = "unrescue.xml"
#: The rescue boot disk, an overlay on the rescue image.
RESCUE_DISK = "disk.rescue"
RESCUE_TARGET, ROOT_TARGET = "vda", "vdb"


def _parse(xml: str) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    return etree.fromstring(xml.encode("utf-8"), parser)


def _root_disk(disks: list[etree._Element]) -> etree._Element | None:
    """The disk the instance boots from: boot order 1, else the disk on vda."""
    for disk in disks:
        boot = disk.find("boot")
        if boot is not None and boot.get("order") == "1":
            return disk
    for disk in disks:
        target = disk.find("target")
        if disk.get("device", "disk") == "disk" and target is not None \
                and target.get("dev") == "vda":
            return disk
    return None


def check_saved(saved: str, uuid: str) -> etree._Element:
    """The saved definition parsed; UnsafePath when it is not domain uuid's."""
    root = _parse(saved)
    if root.tag != "domain" or root.findtext("uuid") != uuid:
        raise UnsafePath(f"the saved definition is not domain {uuid}'s")
    return root


def rescue_definition(saved: str, uuid: str, rescue_disk: Path) -> str:
    """The rescue domain XML made from the saved definition; UnsafePath when the saved
    XML is not this instance's."""
    root = check_saved(saved, uuid)
    devices = root.find("devices")
    if devices is None:
        devices = etree.SubElement(root, "devices")
    disks = devices.findall("disk")
    own = _root_disk(disks)
    place = devices.index(disks[0]) if disks else len(devices.findall("emulator"))
    for disk in disks:
        devices.remove(disk)
    os_el = root.find("os")
    if os_el is not None:
        for boot in os_el.findall("boot"):
            os_el.remove(boot)  # libvirt refuses <os><boot> beside per-device boot orders
    new = [disk_xml.disk(DiskSpec("file", str(rescue_disk), RESCUE_TARGET, fmt="qcow2",
                                  boot_order=1))]
    if own is not None:
        second = copy.deepcopy(own)
        for child in second.findall("boot") + second.findall("address"):
            second.remove(child)
        target = second.find("target")
        if target is None:
            target = etree.SubElement(second, "target")
        target.attrib.clear()
        target.set("dev", ROOT_TARGET)
        target.set("bus", "virtio")
        new.append(second)
    for offset, disk in enumerate(new):
        devices.insert(place + offset, disk)
    return str(etree.tostring(root, encoding="unicode"))


def boots_rescue_disk(definition: str, rescue_disk: Path) -> bool:
    """True when the definition is a rescue one: a disk of it is rescue_disk."""
    root = _parse(definition)
    return any(source.get("file") == str(rescue_disk)
               for source in root.iterfind("devices/disk/source"))


def save(directory: Path, definition: str) -> Path:
    """Write directory/unrescue.xml whole (staged, fsynced, renamed), mode 0600."""
    final = directory / UNRESCUE_XML
    staged = directory / f".{UNRESCUE_XML}.part"
    staged.unlink(missing_ok=True)
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(definition.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(staged, final)
    return final


def load(directory: Path) -> str | None:
    """The saved definition; None when the instance is not rescued."""
    try:
        fd = os.open(directory / UNRESCUE_XML, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(16 << 20).decode("utf-8")
