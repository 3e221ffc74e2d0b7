"""Domain XML built with lxml element by element; never by formatting strings."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree


@dataclass(frozen=True)
class DomainSpec:
    """What a domain needs; policy (which bus, which cache) is chosen by the caller."""

    name: str
    uuid: str
    memory_mib: int = 64
    vcpus: int = 1
    domain_type: str = "kvm"
    arch: str = "x86_64"
    #: Raw or qcow2 disk image paths (already checked to be inside instances_path).
    disks: tuple[str, ...] = ()


def _sub(parent: etree._Element, tag: str, text: str | None = None,
         **attrs: str) -> etree._Element:
    element = etree.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def domain(spec: DomainSpec) -> etree._Element:
    """The <domain> element for spec."""
    root = etree.Element("domain", type=spec.domain_type)
    _sub(root, "name", spec.name)
    _sub(root, "uuid", spec.uuid)
    _sub(root, "memory", str(spec.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(spec.vcpus))
    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm", arch=spec.arch)
    _sub(os_el, "boot", dev="hd")
    features = _sub(root, "features")
    _sub(features, "acpi")  # without ACPI a guest cannot be asked to shut down
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")
    for index, path in enumerate(spec.disks):
        devices.append(disk(path, f"vd{chr(ord('a') + index)}"))
    return root


def disk(path: str, target_dev: str, *, fmt: str = "qcow2", bus: str = "virtio") -> etree._Element:
    """A file-backed <disk> element."""
    element = etree.Element("disk", type="file", device="disk")
    _sub(element, "driver", name="qemu", type=fmt)
    _sub(element, "source", file=path)
    _sub(element, "target", dev=target_dev, bus=bus)
    return element


def to_string(element: etree._Element) -> str:
    """Serialize for libvirt."""
    return str(etree.tostring(element, encoding="unicode"))
