"""<disk> elements from small lxml builders: what a disk is, never which bus or cache to pick.

The policy (bus, target name, format) is decided elsewhere (``virt/volumes.py``,
``handlers/``) and arrives here as a DiskSpec; this module only turns a checked
spec into XML, so one test per kind of disk pins its shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree

from worker.errors import UnsafePath

#: Buses a disk may sit on, and the prefix of its target names there.
BUS_PREFIXES = {"virtio": "vd", "scsi": "sd", "sata": "sd"}
#: Target names libvirt gives disks on those buses: vda..vdz, vdaa.., sda...
TARGET = re.compile(r"(vd|sd)[a-z]{1,2}")
#: Formats QEMU opens a disk as; named explicitly so a file cannot choose (no probing).
FORMATS = ("raw", "qcow2")
NETWORK_PROTOCOLS = ("rbd", "nbd")


@dataclass(frozen=True)
class NetworkHost:
    """One server of a network disk."""

    name: str
    port: int | None = None


@dataclass(frozen=True)
class Auth:
    """Credentials of a network disk: a libvirt secret named by its UUID."""

    username: str
    secret_type: str
    secret_uuid: str


@dataclass(frozen=True)
class DiskSpec:
    """One disk of a domain.

    kind is libvirt's disk type: ``file`` (source is a path), ``block`` (a
    block device path) or ``network`` (source is the image or export name on
    hosts, by protocol).
    """

    kind: str
    source: str
    target: str
    bus: str = "virtio"
    fmt: str = "qcow2"
    #: nova sets the volume id here: how a volume's disk is found again to detach it.
    serial: str | None = None
    #: 1 for the disk the guest boots from; None for the others.
    boot_order: int | None = None
    protocol: str | None = None
    hosts: tuple[NetworkHost, ...] = ()
    auth: Auth | None = None


def _sub(parent: etree._Element, tag: str, text: str | None = None,
         **attrs: str) -> etree._Element:
    element = etree.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _check(spec: DiskSpec) -> None:
    # The last line before libvirt: the policy has already checked all of this.
    if spec.bus not in BUS_PREFIXES:
        raise UnsafePath(f"disk bus {spec.bus!r:.40} is not one of {', '.join(BUS_PREFIXES)}")
    if not TARGET.fullmatch(spec.target) or not spec.target.startswith(BUS_PREFIXES[spec.bus]):
        raise UnsafePath(f"disk target {spec.target!r:.40} does not fit bus {spec.bus}")
    if spec.fmt not in FORMATS:
        raise UnsafePath(f"disk format {spec.fmt!r:.40} is not one of {', '.join(FORMATS)}")
    if spec.kind in ("file", "block") and not spec.source.startswith("/"):
        raise UnsafePath(f"disk source {spec.source!r:.80} is not an absolute path")
    if spec.kind == "network" and spec.protocol not in NETWORK_PROTOCOLS:
        raise UnsafePath(f"network disk protocol {spec.protocol!r:.40} is not supported")
    if spec.kind not in ("file", "block", "network"):
        raise UnsafePath(f"disk kind {spec.kind!r:.40} is not file, block or network")


def disk(spec: DiskSpec) -> etree._Element:
    """The <disk> element for spec."""
    _check(spec)
    element = etree.Element("disk", type=spec.kind, device="disk")
    _sub(element, "driver", name="qemu", type=spec.fmt)
    if spec.kind == "file":
        _sub(element, "source", file=spec.source)
    elif spec.kind == "block":
        _sub(element, "source", dev=spec.source)
    else:
        assert spec.protocol is not None
        source = _sub(element, "source", protocol=spec.protocol, name=spec.source)
        for host in spec.hosts:
            attrs = {"name": host.name}
            if host.port is not None:
                attrs["port"] = str(host.port)
            _sub(source, "host", **attrs)
        if spec.auth is not None:
            # libvirt reads the key from its secret store; it never passes through us.
            auth = _sub(element, "auth", username=spec.auth.username)
            _sub(auth, "secret", type=spec.auth.secret_type, uuid=spec.auth.secret_uuid)
    _sub(element, "target", dev=spec.target, bus=spec.bus)
    if spec.serial is not None:
        _sub(element, "serial", spec.serial)
    if spec.boot_order is not None:
        _sub(element, "boot", order=str(spec.boot_order))
    return element


def scsi_controller() -> etree._Element:
    """A virtio-scsi controller, as nova adds for scsi disks (QEMU's lsi default is slow)."""
    return etree.Element("controller", type="scsi", index="0", model="virtio-scsi")


def targets(domain_xml: str) -> set[str]:
    """The target names of every disk in a domain XML."""
    root = etree.fromstring(domain_xml.encode("utf-8"))
    return {str(t.get("dev")) for t in root.iterfind("devices/disk/target")}


def by_serial(domain_xml: str, serial: str) -> etree._Element | None:
    """The <disk> whose <serial> is serial (a volume's id), or None."""
    root = etree.fromstring(domain_xml.encode("utf-8"))
    for found in root.iterfind("devices/disk"):
        if found.findtext("serial") == serial:
            return found
    return None


def alias(disk_element: etree._Element) -> str | None:
    """The <alias name> libvirt gave a device of a running domain (how its unplug is named)."""
    found = disk_element.find("alias")
    return None if found is None else found.get("name")


def has_scsi_controller(domain_xml: str) -> bool:
    """True when the domain has a SCSI controller (a scsi disk needs one to sit on)."""
    root = etree.fromstring(domain_xml.encode("utf-8"))
    return root.find("devices/controller[@type='scsi']") is not None
