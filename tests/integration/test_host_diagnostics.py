"""Diagnostics and host resources through a real RabbitMQ on libvirt's test driver.

Every number is checked against libvirt's own answer to the same question. The test
driver's counters grow with the clock, so a counter we report must lie between libvirt's
reading just before the call and its reading just after.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
import pytest
from lxml import etree

from tests.domains import TEST_URI, Vm, remove_domains
from tests.helpers import check_event
from tests.nova_driver import nova_cpu_info, nova_supported_instances
from tests.taps import EventTap
from worker.amqp.client import RemoteError, RpcClient
from worker.config import Config
from worker.service import Service
from worker.virt.domain_xml import DomainSpec, domain, to_string

pytestmark = pytest.mark.integration
MAC = "52:54:00:12:34:56"


@pytest.fixture
def stats_domain(test_driver: libvirt.virConnect) -> Iterator[Vm]:
    """A running test-driver domain with two vCPUs, a disk vda and an interface tap-diag0."""
    vm = Vm.new("cw-diag-")
    root = domain(DomainSpec(name=vm.name, uuid=vm.uuid, memory_mib=128, vcpus=2,
                             domain_type="test", disks=("/guest/cw-diag.qcow2",)))
    iface = etree.SubElement(root.find("devices"), "interface", type="network")
    etree.SubElement(iface, "mac", address=MAC)
    etree.SubElement(iface, "source", network="default")
    etree.SubElement(iface, "target", dev="tap-diag0")
    test_driver.defineXML(to_string(root)).create()
    yield vm
    remove_domains(TEST_URI, [vm.uuid])


def _between(before: Any, ours: Any, after: Any) -> bool:
    """ours lies between two readings of libvirt's counters, element by element."""
    return all(b <= o <= a for b, o, a in zip(before, ours, after, strict=True))


def test_get_diagnostics_is_nova_s_dict_of_libvirt_s_counters(
        worker: Service, rpc: RpcClient, cfg: Config, stats_domain: Vm,
        test_driver: libvirt.virConnect) -> None:
    """cpuN_time, vda_*, tap-diag0_*, memory and memory-*: nova's keys, libvirt's numbers."""
    dom = test_driver.lookupByUUIDString(stats_domain.uuid)
    before = (dom.vcpus()[0], dom.blockStats("vda"), dom.interfaceStats("tap-diag0"))

    found = rpc.call(cfg.host, "get_diagnostics", stats_domain.args, timeout=20)

    after = (dom.vcpus()[0], dom.blockStats("vda"), dom.interfaceStats("tap-diag0"))
    disk_keys = ["vda_read_req", "vda_read", "vda_write_req", "vda_write", "vda_errors"]
    nic_keys = [f"tap-diag0_{k}" for k in ("rx", "rx_packets", "rx_errors", "rx_drop", "tx",
                                           "tx_packets", "tx_errors", "tx_drop")]
    memory = {f"memory-{k}": v for k, v in dom.memoryStats().items()}
    assert {"cpu0_time", "cpu1_time", *disk_keys, *nic_keys, "memory", *memory} == set(found)
    assert _between([v[2] for v in before[0]], [found["cpu0_time"], found["cpu1_time"]],
                    [v[2] for v in after[0]])
    assert _between(before[1], [found[k] for k in disk_keys], after[1])
    assert _between(before[2], [found[k] for k in nic_keys], after[2])
    assert dom.maxMemory() == found["memory"] == 128 * 1024
    assert memory == {k: v for k, v in found.items() if k.startswith("memory-")}


