"""Console devices: a serial port logged by virtlogd, its console, and a VNC server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from tests.unit.support import PROPERTY, UUID
from tests.unit.test_domain_xml import canonical
from worker.errors import UnsafePath
from worker.virt import console_xml
from worker.virt.domain_xml import DomainSpec, domain, to_string

LOG = f"/srv/instances/{UUID}/console.log"
CONSOLE_DEVICES = f"""
<devices>
  <serial type="pty"><log file="{LOG}" append="off"/><target port="0"/></serial>
  <console type="pty"><target type="serial" port="0"/></console>
  <graphics type="vnc" autoport="yes" listen="127.0.0.1">
    <listen type="address" address="127.0.0.1"/>
  </graphics>
</devices>
"""


def test_a_spec_with_a_console_log_and_vnc_ends_its_devices_with_them() -> None:
    """Serial (logged), console and VNC come last in <devices>, after the disks."""
    spec = DomainSpec(name="vm1", uuid=UUID, disks=(f"/srv/instances/{UUID}/disk",),
                      console_log=LOG, vnc_listen="127.0.0.1")

    devices = domain(spec).find("devices")

    assert ["disk", "serial", "console", "graphics"] == [d.tag for d in devices]
    for disk in devices.findall("disk"):
        devices.remove(disk)
    assert canonical(CONSOLE_DEVICES) == canonical(etree.tostring(devices, encoding="unicode"))


def test_a_spec_without_them_has_no_console_and_no_vnc() -> None:
    """The new fields default to nothing: domains built before keep their shape."""
    xml = to_string(domain(DomainSpec(name="vm1", uuid=UUID)))

    assert [] == etree.fromstring(xml).findall("devices/*")


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "0.0.0.0", "compute-01.example.org"])
def test_vnc_listens_on_the_address_given(address: str) -> None:
    """An IP literal or a host name is the listen address, in both places libvirt reads."""
    graphics = console_xml.vnc(address)

    assert (address, address) == (graphics.get("listen"), graphics.find("listen").get("address"))


@given(st.text(max_size=40))
@PROPERTY
def test_a_listen_address_that_is_no_address_is_refused(address: str) -> None:
    """Anything but an IP literal or a host name never reaches libvirt."""
    try:
        built = console_xml.vnc(address)
    except UnsafePath:
        return
    assert address == built.get("listen")
    assert all(c.isalnum() or c in ".-:" for c in address)


@pytest.mark.parametrize("path", ["console.log", f"/srv/instances/{UUID}/../x/console.log",
                                  "/srv//console.log"])
def test_a_console_log_that_is_not_an_absolute_normal_path_is_refused(path: str) -> None:
    """The builder's last line: the log file is the one the worker named."""
    with pytest.raises(UnsafePath):
        console_xml.serial_console(path)


@pytest.mark.parametrize(("graphics", "port"), [
    ('<graphics type="vnc" port="5901" autoport="yes"/>', 5901),
    ('<graphics type="vnc" port="-1" autoport="yes"/>', None),
    ('<graphics type="spice" port="5902"/>', None),
    ("", None),
    ('<graphics type="vnc" port="x"/>', None),
])
def test_the_vnc_port_is_read_from_the_live_xml(graphics: str, port: int | None) -> None:
    """The listening port of the first VNC server; none when off (-1) or absent."""
    xml = f"<domain><devices>{graphics}</devices></domain>"

    assert port == console_xml.vnc_port(xml)
