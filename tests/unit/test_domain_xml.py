"""Domain XML built with lxml: golden output, and names that cannot inject markup."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from tests.unit.support import PROPERTY, UUID
from worker.errors import UnsafePath
from worker.virt import disk_xml
from worker.virt.disk_xml import Auth, DiskSpec, NetworkHost
from worker.virt.domain_xml import DOMAIN_NAME, DomainSpec, disk, domain, to_string

GOLDEN = f"""
<domain type="kvm">
  <name>vm1</name>
  <uuid>{UUID}</uuid>
  <memory unit="MiB">64</memory>
  <vcpu>1</vcpu>
  <os><type arch="x86_64">hvm</type><boot dev="hd"/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2"/>
      <source file="/srv/instances/{UUID}/disk"/>
      <target dev="vda" bus="virtio"/>
    </disk>
    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2"/>
      <source file="/srv/instances/{UUID}/swap"/>
      <target dev="vdb" bus="virtio"/>
    </disk>
  </devices>
</domain>
"""


def canonical(xml: str) -> bytes:
    """C14N of xml with the whitespace between elements dropped."""
    parser = etree.XMLParser(remove_blank_text=True)
    return bytes(etree.tostring(etree.fromstring(xml, parser), method="c14n"))


def test_domain_matches_the_golden_xml() -> None:
    """A two-disk spec serializes to the golden domain, compared canonically."""
    spec = DomainSpec(name="vm1", uuid=UUID, disks=(f"/srv/instances/{UUID}/disk",
                                                    f"/srv/instances/{UUID}/swap"))

    assert canonical(GOLDEN) == canonical(to_string(domain(spec)))


def test_spec_values_reach_their_elements() -> None:
    """Memory, vCPUs, domain type and arch come from the spec."""
    spec = DomainSpec(name="big", uuid=UUID, memory_mib=2048, vcpus=4, domain_type="qemu",
                      arch="aarch64")

    root = etree.fromstring(to_string(domain(spec)))

    assert ("qemu", "2048", "MiB", "4", "aarch64") == (
        root.get("type"), root.findtext("memory"), root.find("memory").get("unit"),
        root.findtext("vcpu"), root.find("os/type").get("arch"))
    assert [] == root.findall("devices/disk")


def test_disk_element_takes_format_and_bus() -> None:
    """disk() honours fmt and bus."""
    element = disk("/srv/d.raw", "sdb", fmt="raw", bus="scsi")

    assert canonical('<disk type="file" device="disk"><driver name="qemu" type="raw"/>'
                     '<source file="/srv/d.raw"/><target dev="sdb" bus="scsi"/></disk>'
                     ) == canonical(to_string(element))


def _xml_char(c: str) -> bool:
    code = ord(c)
    return (code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD
            or code >= 0x10000)


xml_text = st.text(st.characters().filter(_xml_char), min_size=1, max_size=60)
REFERENCE = to_string(domain(DomainSpec(name="x", uuid=UUID, disks=("/d",))))


def _tags(xml: str) -> list[str]:
    return [el.tag for el in etree.fromstring(xml).iter()]


@PROPERTY
@given(xml_text | st.sampled_from(["</name><name>evil", "<!--", "]]>", "&lt;", "&#0;",
                                   "<?xml version='1.0'?>", "\r\n", " x ", ".", "..", "-x"]))
def test_any_name_is_refused_or_round_trips_and_adds_no_element(name: str) -> None:
    """A name either fails the builder's check or comes back unchanged in an unchanged tree."""
    try:
        xml = to_string(domain(DomainSpec(name=name, uuid=UUID, disks=("/d",))))
    except UnsafePath:
        assert DOMAIN_NAME.fullmatch(name) is None
        return

    root = etree.fromstring(xml)

    assert name == root.findtext("name")
    assert [] == list(root.find("name"))
    assert _tags(REFERENCE) == _tags(xml)


@pytest.mark.parametrize("name", [".", "..", ".x", "-x", "a/b", "a\ufffe", "a\ud800", "", "a" * 65])
def test_builder_refuses_names_unsafe_as_file_names(name: str) -> None:
    """The builder checks the name itself, for names that did not come through a schema."""
    with pytest.raises(UnsafePath):
        domain(DomainSpec(name=name, uuid=UUID))


@pytest.mark.parametrize("uuid", ["../x", "ABCDEF01-2222-3333-4444-555555555555", "not-a-uuid", ""])
def test_builder_refuses_a_non_canonical_uuid(uuid: str) -> None:
    """Only a canonical UUID reaches libvirt, which names files after it too."""
    with pytest.raises(UnsafePath):
        domain(DomainSpec(name="vm1", uuid=uuid))


@PROPERTY
@given(xml_text)
def test_any_disk_path_round_trips_as_one_attribute(path: str) -> None:
    """A disk path with quotes or markup stays one attribute value of one <source>."""
    path = "/" + path  # the builder refuses relative paths outright
    xml = to_string(domain(DomainSpec(name="x", uuid=UUID, disks=(path,))))

    root = etree.fromstring(xml)

    assert [path] == [s.get("file") for s in root.iter("source")]
    assert {"file"} == set(root.find("devices/disk/source").attrib)
    assert _tags(REFERENCE) == _tags(xml)


def _validate(xml: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "domain.xml"
    path.write_text(xml, encoding="utf-8")
    return subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                          text=True, check=False)


def test_every_kind_of_disk_makes_a_domain_libvirt_s_schema_accepts(tmp_path: Path) -> None:
    """virt-xml-validate (libvirt's own RelaxNG schema) on a domain with one disk of each kind."""
    auth = Auth("cinder", "ceph", "5f0e3c2a-1b7d-4c8e-9a6f-2d4b8e1c7a90")
    disks = (
        DiskSpec("file", f"/srv/instances/{UUID}/disk", "vda", boot_order=1),
        DiskSpec("file", f"/srv/instances/{UUID}/disk.eph0", "vdb", fmt="raw"),
        DiskSpec("block", "/dev/loop3", "sda", bus="scsi", fmt="raw", serial="vol-1"),
        DiskSpec("network", "volumes/volume-1", "vdc", fmt="raw", serial="vol-2",
                 protocol="rbd", hosts=(NetworkHost("10.0.0.1", 6789),
                                        NetworkHost("ceph-2")), auth=auth),
        DiskSpec("network", "export", "sdb", bus="sata", fmt="raw", protocol="nbd",
                 hosts=(NetworkHost("127.0.0.1", 10809),)),
    )
    xml = to_string(domain(DomainSpec(name="all-disks", uuid=UUID, disks=disks)))

    done = _validate(xml, tmp_path)

    assert 0 == done.returncode, done.stderr + xml
    root = etree.fromstring(xml)
    assert root.find("os/boot") is None  # per-disk boot order instead
    assert ["virtio-scsi"] == [c.get("model") for c in root.iterfind("devices/controller")]


@pytest.mark.parametrize("spec", [
    DiskSpec("file", "relative/disk", "vda"),
    DiskSpec("file", "/d", "sda"),            # a virtio target name on scsi
    DiskSpec("file", "/d", "vda", bus="ide"),
    DiskSpec("file", "/d", "vda", fmt="vmdk"),
    DiskSpec("network", "x", "vda", protocol="iscsi"),
    DiskSpec("volume", "/d", "vda"),
], ids=["relative", "target of another bus", "bus", "format", "protocol", "kind"])
def test_a_disk_spec_the_policy_should_have_refused_never_reaches_xml(spec: DiskSpec) -> None:
    with pytest.raises(UnsafePath):
        disk_xml.disk(spec)
