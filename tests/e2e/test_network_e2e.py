"""Networks on real QEMU: VIFs plugged into a bridge and a tap with their nwfilters, interfaces
attached and detached, terminate leaving nothing the worker made, hostile VIFs refused.

Taps and bridges are made in the host's namespace under a prefix unique to the test and
removed afterwards, whatever happened.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree
from pyroute2 import IPRoute

from tests.domains import QEMU_URI, Vm, domain_state, remove_domain, state_of
from tests.e2e.support import NAME_PREFIX
from tests.helpers import check_event
from tests.taps import EventTap
from worker.amqp.client import RpcClient
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.e2e
NET = "1b2c3d4e-5f60-4718-9a2b-3c4d5e6f7081"


def links(prefix: str) -> dict[str, str | None]:
    """name -> kind of every link in the host namespace whose name starts with prefix."""
    found: dict[str, str | None] = {}
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if name.startswith(prefix):
                info = link.get_attr("IFLA_LINKINFO")
                found[name] = None if info is None else info.get_attr("IFLA_INFO_KIND")
    return found


def master_of(name: str) -> str | None:
    """The bridge a link is enslaved to."""
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=name)[0]
        master = ipr.get_links(index)[0].get_attr("IFLA_MASTER")
        if master is None:
            return None
        return str(ipr.get_links(master)[0].get_attr("IFLA_IFNAME"))


def bindings() -> dict[str, str]:
    """port device -> filter, as `virsh nwfilter-binding-list` shows them."""
    out = subprocess.run(["virsh", "-c", QEMU_URI, "nwfilter-binding-list"], check=True,
                         capture_output=True, text=True, timeout=30).stdout
    rows = [line.split() for line in out.splitlines()[2:] if line.strip()]
    return {row[0]: row[1] for row in rows if len(row) == 2}


def filters(qemu: libvirt.virConnect, prefix: str = "compute-worker-") -> set[str]:
    """The nwfilters the worker defines (named compute-worker-<port id>)."""
    return {name for name in qemu.listNWFilters() if name.startswith(prefix)}


@dataclass
class Net:
    """A test's names: its link prefix, and the ports it uses."""

    prefix: str
    ports: list[str]

    def port(self) -> str:
        made = str(uuid.uuid4())
        self.ports.append(made)
        return made

    def name(self, role: str) -> str:
        return f"{self.prefix}{role}"


@pytest.fixture
def net(qemu: libvirt.virConnect) -> Iterator[Net]:
    """A unique link prefix; its links and the test's filters are removed afterwards."""
    made = Net(f"cw{uuid.uuid4().hex[:5]}", [])
    yield made
    with IPRoute() as ipr:
        for name in links(made.prefix):
            found = ipr.link_lookup(ifname=name)
            if found:
                ipr.link("del", index=found[0])
    for port in made.ports:
        try:
            qemu.nwfilterLookupByName(f"compute-worker-{port}").undefine()
        except libvirt.libvirtError:
            pass


@pytest.fixture
def net_cfg(make_config: Callable[..., Config], domain_type: str) -> Callable[..., Config]:
    """Configs on qemu:///system with short detach waits."""
    def make(**extra: Any) -> Config:
        values: dict[str, Any] = {"virt_type": domain_type, "build_timeout": 60,
                                  "shutdown_timeout": 1, "device_detach_attempts": 2,
                                  "device_detach_timeout": 2}
        values.update(extra)
        return make_config(**values)
    return make


@dataclass
class Worker:
    """A running worker with its event tap and a client."""

    service: Service
    tap: EventTap
    rpc: RpcClient
    cfg: Config

    def cast(self, method: str, args: dict[str, Any]) -> None:
        self.rpc.cast(self.cfg.host, method, args)

    def end(self, uid: str, action: str, count: int = 1, phase: str = "end") -> dict[str, Any]:
        events = self.tap.wait_type(uid, f"instance.{action}.{phase}", count=count, timeout=90)
        for event in self.tap.of(uid):
            check_event(event)
        data: dict[str, Any] = events[-1]["payload"]["nova_object.data"]
        return data


@pytest.fixture
def start(qemu: libvirt.virConnect, rpc: RpcClient) -> Iterator[Callable[[Config], Worker]]:
    """Starts workers (a test may start a second on the same config); stops them after."""
    started: list[Worker] = []

    def run(cfg: Config) -> Worker:
        tap = EventTap(cfg.transport_url, cfg.control_exchange,
                       cfg.notifications.notification_topic)
        service = Service(cfg)
        service.start()
        started.append(Worker(service, tap, rpc, cfg))
        return started[-1]

    yield run
    for worker in started:
        if not worker.service.stopped.is_set():
            worker.service.stop(grace=30)
        worker.tap.close()


