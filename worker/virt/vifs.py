"""VIF policy, pure: nova's network model in, checked VIFs out; names, MACs and port ids.

A VIF is nova's ``nova/network/model.py`` VIF as JSON (``id`` the port id, ``address``
the MAC, ``type``, ``devname``, ``network`` with ``id``, ``bridge``, ``label`` and
``subnets``, ``vnic_type``, ``details``), or is derived from nova's NetworkRequest
(``network_id``, ``port_id``, ``address``). Everything is checked here, before a tap, a
bridge, a filter or a domain is made from it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import uuid as uuidlib
from dataclasses import dataclass, field, replace
from typing import Any

from worker.errors import ConfigError, InvalidInput, NetworkNotFound

#: VIF types this worker plugs; tap and ethernet are one thing (a tap libvirt does not manage).
TYPES = ("bridge", "tap", "ethernet", "network")
#: nova's VNIC_TYPE_NORMAL: the only kind a tap or a bridge can carry.
VNIC_NORMAL = "normal"
#: nova's NIC_NAME_LEN: tap<port id[:11]> is 14 characters.
NIC_NAME_LEN = 14
#: Linux's IFNAMSIZ less the NUL.
IFNAME_MAX = 15
#: nova and neutron's MAC prefix: fa:16:3e is locally administered and unicast.
MAC_PREFIX = (0xFA, 0x16, 0x3E)
#: A namespace for port ids the worker makes up (uuid5: the same inputs, the same id).
PORT_NAMESPACE = uuidlib.UUID("6f1c1f0e-3b4a-5c2d-9e8f-0a1b2c3d4e5f")
MAX_VIFS = 16
MAX_IPS = 32
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
# Interface names the kernel accepts, and nothing else a shell or a path would treat
# specially: no '/', whitespace, ':' or '%'; not '.' or '..'.
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Subnet:
    """One subnet of a VIF's network: its CIDR (may be unknown), fixed IPs and gateway."""

    cidr: str | None
    ips: tuple[str, ...] = ()
    gateway: str | None = None


@dataclass(frozen=True)
class Vif:
    """One checked VIF: every name in it is safe to hand to the kernel and to libvirt."""

    id: str
    address: str
    type: str
    devname: str | None
    network_id: str | None
    #: The bridge (type bridge) or the libvirt network name (type network); None for a tap.
    bridge: str | None
    label: str | None = None
    subnets: tuple[Subnet, ...] = ()
    vnic_type: str = VNIC_NORMAL
    details: dict[str, Any] = field(default_factory=dict)
    #: nova's device tag (attach_interface's ``tag``), kept in the record only.
    tag: str | None = None

    @property
    def fixed_ips(self) -> tuple[str, ...]:
        """Every fixed IP of every subnet, in order."""
        return tuple(ip for subnet in self.subnets for ip in subnet.ips)

    @property
    def is_tap(self) -> bool:
        """The worker makes the tap and hands it to libvirt unmanaged."""
        return self.type in ("tap", "ethernet")


def check_ifname(name: Any, what: str = "interface name") -> str:
    """name when it is a Linux interface name (1-15 chars, none of '/', space, ':', '%')."""
    if (not isinstance(name, str) or not _IFNAME.fullmatch(name) or name in (".", "..")):
        raise InvalidInput(f"{what} {name!r:.40} is not a Linux interface name (1-{IFNAME_MAX} "
                           "letters, digits, '_', '.' or '-'; not '.' or '..')")
    return name


def check_mac(mac: Any) -> str:
    """The MAC in lowercase colon form; InvalidInput for another shape, a multicast or zero MAC."""
    text = mac.lower() if isinstance(mac, str) else ""
    if not _MAC.fullmatch(text):
        raise InvalidInput(f"MAC address {mac!r:.40} is not six hex pairs joined by ':'")
    if int(text[:2], 16) & 1:
        raise InvalidInput(f"MAC address {text} is multicast; an interface needs a unicast one")
    if text == "00:00:00:00:00:00":
        raise InvalidInput("MAC address 00:00:00:00:00:00 is not a usable address")
    return text