def test_get_instance_diagnostics_is_a_diagnostics_object_nova_rebuilds(
        worker: Service, rpc: RpcClient, cfg: Config, stats_domain: Vm,
        test_driver: libvirt.virConnect) -> None:
    """nova's Diagnostics.obj_from_primitive takes the answer; its numbers are libvirt's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nova import objects
        from nova.objects import diagnostics

        objects.register_all()
    dom = test_driver.lookupByUUIDString(stats_domain.uuid)
    args = {"instance": {**stats_domain.args["instance"],
                         "launched_at": "2026-01-01T00:00:00Z", "config_drive": ""}}
    before = dom.blockStats("vda"), dom.interfaceStats("tap-diag0"), dom.vcpus()[0]

    primitive = rpc.call(cfg.host, "get_instance_diagnostics", args, timeout=20)

    after = dom.blockStats("vda"), dom.interfaceStats("tap-diag0"), dom.vcpus()[0]
    diags = diagnostics.Diagnostics.obj_from_primitive(primitive)
    state, max_kb, mem_kb, _cpus, _time = dom.info()
    assert ("running", "libvirt", "test", "linux", False) == (
        diags.state, diags.driver, diags.hypervisor, diags.hypervisor_os, diags.config_drive)
    assert (2, 1, 1) == (diags.num_cpus, diags.num_disks, diags.num_nics)
    assert (max_kb // 1024, mem_kb // 1024) == (diags.memory_details.maximum,
                                                diags.memory_details.used)
    assert [0, 1] == [c.id for c in diags.cpu_details]
    assert _between([v[2] for v in before[2]], [c.time for c in diags.cpu_details],
                    [v[2] for v in after[2]])
    disk = diags.disk_details[0]
    assert _between(before[0], (disk.read_requests, disk.read_bytes, disk.write_requests,
                                disk.write_bytes, disk.errors_count), after[0])
    nic = diags.nic_details[0]
    assert MAC == nic.mac_address
    assert _between(before[1], (nic.rx_octets, nic.rx_packets, nic.rx_errors, nic.rx_drop,
                                nic.tx_octets, nic.tx_packets, nic.tx_errors, nic.tx_drop),
                    after[1])
    assert diags.uptime > 0


@pytest.mark.parametrize("method", ["get_diagnostics", "get_instance_diagnostics"])
def test_diagnostics_of_a_paused_instance_is_nova_s_invalid_state(
        worker: Service, rpc: RpcClient, cfg: Config, stats_domain: Vm,
        test_driver: libvirt.virConnect, method: str) -> None:
    """nova's manager answers only for a running instance; the failure is nova's class."""
    test_driver.lookupByUUIDString(stats_domain.uuid).suspend()

    with pytest.raises(RemoteError) as caught:
        rpc.call(cfg.host, method, stats_domain.args, timeout=20)

    assert ("InstanceInvalidState", "nova.exception") == (
        caught.value.exc_class, caught.value.failure["module"])
    assert f"in power state paused. Cannot {method}" in caught.value.failure["message"]


def test_diagnostics_of_a_missing_instance_is_instance_not_found(
        worker: Service, rpc: RpcClient, cfg: Config) -> None:
    """No domain with that UUID: nova's InstanceNotFound."""
    with pytest.raises(RemoteError) as caught:
        rpc.call(cfg.host, "get_diagnostics", {"instance": {"uuid": str(uuid.uuid4())}},
                 timeout=20)
    assert "InstanceNotFound" == caught.value.exc_class


def _resources_match_libvirt(found: dict[str, Any], conn: libvirt.virConnect,
                             path: str) -> None:
    """The resource dict says what libvirt and statvfs say of this host."""
    _model, memory_mb, cpus, _mhz, *_ = conn.getInfo()
    caps = etree.fromstring(conn.getCapabilities())
    st = os.statvfs(path)
    assert (cpus, memory_mb) == (found["vcpus"], found["memory_mb"])
    assert (conn.getType(), conn.getVersion(), conn.getHostname()) == (
        found["hypervisor_type"], found["hypervisor_version"], found["hypervisor_hostname"])
    assert st.f_frsize * st.f_blocks // (1 << 30) == found["local_gb"]
    used_gb = st.f_frsize * (st.f_blocks - st.f_bfree) / (1 << 30)
    assert abs(used_gb - found["local_gb_used"]) <= 1
    assert found["disk_available_least"] <= st.f_frsize * st.f_bavail / (1 << 30) + 1
    running = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    assert sum(len(d.vcpus()[0]) for d in running) == found["vcpus_used"]
    info = json.loads(found["cpu_info"])
    assert caps.findtext("host/cpu/arch") == info["arch"]
    assert len(caps.findall("host/topology/cells/cell")) == info["topology"]["cells"]
    assert nova_cpu_info(conn.getCapabilities()) == info
    assert nova_supported_instances(conn.getCapabilities()) == found["supported_instances"]
    assert ("[]", None) == (found["pci_passthrough_devices"], found["numa_topology"])


def test_get_available_resource_matches_libvirt_and_statvfs(
        worker: Service, rpc: RpcClient, cfg: Config, stats_domain: Vm,
        test_driver: libvirt.virConnect) -> None:
    """vCPUs, memory, disk, hypervisor and CPU model as libvirt's node info has them."""
    found = rpc.call(cfg.host, "get_available_resource", {}, timeout=20)

    _resources_match_libvirt(found, test_driver, cfg.instances_path)
    running = test_driver.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    # The test driver is no machine: its used memory is its running domains'.
    assert sum(d.info()[2] for d in running) // 1024 == found["memory_mb_used"]


def test_get_host_uptime_is_the_uptime_line(
        worker: Service, rpc: RpcClient, cfg: Config) -> None:
    """What `uptime` prints, as nova's libvirt driver returns it."""
    found = rpc.call(cfg.host, "get_host_uptime", {}, timeout=20)

    assert " up " in found and "load average" in found and found.endswith("\n")