@pytest.fixture
def domains(qemu: libvirt.virConnect) -> Iterator[list[str]]:
    """UUIDs of domains a test builds; removed afterwards."""
    made: list[str] = []
    yield made
    for uid in made:
        remove_domain(qemu, uid)


def vif(port: str, devname: str, kind: str, *, bridge: str | None = None,
        mac: str | None = None, ip: str = "10.9.0.5") -> dict[str, Any]:
    """A VIF as nova's network model has it."""
    return {"id": port, "address": mac, "type": kind, "devname": devname, "vnic_type": "normal",
            "details": {}, "network": {"id": NET, "bridge": bridge, "label": "private",
                                        "subnets": [{"cidr": "10.9.0.0/24",
                                                     "ips": [{"address": ip}],
                                                     "gateway": {"address": "10.9.0.1"}}]}}


def interfaces(qemu: libvirt.virConnect, uid: str, flags: int = 0) -> list[etree._Element]:
    """The <interface> elements of a domain's XML (live unless flags say otherwise)."""
    root = etree.fromstring(qemu.lookupByUUIDString(uid).XMLDesc(flags))
    return list(root.iterfind("devices/interface"))


def facts(element: etree._Element) -> dict[str, Any]:
    """What a test checks of one <interface>."""
    def attr(path: str, name: str) -> str | None:
        found = element.find(path)
        return None if found is None else found.get(name)
    ref = element.find("filterref")
    return {"type": element.get("type"), "source": attr("source", "bridge"),
            "mac": attr("mac", "address"), "model": attr("model", "type"),
            "target": attr("target", "dev"), "managed": attr("target", "managed"),
            "filter": None if ref is None else ref.get("filter"),
            "ips": [] if ref is None else [p.get("value") for p in ref.iterfind("parameter")
                                           if p.get("name") == "IP"],
            "alias": attr("alias", "name")}


def test_a_build_with_a_bridge_and_a_tap_vif_comes_up_filtered_and_terminate_leaves_nothing(
        net: Net, net_cfg: Callable[..., Config], start: Callable[[Config], Worker],
        qemu: libvirt.virConnect, domains: list[str]) -> None:
    """Both interfaces live with type, source, MAC, model, target and filter; bindings shown;
    an interface attached live; terminate removes the tap, filters and the bridge it made."""
    bridge, dev1, dev2 = net.name("br"), net.name("b1"), net.name("t2")
    cfg = net_cfg(manage_bridges=True, bridge_mappings=f"{NET}:{bridge}")
    worker = start(cfg)
    vm = Vm.new(NAME_PREFIX)
    domains.append(vm.uuid)
    p1, p2 = net.port(), net.port()
    network_info = [vif(p1, dev1, "bridge", bridge=bridge, mac="fa:16:3e:aa:bb:01"),
                    vif(p2, dev2, "tap", ip="10.9.0.6")]
    worker.cast("build_and_run_instance", {"instance": {"uuid": vm.uuid, "name": vm.name,
                                                        "memory_mb": 64},
                                           "network_info": network_info})
    assert "running" == worker.end(vm.uuid, "create")["power_state"]

    first, second = (facts(e) for e in interfaces(qemu, vm.uuid))
    assert {"type": "bridge", "source": bridge, "mac": "fa:16:3e:aa:bb:01", "model": "virtio",
            "target": dev1, "managed": None, "filter": f"compute-worker-{p1}",
            "ips": ["10.9.0.5"], "alias": f"ua-{p1}"} == first
    assert ("ethernet", None, "virtio", dev2, "no", f"compute-worker-{p2}", ["10.9.0.6"]) == (
        second["type"], second["source"], second["model"], second["target"],
        second["managed"], second["filter"], second["ips"])
    assert second["mac"].startswith("fa:16:3e:")
    assert {bridge: "bridge", dev1: "tun", dev2: "tun"} == links(net.prefix)
    assert bridge == master_of(dev1)
    assert {dev1: f"compute-worker-{p1}", dev2: f"compute-worker-{p2}"}.items() <= \
        bindings().items()
    assert {f"compute-worker-{p1}", f"compute-worker-{p2}"} <= filters(qemu)
    filtered = etree.fromstring(qemu.nwfilterLookupByName(f"compute-worker-{p1}").XMLDesc())
    assert ["clean-traffic"] == [r.get("filter") for r in filtered.iterfind("filterref")]
    assert (worker.service.paths.root / vm.uuid / "vifs.json").is_file()

    # attach_interface (a call): nova's network_id and port_id; the answer is nova's VIF.
    p3 = net.port()
    answer = worker.rpc.call(cfg.host, "attach_interface", {
        "instance": {"uuid": vm.uuid}, "network_id": NET, "port_id": p3,
        "requested_ip": "10.9.0.7", "tag": None})
    dev3 = f"tap{p3}"[:14]
    assert (p3, "bridge", dev3, bridge) == (answer["id"], answer["type"], answer["devname"],
                                           answer["network"]["bridge"])
    assert "active" == worker.end(vm.uuid, "interface_attach")["state"]
    live = {f["alias"]: f for f in map(facts, interfaces(qemu, vm.uuid))}
    persistent = {f["alias"] for f in map(facts, interfaces(
        qemu, vm.uuid, libvirt.VIR_DOMAIN_XML_INACTIVE))}
    assert (dev3, ["10.9.0.7"], answer["address"]) == (
        live[f"ua-{p3}"]["target"], live[f"ua-{p3}"]["ips"], live[f"ua-{p3}"]["mac"])
    assert f"ua-{p3}" in persistent
    assert f"compute-worker-{p3}" == bindings().get(dev3)

    worker.cast("terminate_instance", {"instance": {"uuid": vm.uuid}})
    worker.end(vm.uuid, "delete")
    assert None is domain_state(QEMU_URI, vm.uuid)
    assert {} == links(net.prefix)  # taps, and the bridge the worker made
    assert set() == {f"compute-worker-{p}" for p in (p1, p2, p3)} & filters(qemu)
    assert not set(bindings()) & {dev1, dev2, dev3}


