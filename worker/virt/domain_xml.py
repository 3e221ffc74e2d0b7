"""Domain XML built with lxml element by element; never by formatting strings."""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass

from lxml import etree

from worker.errors import UnsafePath
from worker.virt import console_xml, disk_xml, interface_xml
from worker.virt.disk_xml import DiskSpec
from worker.virt.interface_xml import InterfaceSpec

# libvirt and QEMU use a domain's name as a file name in their own state
# directories: ".." there once made libvirtd delete entries of its state
# directory. The schema refuses such names; this is the second line, for
# names that reach the builder another way. Keep it equal to the
# domain_name pattern of schemas/rpc/definitions.json (a unit test does).
DOMAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> str:
    """name when it is safe as a domain name everywhere libvirt puts it; UnsafePath if not."""
    if not isinstance(name, str) or not DOMAIN_NAME.fullmatch(name):
        raise UnsafePath(f"domain name {name!r:.80} is not 1-64 ASCII letters, digits, '.', "
                         "'_' or '-' starting with a letter or digit")
    return name


@dataclass(frozen=True)
class DomainSpec:
    """What a domain needs; policy (which bus, which cache) is chosen by the caller."""

    name: str
    uuid: str
    memory_mib: int = 64
    vcpus: int = 1
    domain_type: str = "kvm"
    arch: str = "x86_64"
    #: Disks in target order. A bare path is a qcow2 file on virtio named vda, vdb, ...
    #: by its place (already checked to be inside instances_path).
    disks: tuple[str | DiskSpec, ...] = ()
    #: Network interfaces (VIFs), in order; their elements come last in <devices>.
    interfaces: tuple[InterfaceSpec, ...] = ()
    #: Where the serial console is logged (instances_path/<uuid>/console.log); None: no
    #: serial console.
    console_log: str | None = None
    #: The address the domain's VNC server listens on; None: no VNC.
    vnc_listen: str | None = None

    def disk_specs(self) -> tuple[DiskSpec, ...]:
        """disks with bare paths made into DiskSpecs."""
        return tuple(d if isinstance(d, DiskSpec)
                     else DiskSpec("file", d, f"vd{chr(ord('a') + index)}")
                     for index, d in enumerate(self.disks))


def _sub(parent: etree._Element, tag: str, text: str | None = None,
         **attrs: str) -> etree._Element:
    element = etree.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def domain(spec: DomainSpec) -> etree._Element:
    """The <domain> element for spec; UnsafePath for a name or UUID libvirt must not see."""
    try:
        canonical = str(uuidlib.UUID(spec.uuid)) == spec.uuid
    except (ValueError, TypeError):
        canonical = False
    if not canonical:
        raise UnsafePath(f"domain uuid {spec.uuid!r:.80} is not a canonical UUID")
    root = etree.Element("domain", type=spec.domain_type)
    _sub(root, "name", check_name(spec.name))
    _sub(root, "uuid", spec.uuid)
    _sub(root, "memory", str(spec.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(spec.vcpus))
    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm", arch=spec.arch)
    disks = spec.disk_specs()
    if not any(d.boot_order is not None for d in disks):
        # libvirt refuses <os><boot> beside per-device boot orders.
        _sub(os_el, "boot", dev="hd")
    features = _sub(root, "features")
    _sub(features, "acpi")  # without ACPI a guest cannot be asked to shut down
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")
    for spec_disk in disks:
        devices.append(disk_xml.disk(spec_disk))
    if any(d.bus == "scsi" for d in disks):
        devices.append(disk_xml.scsi_controller())
    for spec_interface in spec.interfaces:
        devices.append(interface_xml.interface(spec_interface))
    if spec.console_log is not None:
        devices.extend(console_xml.serial_console(spec.console_log))
    if spec.vnc_listen is not None:
        devices.append(console_xml.vnc(spec.vnc_listen))
    return root


def disk(path: str, target_dev: str, *, fmt: str = "qcow2", bus: str = "virtio") -> etree._Element:
    """A file-backed <disk> element."""
    return disk_xml.disk(DiskSpec("file", path, target_dev, bus=bus, fmt=fmt))


def to_string(element: etree._Element) -> str:
    """Serialize for libvirt."""
    return str(etree.tostring(element, encoding="unicode"))