def test_host_arguments_are_refused_when_given(
        worker: Service, rpc: RpcClient, cfg: Config) -> None:
    """get_available_resource takes no arguments: an unknown one is InvalidArguments."""
    with pytest.raises(RemoteError) as caught:
        rpc.call(cfg.host, "get_available_resource", {"nodename": "x"}, timeout=20)
    assert "InvalidArguments" == caught.value.exc_class


@pytest.fixture
def reporting(make_config: Callable[..., Config], tap: EventTap,
              test_driver: libvirt.virConnect) -> Iterator[Service]:
    """A worker with nova's CPU monitor reporting every second."""
    cfg = make_config(compute_monitors="cpu.virt_driver", update_resources_interval=1,
                      my_ip="192.0.2.7")
    # The tap fixture listens on the default config's names: same tag, same names.
    service = Service(cfg, retry_sleep=lambda _s: None, debounce=0.3)
    service.start()
    yield service
    service.stop(grace=10)


def _of_type(tap: EventTap, event_type: str, count: int = 1) -> list[dict[str, Any]]:
    tap.wait_for(lambda events: sum(e["event_type"] == event_type for e in events) >= count,
                 timeout=20)
    return [e for e in tap.snapshot() if e["event_type"] == event_type]


def test_resources_and_metrics_are_reported_at_start_and_every_interval(
        reporting: Service, tap: EventTap, test_driver: libvirt.virConnect) -> None:
    """host.resources.update (start, then periodic) and nova's metrics.update every second."""
    reports = _of_type(tap, "host.resources.update", 2)
    metrics = _of_type(tap, "metrics.update", 2)

    assert ["start", "periodic"] == [
        r["payload"]["nova_object.data"]["trigger"] for r in reports[:2]]
    first = reports[0]["payload"]["nova_object.data"]
    assert (reporting.cfg.host, test_driver.getHostname()) == (first["host"],
                                                               first["nodename"])
    _resources_match_libvirt(first["resources"], test_driver, reporting.cfg.instances_path)
    data = metrics[-1]["payload"]["nova_object.data"]
    values = {m["nova_object.data"]["name"]: m["nova_object.data"]["value"]
              for m in data["metrics"]}
    stats = test_driver.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS)
    assert ("192.0.2.7", test_driver.getHostname()) == (data["host_ip"], data["nodename"])
    assert (stats["user"], stats["kernel"], test_driver.getInfo()[3]) == (
        values["cpu.user.time"], values["cpu.kernel.time"], values["cpu.frequency"])
    assert 10 == len(values) and {"libvirt.LibvirtDriver"} == {
        m["nova_object.data"]["source"] for m in data["metrics"]}
    for event in reports + metrics:
        check_event(event)


def test_a_build_and_a_terminate_are_reported_at_once(
        make_config: Callable[..., Config], tap: EventTap, rpc: RpcClient) -> None:
    """With no periodic report, a build's end and a terminate's end each bring a report."""
    cfg = make_config(update_resources_interval=-1)
    service = Service(cfg, retry_sleep=lambda _s: None)
    service.start()
    uid = str(uuid.uuid4())
    try:
        _of_type(tap, "host.resources.update", 1)
        rpc.cast(cfg.host, "build_and_run_instance",
                 {"instance": {"uuid": uid, "memory_mb": 96, "vcpus": 3}})
        tap.wait_type(uid, "instance.create.end")
        built = _of_type(tap, "host.resources.update", 2)[-1]
        rpc.cast(cfg.host, "pause_instance", {"instance": {"uuid": uid}})
        tap.wait_type(uid, "instance.pause.end")
        rpc.cast(cfg.host, "terminate_instance", {"instance": {"uuid": uid}})
        tap.wait_type(uid, "instance.delete.end")
        gone = _of_type(tap, "host.resources.update", 3)[-1]
    finally:
        service.stop(grace=10)
        remove_domains(TEST_URI, [uid])
    reports = _of_type(tap, "host.resources.update", 3)
    assert 3 == len(reports)  # the pause changed no instance: no report
    assert ["start", "instances_changed", "instances_changed"] == [
        r["payload"]["nova_object.data"]["trigger"] for r in reports]
    before = reports[0]["payload"]["nova_object.data"]["resources"]
    after_build = built["payload"]["nova_object.data"]["resources"]
    after_delete = gone["payload"]["nova_object.data"]["resources"]
    assert before["vcpus_used"] + 3 == after_build["vcpus_used"]
    assert before["memory_mb_used"] + 96 == after_build["memory_mb_used"]
    assert before["vcpus_used"] == after_delete["vcpus_used"]
    for event in reports:
        check_event(event)
