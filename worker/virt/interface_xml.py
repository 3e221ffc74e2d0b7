"""<interface> and <filter> (nwfilter) elements, built with lxml; the policy is vifs.py's."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from lxml import etree

#: libvirt's own anti-spoofing filter (no spoofed MAC, IP or ARP), shipped with libvirt.
CLEAN_TRAFFIC = "clean-traffic"
#: Rule priorities (lower runs first): the gateway's accept before the subnet's rule.
GATEWAY_PRIORITY, SUBNET_PRIORITY = "300", "400"


@dataclass(frozen=True)
class InterfaceSpec:
    """One <interface>: which kind, its MAC, where it plugs, and its filter."""

    #: libvirt's interface type: bridge, ethernet (a tap the worker made) or network.
    kind: str
    mac: str
    #: The bridge (kind bridge) or the libvirt network's name (kind network).
    source: str | None = None
    #: The tap's name; for kind ethernet it exists already and libvirt must not manage it.
    target: str | None = None
    model: str | None = "virtio"
    #: A user alias (ua-...): how the interface is found again in live and saved XML.
    alias: str | None = None
    filter: str | None = None
    #: Parameters of the filterref, in order (IP once per fixed IP).
    filter_params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class FilterSpec:
    """A per-VIF nwfilter: clean-traffic, plus what instances of the same subnets may do."""

    name: str
    #: CIDRs of the VIF's subnets.
    subnets: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    #: allow_same_net_traffic: accept the subnets; otherwise drop them but the gateways.
    allow_same_net: bool = True


def _sub(parent: etree._Element, tag: str, **attrs: str) -> etree._Element:
    return etree.SubElement(parent, tag, attrs)


def interface(spec: InterfaceSpec) -> etree._Element:
    """The <interface> element for spec."""
    root = etree.Element("interface", type=spec.kind)
    _sub(root, "mac", address=spec.mac)
    if spec.kind == "bridge" and spec.source:
        _sub(root, "source", bridge=spec.source)
    elif spec.kind == "network" and spec.source:
        _sub(root, "source", network=spec.source)
    if spec.target:
        target = _sub(root, "target", dev=spec.target)
        if spec.kind == "ethernet":
            target.set("managed", "no")  # the worker made the tap and removes it
    if spec.model:
        _sub(root, "model", type=spec.model)
    if spec.filter:
        ref = _sub(root, "filterref", filter=spec.filter)
        for name, value in spec.filter_params:
            _sub(ref, "parameter", name=name, value=value)
    if spec.alias:
        _sub(root, "alias", name=spec.alias)
    return root


def _match(parent: etree._Element, cidr_or_ip: str) -> None:
    network = ipaddress.ip_network(cidr_or_ip, strict=False)
    tag = "ip" if network.version == 4 else "ipv6"
    _sub(parent, tag, srcipaddr=str(network.network_address),
         srcipmask=str(network.prefixlen))


def nwfilter(spec: FilterSpec) -> etree._Element:
    """The <filter> element: clean-traffic, then the same-subnet rules."""
    root = etree.Element("filter", name=spec.name, chain="root")
    _sub(root, "filterref", filter=CLEAN_TRAFFIC)
    if not spec.allow_same_net:
        for gateway in spec.gateways:
            _match(_sub(root, "rule", action="accept", direction="in",
                        priority=GATEWAY_PRIORITY), gateway)
    for cidr in spec.subnets:
        action = "accept" if spec.allow_same_net else "drop"
        _match(_sub(root, "rule", action=action, direction="in", priority=SUBNET_PRIORITY),
               cidr)
    return root


def find_by_alias(domain_xml: str, alias: str) -> etree._Element | None:
    """The <interface> whose alias is alias in a domain's XML, or None."""
    root = etree.fromstring(domain_xml.encode("utf-8"))
    for element in root.iterfind("devices/interface"):
        found = element.find("alias")
        if found is not None and found.get("name") == alias:
            return element
    return None


def by_mac(domain_xml: str, mac: str) -> etree._Element | None:
    """The <interface> with this MAC in a domain's XML, or None."""
    root = etree.fromstring(domain_xml.encode("utf-8"))
    for element in root.iterfind("devices/interface"):
        found = element.find("mac")
        if found is not None and str(found.get("address", "")).lower() == mac:
            return element
    return None


def to_string(element: etree._Element) -> str:
    """Serialize for libvirt."""
    return str(etree.tostring(element, encoding="unicode"))