def check_id(value: Any, what: str) -> str:
    """A canonical (lowercase, hyphenated) UUID for a port or network id."""
    try:
        parsed = uuidlib.UUID(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or str(parsed) != value.lower():
        raise InvalidInput(f"{what} {value!r:.60} is not a UUID")
    return str(parsed)


def derive_mac(instance: str, port: str) -> str:
    """A MAC from the instance and port ids: the same on every retry, fa:16:3e:xx:xx:xx."""
    digest = hashlib.sha256(f"{instance}/{port}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (*MAC_PREFIX, *digest[:3]))


def derive_port(instance: str, network: str | None, index: int) -> str:
    """A port id for a request that names none: uuid5 of instance, network and place."""
    return str(uuidlib.uuid5(PORT_NAMESPACE, f"{instance}/{network}/{index}"))


def tap_name(port: str) -> str:
    """nova's devname: tap<port id[:11]>."""
    return ("tap" + port)[:NIC_NAME_LEN]


def parse_bridge_mappings(text: str) -> dict[str, str]:
    """'<network id or label>:<bridge>,...' as a dict; ConfigError for a bad pair or name."""
    found: dict[str, str] = {}
    for pair in (p.strip() for p in text.split(",")):
        if not pair:
            continue
        key, sep, bridge = pair.rpartition(":")
        if not sep or not key.strip():
            raise ConfigError(f"option bridge_mappings: {pair!r:.60} is not <network>:<bridge>")
        try:
            found[key.strip()] = check_ifname(bridge.strip(), "bridge")
        except InvalidInput as exc:
            raise ConfigError(f"option bridge_mappings: {exc.reason}") from None
    return found


def _ip(value: Any, what: str) -> str:
    try:
        return str(ipaddress.ip_address(value)) if isinstance(value, str) else _bad(value, what)
    except ValueError:
        return _bad(value, what)


def _bad(value: Any, what: str) -> str:
    raise InvalidInput(f"{what} {value!r:.60} is not an IP address")


def _subnets(network: dict[str, Any]) -> tuple[Subnet, ...]:
    raw = network.get("subnets") or []
    if not isinstance(raw, list) or len(raw) > MAX_IPS:
        raise InvalidInput(f"network subnets must be a list of at most {MAX_IPS}")
    made: list[Subnet] = []
    for subnet in raw:
        if not isinstance(subnet, dict):
            raise InvalidInput("a subnet is not an object")
        cidr = subnet.get("cidr")
        if cidr is not None:
            try:
                cidr = str(ipaddress.ip_network(cidr, strict=False)) if isinstance(
                    cidr, str) else _bad(cidr, "subnet cidr")
            except ValueError:
                raise InvalidInput(f"subnet cidr {cidr!r:.60} is not a CIDR") from None
        ips = subnet.get("ips") or []
        if not isinstance(ips, list) or len(ips) > MAX_IPS:
            raise InvalidInput(f"subnet ips must be a list of at most {MAX_IPS}")
        addresses = tuple(_ip(ip.get("address") if isinstance(ip, dict) else ip, "fixed IP")
                          for ip in ips)
        gateway = subnet.get("gateway")
        if isinstance(gateway, dict):  # nova's model: gateway is an IP object
            gateway = gateway.get("address")
        made.append(Subnet(cidr, addresses, None if gateway is None else _ip(gateway, "gateway")))
    return tuple(made)


def from_model(entry: Any, instance: str, index: int, mappings: dict[str, str]) -> Vif:
    """A checked Vif from one entry of nova's network_info (a VIF as JSON)."""
    if not isinstance(entry, dict):
        raise InvalidInput("a VIF is not an object")
    network = entry.get("network") or {}
    if not isinstance(network, dict):
        raise InvalidInput("a VIF's network is not an object")
    network_id = network.get("id")
    network_id = None if network_id is None else check_id(network_id, "network id")
    port = (check_id(entry["id"], "port id") if entry.get("id") is not None
            else derive_port(instance, network_id, index))
    kind = entry.get("type") or ("bridge" if network.get("bridge") else "tap")
    if kind not in TYPES:
        raise InvalidInput(f"VIF type {kind!r:.40} is not one of {', '.join(TYPES)}")
    vnic = entry.get("vnic_type") or VNIC_NORMAL
    if vnic != VNIC_NORMAL:
        raise InvalidInput(f"vnic_type {vnic!r:.40} is not supported (only {VNIC_NORMAL})")
    details = entry.get("details")
    details = {} if details is None else details
    if not isinstance(details, dict):
        raise InvalidInput("a VIF's details is not an object")
    label = network.get("label")
    bridge = network.get("bridge")
    if kind in ("bridge", "network") and not bridge:
        bridge = _mapped(mappings, network_id, label)
    devname = entry.get("devname")
    if kind == "network":
        if not isinstance(bridge, str) or not _NETWORK_NAME.fullmatch(bridge):
            raise InvalidInput(f"libvirt network name {bridge!r:.40} is not 1-64 letters, "
                               "digits, '_', '.' or '-'")
    elif kind == "bridge":
        bridge = check_ifname(bridge, "bridge")
    else:
        bridge = None
    devname = check_ifname(devname, "devname") if devname is not None else tap_name(port)
    address = (check_mac(entry["address"]) if entry.get("address") is not None
               else derive_mac(instance, port))
    return Vif(id=port, address=address, type=kind, devname=devname, network_id=network_id,
               bridge=bridge, label=label if isinstance(label, str) else None,
               subnets=_subnets(network), vnic_type=vnic, details=dict(details))


def _mapped(mappings: dict[str, str], network_id: str | None, label: Any) -> str:
    for key in (network_id, label):
        if isinstance(key, str) and key in mappings:
            return mappings[key]
    raise NetworkNotFound(f"Network {network_id or label} could not be found.")


def from_request(request: Any, instance: str, index: int, mappings: dict[str, str]) -> Vif:
    """A checked bridge Vif from nova's NetworkRequest (network_id, port_id, address).

    ``address`` is nova's requested fixed IP (NetworkRequest.address), not a MAC.
    """
    if not isinstance(request, dict):
        raise InvalidInput("a network request is not an object")
    network_id = request.get("network_id")
    if network_id is None:
        raise InvalidInput("a network request names no network_id (this worker has no "
                           "neutron to look a port up in)")
    network_id = check_id(network_id, "network id")
    port = request.get("port_id")
    ip = request.get("address")
    subnets = (Subnet(None, (_ip(ip, "requested IP"),)),) if ip is not None else ()
    entry: dict[str, Any] = {"id": port, "type": "bridge", "details": {},
                             "network": {"id": network_id, "bridge": None, "subnets": []}}
    made = from_model(entry, instance, index, mappings)
    return replace(made, subnets=subnets)


def vifs_of(args: dict[str, Any], instance: str, mappings: dict[str, str]) -> list[Vif]:
    """The VIFs of a build: ``network_info`` when given, else nova's requested_networks."""
    info = args.get("network_info")
    if info:
        entries = info if isinstance(info, list) else []
        made = [from_model(e, instance, i, mappings) for i, e in enumerate(entries)]
    else:
        requests = [r for r in args.get("requested_networks") or []
                    if not (isinstance(r, dict) and r.get("network_id") in ("none", "auto"))]
        made = [from_request(r, instance, i, mappings) for i, r in enumerate(requests)]
    return unique(made)


def unique(vifs: list[Vif]) -> list[Vif]:
    """vifs when no two share a port id, MAC or devname, and there are not too many."""
    if len(vifs) > MAX_VIFS:
        raise InvalidInput(f"{len(vifs)} VIFs; at most {MAX_VIFS}")
    for attr in ("id", "address", "devname"):
        values = [getattr(v, attr) for v in vifs]
        dup = next((v for v in values if values.count(v) > 1), None)
        if dup is not None:
            raise InvalidInput(f"two VIFs have the {attr} {dup}")
    return vifs


def to_model(vif: Vif) -> dict[str, Any]:
    """The VIF as nova's network model entry (what attach_interface answers)."""
    return {
        "id": vif.id, "address": vif.address, "type": vif.type, "devname": vif.devname,
        "vnic_type": vif.vnic_type, "details": dict(vif.details), "active": True,
        "ovs_interfaceid": None, "qbh_params": None, "qbg_params": None,
        "preserve_on_delete": False, "profile": {}, "meta": {},
        "network": {
            "id": vif.network_id, "bridge": vif.bridge, "label": vif.label,
            "meta": {}, "subnets": [
                {"cidr": s.cidr, "gateway": ({"address": s.gateway, "type": "gateway",
                                              "version": _version(s.gateway), "meta": {}}
                                             if s.gateway else None),
                 "ips": [{"address": ip, "type": "fixed", "version": _version(ip),
                          "floating_ips": [], "meta": {}} for ip in s.ips],
                 "dns": [], "routes": [], "meta": {}, "version": _version(s.cidr)}
                for s in vif.subnets]},
    }


def _version(address: str | None) -> int | None:
    if address is None:
        return None
    return ipaddress.ip_network(address, strict=False).version


def alias(port: str) -> str:
    """The user alias libvirt keeps on the interface: how a detach finds it again."""
    return f"ua-{port}"


def filter_name(port: str) -> str:
    """The nwfilter the worker defines for one VIF."""
    return f"compute-worker-{port}"