def test_on_a_stopped_guest_interfaces_change_the_definition_and_power_on_replugs(
        net: Net, net_cfg: Callable[..., Config], start: Callable[[Config], Worker],
        qemu: libvirt.virConnect, domains: list[str]) -> None:
    """Stopped: attach and detach touch the definition only; a tap and filter lost while the
    worker was down come back at its start; power on and a HARD reboot replug a lost tap."""
    dev1 = net.name("t1")
    cfg = net_cfg()
    worker = start(cfg)
    vm = Vm.new(NAME_PREFIX)
    domains.append(vm.uuid)
    p1, p2 = net.port(), net.port()
    worker.cast("build_and_run_instance", {"instance": {"uuid": vm.uuid, "name": vm.name,
                                                        "memory_mb": 64},
                                           "network_info": [vif(p1, dev1, "ethernet")]})
    worker.end(vm.uuid, "create")
    worker.cast("stop_instance", {"instance": {"uuid": vm.uuid}, "clean_shutdown": False})
    worker.end(vm.uuid, "power_off")

    dev2 = net.name("t2")
    answer = worker.rpc.call(cfg.host, "attach_interface", {
        "instance": {"uuid": vm.uuid}, "vif": vif(p2, dev2, "tap", ip="10.9.0.8")})
    assert p2 == answer["id"]
    assert "stopped" == worker.end(vm.uuid, "interface_attach")["state"]
    saved = [facts(e)["alias"] for e in interfaces(qemu, vm.uuid, libvirt.VIR_DOMAIN_XML_INACTIVE)]
    assert [f"ua-{p1}", f"ua-{p2}"] == saved
    assert {dev1, dev2} == set(links(net.prefix))

    worker.cast("detach_interface", {"instance": {"uuid": vm.uuid}, "port_id": p2})
    assert "stopped" == worker.end(vm.uuid, "interface_detach")["state"]
    saved = [facts(e)["alias"] for e in interfaces(qemu, vm.uuid, libvirt.VIR_DOMAIN_XML_INACTIVE)]
    assert [f"ua-{p1}"] == saved
    assert {dev1} == set(links(net.prefix))
    assert f"compute-worker-{p2}" not in filters(qemu)

    # As after a host reboot: the worker is down and what it made is gone.
    worker.service.stop(grace=30)
    with IPRoute() as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=dev1)[0])
    qemu.nwfilterLookupByName(f"compute-worker-{p1}").undefine()
    again = start(cfg)
    assert {dev1: "tun"} == links(net.prefix)
    assert f"compute-worker-{p1}" in filters(qemu)

    # And power on replugs whatever went missing since.
    with IPRoute() as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=dev1)[0])
    again.cast("start_instance", {"instance": {"uuid": vm.uuid}})
    assert "running" == again.end(vm.uuid, "power_on")["power_state"]
    assert libvirt.VIR_DOMAIN_RUNNING == state_of(QEMU_URI, vm.uuid)
    assert f"compute-worker-{p1}" == bindings().get(dev1)

    # A HARD reboot of a stopped guest whose tap went missing replugs it too.
    again.cast("stop_instance", {"instance": {"uuid": vm.uuid}, "clean_shutdown": False})
    again.end(vm.uuid, "power_off", count=1)
    with IPRoute() as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=dev1)[0])
    again.cast("reboot_instance", {"instance": {"uuid": vm.uuid}, "reboot_type": "HARD"})
    assert "running" == again.end(vm.uuid, "reboot")["power_state"]
    assert {dev1: "tun"} == links(net.prefix)
    assert f"compute-worker-{p1}" == bindings().get(dev1)


