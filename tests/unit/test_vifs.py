"""VIF policy: nova's network model and NetworkRequests to checked VIFs, names, MACs, ports."""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.support import PROPERTY
from worker.errors import ConfigError, InvalidInput, NetworkNotFound
from worker.virt import vifs

INSTANCE = "0d6f3f4e-8a5b-4c1e-9f7a-3b2c1d0e9f8a"
NET = "1b2c3d4e-5f60-4718-9a2b-3c4d5e6f7081"
PORT = "6a7b8c9d-0e1f-4a2b-8c3d-4e5f6a7b8c9d"


def model(**overrides: Any) -> dict[str, Any]:
    """A bridge VIF as nova's network model has it."""
    entry: dict[str, Any] = {
        "id": PORT, "address": "fa:16:3e:12:34:56", "type": "bridge", "devname": "tap6a7b8c9d-0e",
        "vnic_type": "normal", "details": {"port_filter": True},
        "network": {"id": NET, "bridge": "br100", "label": "private", "subnets": [
            {"cidr": "10.0.0.0/24", "ips": [{"address": "10.0.0.5", "type": "fixed"}],
             "gateway": {"address": "10.0.0.1"}}]}}
    entry.update(overrides)
    return entry


def test_a_nova_model_entry_becomes_a_checked_vif() -> None:
    """Every field nova's model carries reaches the VIF."""
    vif = vifs.from_model(model(), INSTANCE, 0, {})

    assert (PORT, "fa:16:3e:12:34:56", "bridge", "tap6a7b8c9d-0e", "br100", NET, "private") == (
        vif.id, vif.address, vif.type, vif.devname, vif.bridge, vif.network_id, vif.label)
    assert (vifs.Subnet("10.0.0.0/24", ("10.0.0.5",), "10.0.0.1"),) == vif.subnets
    assert ("10.0.0.5",) == vif.fixed_ips


def test_a_request_maps_its_network_to_a_bridge_and_derives_mac_and_devname() -> None:
    """network_id -> bridge via bridge_mappings; the MAC from instance and port; nova's devname."""
    mappings = vifs.parse_bridge_mappings(f"physnet:brX, {NET}:br-int ")
    vif = vifs.from_request({"network_id": NET, "port_id": PORT, "address": "10.1.0.9"},
                            INSTANCE, 0, mappings)

    assert ("bridge", "br-int", "tap6a7b8c9d-0e", vifs.derive_mac(INSTANCE, PORT)) == (
        vif.type, vif.bridge, vif.devname, vif.address)
    assert ("10.1.0.9",) == vif.fixed_ips


def test_a_label_maps_too_and_an_unmapped_network_is_nova_s_network_not_found() -> None:
    """bridge_mappings keys are network ids or labels; neither is NetworkNotFound."""
    entry = model(network={"id": NET, "bridge": None, "label": "physnet", "subnets": []})
    assert "brX" == vifs.from_model(entry, INSTANCE, 0, {"physnet": "brX"}).bridge
    with pytest.raises(NetworkNotFound):
        vifs.from_model(entry, INSTANCE, 0, {"other": "brY"})


def test_derived_mac_and_port_are_stable_unicast_and_locally_administered() -> None:
    """The same inputs give the same MAC and port on every retry; fa:16:3e as nova's."""
    mac = vifs.derive_mac(INSTANCE, PORT)
    assert mac == vifs.derive_mac(INSTANCE, PORT)
    assert mac.startswith("fa:16:3e:") and mac == vifs.check_mac(mac)
    assert int(mac[:2], 16) & 2 and not int(mac[:2], 16) & 1
    port = vifs.derive_port(INSTANCE, NET, 1)
    assert port == vifs.derive_port(INSTANCE, NET, 1) != vifs.derive_port(INSTANCE, NET, 2)
    assert port == str(uuidlib.UUID(port))
    no_port = vifs.from_request({"network_id": NET}, INSTANCE, 3, {NET: "br0"})
    assert vifs.derive_port(INSTANCE, NET, 3) == no_port.id


@pytest.mark.parametrize("name", ["", "a" * 16, "eth/0", "eth 0", "eth:0", "eth%0", ".", "..",
                                  "tap\n", "täp", None, 7])
