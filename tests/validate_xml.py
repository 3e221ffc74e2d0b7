"""libvirt's own judge of domain XML: virt-xml-validate (Debian's libvirt-clients)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

from lxml import etree

from worker.virt.disk_xml import DiskSpec
from worker.virt.domain_xml import DomainSpec, domain, to_string

UUID = "11111111-2222-3333-4444-555555555555"


def assert_valid_domain(xml: str) -> None:
    """Fail with virt-xml-validate's words unless xml is a valid libvirt domain."""
    tool = shutil.which("virt-xml-validate")
    assert tool is not None, "virt-xml-validate is missing (Debian package libvirt-clients)"
    with tempfile.NamedTemporaryFile("w", suffix=".xml", encoding="utf-8") as handle:
        handle.write(xml)
        handle.flush()
        done = subprocess.run([tool, handle.name, "domain"], capture_output=True, text=True,
                              timeout=30, check=False)
    assert 0 == done.returncode, f"{done.stdout}{done.stderr}\n{xml}"


def in_domain(*disks: DiskSpec) -> str:
    """A minimal domain holding disks, as the domain builder makes it."""
    return to_string(domain(DomainSpec(name="vm1", uuid=UUID, disks=disks)))


def disk_of(domain_xml: str) -> list[etree._Element]:
    """The <disk> elements of a domain XML."""
    return list(etree.fromstring(domain_xml.encode("utf-8")).iterfind("devices/disk"))