HOSTILE = {
    "devname with a slash": {"devname": "eth0/../x"},
    "devname too long": {"devname": "a-name-too-long-x"},
    "devname the host has": {"devname": "lo"},
    "multicast MAC": {"address": "01:00:5e:00:00:01"},
    "bridge name with a space": {"network": {"id": NET, "bridge": "br 0"}},
    "bridge that is not a bridge": {"network": {"id": NET, "bridge": "lo"}},
}


def test_hostile_vifs_are_refused_before_anything_is_made(
        net: Net, net_cfg: Callable[..., Config], start: Callable[[Config], Worker],
        qemu: libvirt.virConnect, domains: list[str]) -> None:
    """Bad names, a multicast MAC, a link that is not ours: InvalidInput, nothing created."""
    worker = start(net_cfg(manage_bridges=True))
    before = (filters(qemu), set(bindings()))
    for case, bad in HOSTILE.items():
        vm = Vm.new(NAME_PREFIX)
        domains.append(vm.uuid)
        good = vif(net.port(), net.name("t1"), "tap")
        hostile = {**vif(net.port(), net.name("b2"), "bridge", bridge=net.name("br")), **bad}
        worker.cast("build_and_run_instance", {"instance": {"uuid": vm.uuid, "name": vm.name,
                                                            "memory_mb": 64},
                                               "network_info": [good, hostile]})
        error = worker.end(vm.uuid, "create", phase="error")
        assert "InvalidInput" == error["fault"]["nova_object.data"]["exception"], case
        assert None is domain_state(QEMU_URI, vm.uuid), case
        assert {} == links(net.prefix), case
        assert before == (filters(qemu), set(bindings())), case
        assert not (worker.service.paths.root / vm.uuid).exists(), case
    assert "lo" in links("lo")


