"""<interface> and nwfilter XML: golden output, libvirt's schema, and the policy that fills them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from tests.unit.support import UUID
from tests.validate_xml import assert_valid_domain
from worker import config
from worker.virt import interface_xml, vifs
from worker.virt.domain_xml import DomainSpec, domain, to_string
from worker.virt.interface_xml import FilterSpec, InterfaceSpec
from worker.virt.paths import InstancePaths
from worker.virt.plugging import Plugged, Plumbing

PORT = "6a7b8c9d-0e1f-4a2b-8c3d-4e5f6a7b8c9d"
BRIDGE = InterfaceSpec("bridge", "fa:16:3e:12:34:56", source="br100", target="tap6a7b8c9d-0e",
                       alias=f"ua-{PORT}", filter=f"compute-worker-{PORT}",
                       filter_params=(("IP", "10.0.0.5"), ("IP", "10.0.0.6")))
TAP = InterfaceSpec("ethernet", "fa:16:3e:00:00:02", target="tapabc", model=None)
NETWORK = InterfaceSpec("network", "fa:16:3e:00:00:03", source="default")


def canonical(xml: str) -> bytes:
    """C14N of xml with whitespace between elements dropped."""
    parser = etree.XMLParser(remove_blank_text=True)
    return etree.tostring(etree.fromstring(xml.encode(), parser), method="c14n")


def test_a_bridge_interface_matches_the_golden_xml() -> None:
    """Type, MAC, source bridge, target, model, filter with its IPs, alias."""
    golden = f"""
    <interface type="bridge">
      <mac address="fa:16:3e:12:34:56"/>
      <source bridge="br100"/>
      <target dev="tap6a7b8c9d-0e"/>
      <model type="virtio"/>
      <filterref filter="compute-worker-{PORT}">
        <parameter name="IP" value="10.0.0.5"/>
        <parameter name="IP" value="10.0.0.6"/>
      </filterref>
      <alias name="ua-{PORT}"/>
    </interface>"""
    assert canonical(golden) == canonical(interface_xml.to_string(interface_xml.interface(BRIDGE)))


def test_a_tap_is_handed_to_libvirt_unmanaged_and_a_network_by_name() -> None:
    """ethernet: <target managed='no'>; network: <source network=...>."""
    assert canonical('<interface type="ethernet"><mac address="fa:16:3e:00:00:02"/>'
                     '<target dev="tapabc" managed="no"/></interface>') == canonical(
        interface_xml.to_string(interface_xml.interface(TAP)))
    assert canonical('<interface type="network"><mac address="fa:16:3e:00:00:03"/>'
                     '<source network="default"/><model type="virtio"/></interface>') == canonical(
        interface_xml.to_string(interface_xml.interface(NETWORK)))


def test_interfaces_come_last_in_devices_and_libvirt_s_schema_accepts_the_domain() -> None:
    """virt-xml-validate on a domain with one interface of each kind."""
    xml = to_string(domain(DomainSpec(name="vm1", uuid=UUID, disks=("/srv/disk",),
                                      interfaces=(BRIDGE, TAP, NETWORK))))
    devices = etree.fromstring(xml.encode()).find("devices")
    assert devices is not None
    assert ["disk", "interface", "interface", "interface"] == [e.tag for e in devices]
    assert_valid_domain(xml)


def test_the_nwfilter_allowing_the_subnet_matches_the_golden_xml() -> None:
    """allow_same_net_traffic: clean-traffic, and the subnets accepted."""
    golden = """
    <filter name="f" chain="root">
      <filterref filter="clean-traffic"/>
      <rule action="accept" direction="in" priority="400">
        <ip srcipaddr="10.0.0.0" srcipmask="24"/></rule>
      <rule action="accept" direction="in" priority="400">
        <ipv6 srcipaddr="fd00::" srcipmask="64"/></rule>
    </filter>"""
    spec = FilterSpec("f", ("10.0.0.0/24", "fd00::/64"), ("10.0.0.1",), allow_same_net=True)
    assert canonical(golden) == canonical(interface_xml.to_string(interface_xml.nwfilter(spec)))


def test_the_nwfilter_refusing_the_subnet_still_lets_the_gateway_in() -> None:
    """allow_same_net_traffic off: the gateway accepted first, the rest of the subnet dropped."""
    golden = """
    <filter name="f" chain="root">
      <filterref filter="clean-traffic"/>
      <rule action="accept" direction="in" priority="300">
        <ip srcipaddr="10.0.0.1" srcipmask="32"/></rule>
      <rule action="drop" direction="in" priority="400">
        <ip srcipaddr="10.0.0.0" srcipmask="24"/></rule>
    </filter>"""
    spec = FilterSpec("f", ("10.0.0.0/24",), ("10.0.0.1",), allow_same_net=False)
    assert canonical(golden) == canonical(interface_xml.to_string(interface_xml.nwfilter(spec)))


@pytest.mark.parametrize("allow", [True, False])
def test_libvirt_s_schema_accepts_the_nwfilter(tmp_path: Path, allow: bool) -> None:
    """virt-xml-validate ... nwfilter."""
    tool = shutil.which("virt-xml-validate")
    assert tool is not None
    path = tmp_path / "f.xml"
    path.write_text(interface_xml.to_string(interface_xml.nwfilter(
        FilterSpec("compute-worker-x", ("10.0.0.0/24", "fd00::/64"), ("10.0.0.1",), allow))))
    done = subprocess.run([tool, str(path), "nwfilter"], capture_output=True, text=True,
                          check=False, timeout=30)
    assert 0 == done.returncode, done.stdout + done.stderr


def test_the_policy_gives_each_vif_its_interface_and_filter(tmp_path: Path) -> None:
    """A tap VIF is ethernet with its devname; virtio unless use_virtio_for_bridges is off."""
    vif = vifs.from_model({"id": PORT, "address": "fa:16:3e:12:34:56", "type": "tap",
                           "network": {"id": None, "subnets": [
                               {"cidr": "10.0.0.0/24", "ips": [{"address": "10.0.0.5"}]},
                               {"cidr": "fd00::/64", "ips": [{"address": "fd00::5"}]}]}},
                          UUID, 0, {})
    plugged = Plugged(vif, made_tap=True, filter=vifs.filter_name(PORT))
    on = Plumbing(None, config.build({}), InstancePaths(str(tmp_path)))  # type: ignore[arg-type]
    off = Plumbing(None, config.build({"use_virtio_for_bridges": False}),  # type: ignore[arg-type]
                   InstancePaths(str(tmp_path)))
    spec = on.interface(plugged)
    assert ("ethernet", "tap6a7b8c9d-0e", "virtio", f"ua-{PORT}") == (
        spec.kind, spec.target, spec.model, spec.alias)
    assert ((("IP", "10.0.0.5"),), f"compute-worker-{PORT}") == (spec.filter_params, spec.filter)
    assert off.interface(plugged).model is None
    assert ("10.0.0.0/24", "fd00::/64") == on.filter_spec(vif).subnets