def test_bad_interface_names_are_refused(name: Any) -> None:
    """devname and bridge names must be Linux interface names."""
    with pytest.raises(InvalidInput):
        vifs.from_model(model(devname=name) if name is not None else
                        model(network={"id": NET, "bridge": 7}), INSTANCE, 0, {})
    with pytest.raises(InvalidInput):
        vifs.check_ifname(name)


@pytest.mark.parametrize("name", ["a", "tap1234567890a", "br-int", "br_1.100", "a" * 15])
def test_good_interface_names_pass(name: str) -> None:
    """1-15 letters, digits, '_', '.', '-'."""
    assert name == vifs.check_ifname(name)


@pytest.mark.parametrize("mac", ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "33:33:00:00:00:01",
                                 "00:00:00:00:00:00", "fa:16:3e:12:34", "fa-16-3e-12-34-56",
                                 "fa:16:3e:12:34:5g", 12])
def test_multicast_broadcast_and_malformed_macs_are_refused(mac: Any) -> None:
    """A VIF's MAC must be unicast and well formed."""
    with pytest.raises(InvalidInput):
        vifs.from_model(model(address=mac), INSTANCE, 0, {})


@pytest.mark.parametrize("overrides", [
    {"id": "not-a-uuid"}, {"type": "vhostuser"}, {"vnic_type": "direct"},
    {"network": {"id": "x", "bridge": "br0"}}, {"details": []},
    {"network": {"id": NET, "bridge": "br0", "subnets": [{"cidr": "10.0.0.0/33"}]}},
    {"network": {"id": NET, "bridge": "br0", "subnets": [{"ips": [{"address": "10.0.0.300"}]}]}},
    {"type": "network", "network": {"id": NET, "bridge": "../default"}},
])
def test_wrong_shapes_are_nova_s_invalid_input(overrides: dict[str, Any]) -> None:
    """Port ids, types, vnic types, networks, CIDRs and IPs of a wrong shape are refused."""
    with pytest.raises(InvalidInput):
        vifs.from_model(model(**overrides), INSTANCE, 0, {})


def test_two_vifs_may_not_share_a_port_a_mac_or_a_devname() -> None:
    """A build's VIFs are told apart by port, MAC and devname."""
    one = vifs.from_model(model(), INSTANCE, 0, {})
    other = vifs.from_model(model(id=str(uuidlib.uuid4()), address="fa:16:3e:00:00:01",
                                  devname="tapother"), INSTANCE, 1, {})
    assert [one, other] == vifs.unique([one, other])
    with pytest.raises(InvalidInput):
        vifs.unique([one, one])


def test_network_info_wins_and_none_requests_are_no_networks() -> None:
    """network_info when given; requested_networks 'none'/'auto' are no VIF."""
    args = {"network_info": [model()], "requested_networks": [{"network_id": NET}]}
    assert [PORT] == [v.id for v in vifs.vifs_of(args, INSTANCE, {})]
    assert [] == vifs.vifs_of({"requested_networks": [{"network_id": "none"}]}, INSTANCE, {})


def test_the_model_round_trips_through_to_model() -> None:
    """to_model gives nova's model entry, which reads back as the same VIF."""
    vif = vifs.from_model(model(), INSTANCE, 0, {})
    entry = vifs.to_model(vif)
    assert {"id", "address", "type", "devname", "network", "vnic_type", "details"} <= set(entry)
    assert vif == vifs.from_model(entry, INSTANCE, 0, {})


@pytest.mark.parametrize("text", ["br0", "net:", ":br0", "net:bad/name", "net:" + "b" * 16])
def test_bad_bridge_mappings_are_a_config_error(text: str) -> None:
    """bridge_mappings pairs are <network>:<bridge> with a valid bridge name."""
    with pytest.raises(ConfigError):
        vifs.parse_bridge_mappings(text)


@PROPERTY
@given(st.text(max_size=20))
def test_any_devname_is_refused_or_is_a_safe_interface_name(name: str) -> None:
    """Whatever a message says, a devname that passes is safe for the kernel and libvirt."""
    try:
        checked = vifs.check_ifname(name)
    except InvalidInput:
        return
    assert 1 <= len(checked) <= 15 and checked not in (".", "..")
    assert not set(checked) & set("/ \t\n:%\x00")