def test_an_interface_attached_live_is_detached_live_from_a_guest_that_acks_unplug(
        net: Net, net_cfg: Callable[..., Config], start: Callable[[Config], Worker],
        qemu: libvirt.virConnect, domains: list[str], tmp_path: Path) -> None:
    """The test guest ejects what QEMU asks: the interface, its binding, tap and filter go."""
    guest_image = pytest.importorskip("tests.guest_image")
    # TCG: SeaBIOS reaches the guest's boot sector ten times sooner than on nested KVM here.
    cfg = net_cfg(device_detach_timeout=10, virt_type=guest_image.GUEST_DOMAIN_TYPE)
    Path(cfg.images_path).mkdir(parents=True, exist_ok=True)
    guest_image.make_guest_image(Path(cfg.images_path) / "guest")
    worker = start(cfg)
    vm = Vm.new(NAME_PREFIX)
    domains.append(vm.uuid)
    worker.cast("build_and_run_instance", {"instance": {"uuid": vm.uuid, "name": vm.name,
                                                        "memory_mb": 64},
                                           "image": {"id": "guest"}})
    worker.end(vm.uuid, "create")
    port, dev = net.port(), net.name("t1")
    worker.rpc.call(cfg.host, "attach_interface", {"instance": {"uuid": vm.uuid},
                                                   "vif": vif(port, dev, "tap")})
    worker.end(vm.uuid, "interface_attach")
    assert [f"ua-{port}"] == [facts(e)["alias"] for e in interfaces(qemu, vm.uuid)]
    assert f"compute-worker-{port}" == bindings().get(dev)

    worker.cast("detach_interface", {"instance": {"uuid": vm.uuid}, "port_id": port})
    assert "active" == worker.end(vm.uuid, "interface_detach")["state"]
    assert [] == interfaces(qemu, vm.uuid)
    assert [] == interfaces(qemu, vm.uuid, libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert dev not in bindings()
    assert {} == links(net.prefix)
    assert f"compute-worker-{port}" not in filters(qemu)


def test_plumbing_removes_only_the_taps_and_bridges_it_made(
        net: Net, tmp_path: Path) -> None:
    """A tap that was there before is used and left; a tap and a bridge the worker made go."""
    from worker import config
    from worker.virt import netdev, vifs
    from worker.virt.paths import InstancePaths
    from worker.virt.plugging import Plumbing

    cfg = config.load(None, {"firewall_driver": "none", "manage_bridges": True,
                             "instances_path": str(tmp_path / "instances")}, environ={})
    paths = InstancePaths(cfg.instances_path)
    paths.root.mkdir(parents=True)
    plumb = Plumbing(None, cfg, paths)  # type: ignore[arg-type]  # no filters: no libvirt
    uid = str(uuid.uuid4())
    theirs, ours, bridge = net.name("t0"), net.name("t1"), net.name("br")
    assert netdev.make_tap(theirs) and not netdev.make_tap(theirs)
    found = [vifs.from_model(vif(net.port(), theirs, "tap"), uid, 0, {}),
             vifs.from_model(vif(net.port(), ours, "tap"), uid, 1, {}),
             vifs.from_model(vif(net.port(), net.name("b2"), "bridge", bridge=bridge), uid, 2, {})]
    for one in found:
        plumb.check(uid, one)
    plugged = [plumb.plug(uid, one) for one in found]
    assert [False, True, False] == [p.made_tap for p in plugged]
    assert {theirs: "tun", ours: "tun", bridge: "bridge"} == links(net.prefix)
    assert [p.vif.id for p in plugged] == [p.vif.id for p in plumb.recorded(uid)]

    assert 3 == plumb.unplug_all(uid)
    assert {theirs: "tun"} == links(net.prefix)
    assert [] == plumb.recorded(uid)


@pytest.fixture
def libvirt_network(qemu: libvirt.virConnect, net: Net) -> Iterator[str]:
    """An isolated libvirt network (no IP, so no dnsmasq) on a bridge under the test's prefix."""
    name = f"cw-test-{net.prefix}"
    root = etree.Element("network")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "bridge", name=net.name("ln"), stp="off")
    network = qemu.networkCreateXML(etree.tostring(root, encoding="unicode"))
    yield name
    network.destroy()  # transient: gone with its bridge


def test_a_network_vif_joins_a_libvirt_network_and_keeps_other_subnet_hosts_out(
        net: Net, net_cfg: Callable[..., Config], start: Callable[[Config], Worker],
        qemu: libvirt.virConnect, domains: list[str], libvirt_network: str) -> None:
    """type network: libvirt's own network by name; allow_same_net_traffic off: the filter
    accepts the gateway and drops the rest of the subnet; terminate removes the filter and
    leaves the network (the worker did not make it)."""
    worker = start(net_cfg(allow_same_net_traffic=False))
    vm = Vm.new(NAME_PREFIX)
    domains.append(vm.uuid)
    port = net.port()
    entry = vif(port, net.name("n1"), "network", bridge=libvirt_network)
    worker.cast("build_and_run_instance", {"instance": {"uuid": vm.uuid, "name": vm.name,
                                                        "memory_mb": 64},
                                           "network_info": [entry]})
    assert "running" == worker.end(vm.uuid, "create")["power_state"]

    (only,) = interfaces(qemu, vm.uuid)
    assert ("network", libvirt_network, f"compute-worker-{port}", ["10.9.0.5"]) == (
        only.get("type"), only.find("source").get("network"),
        only.find("filterref").get("filter"), facts(only)["ips"])
    rules = etree.fromstring(qemu.nwfilterLookupByName(f"compute-worker-{port}").XMLDesc())
    assert [("accept", "10.9.0.1", "32"), ("drop", "10.9.0.0", "24")] == [
        (r.get("action"), r.find("ip").get("srcipaddr"), r.find("ip").get("srcipmask"))
        for r in rules.iterfind("rule")]
    assert f"compute-worker-{port}" in bindings().values()

    worker.cast("terminate_instance", {"instance": {"uuid": vm.uuid}})
    worker.end(vm.uuid, "delete")
    assert f"compute-worker-{port}" not in filters(qemu)
    assert libvirt_network in qemu.listNetworks()
