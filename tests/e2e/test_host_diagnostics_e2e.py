"""Diagnostics and host resources of qemu:///system, against libvirt's and the kernel's numbers."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from tests.domains import Vm, remove_domain
from tests.e2e.support import NAME_PREFIX
from tests.nova_driver import nova_cpu_info, nova_supported_instances
from worker.amqp.client import RemoteError, RpcClient
from worker.config import Config
from worker.service import Service
from worker.virt.domain_xml import DomainSpec, domain, to_string

pytestmark = pytest.mark.e2e
MAC = "52:54:00:c0:ff:ee"


@pytest.fixture
def stats_vm(qemu: libvirt.virConnect, domain_type: str, tmp_path: Path) -> Iterator[Vm]:
    """A running no-OS guest with a qcow2 vda and a tap libvirt makes (removed with it)."""
    vm = Vm.new(NAME_PREFIX)
    disk = tmp_path / "disk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    root = domain(DomainSpec(name=vm.name, uuid=vm.uuid, memory_mib=64, vcpus=1,
                             domain_type=domain_type, disks=(str(disk),)))
    iface = etree.SubElement(root.find("devices"), "interface", type="ethernet")
    etree.SubElement(iface, "mac", address=MAC)
    etree.SubElement(iface, "target", dev=f"cwdg{uuid.uuid4().hex[:8]}")
    etree.SubElement(iface, "model", type="virtio")
    dom = qemu.defineXML(to_string(root))
    try:
        dom.create()
        yield vm
    finally:
        remove_domain(qemu, vm.uuid)


def _between(before: Any, ours: Any, after: Any) -> bool:
    return all(b <= o <= a for b, o, a in zip(before, ours, after, strict=True))


def test_diagnostics_are_libvirt_s_counters(
        worker: Service, rpc: RpcClient, cfg: Config, stats_vm: Vm,
        qemu: libvirt.virConnect) -> None:
    """cpu0_time, vda_*, <tap>_* and memory as libvirt reads them; the object form agrees."""
    dom = qemu.lookupByUUIDString(stats_vm.uuid)
    tap = etree.fromstring(dom.XMLDesc()).find("devices/interface/target").get("dev")
    deadline = time.monotonic() + 10
    while dom.blockStats("vda")[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # the firmware reads the boot sector soon after the start
    before = dom.vcpus()[0][0][2], dom.blockStats("vda"), dom.interfaceStats(tap)

    flat = rpc.call(cfg.host, "get_diagnostics", stats_vm.args, timeout=20)
    obj = rpc.call(cfg.host, "get_instance_diagnostics", stats_vm.args, timeout=20)

    after = dom.vcpus()[0][0][2], dom.blockStats("vda"), dom.interfaceStats(tap)
    disk_keys = ["vda_read_req", "vda_read", "vda_write_req", "vda_write", "vda_errors"]
    nic_keys = [f"{tap}_{k}" for k in ("rx", "rx_packets", "rx_errors", "rx_drop", "tx",
                                       "tx_packets", "tx_errors", "tx_drop")]
    memory = dom.memoryStats()
    assert {"cpu0_time", *disk_keys, *nic_keys, "memory",
            *(f"memory-{k}" for k in memory)} == set(flat)
    assert before[0] <= flat["cpu0_time"] <= after[0]
    assert _between(before[1], [flat[k] for k in disk_keys], after[1])
    assert flat["vda_read_req"] > 0 and flat["vda_read"] >= 512  # a boot sector was read
    assert _between(before[2], [flat[k] for k in nic_keys], after[2])
    assert (64 * 1024, memory["actual"]) == (flat["memory"], flat["memory-actual"])
    data = obj["nova_object.data"]
    assert ("running", qemu_virt_type(cfg), 1, 1, 1) == (
        data["state"], data["hypervisor"], data["num_cpus"], data["num_disks"],
        data["num_nics"])
    assert MAC == data["nic_details"][0]["nova_object.data"]["mac_address"]
    assert 64 == data["memory_details"]["nova_object.data"]["maximum"]
    disk = data["disk_details"][0]["nova_object.data"]
    assert _between(before[1], (disk["read_requests"], disk["read_bytes"],
                                disk["write_requests"], disk["write_bytes"],
                                disk["errors_count"]), after[1])


def qemu_virt_type(cfg: Config) -> str:
    """nova's hypervisor field: the configured virt_type."""
    return cfg.libvirt.virt_type


def test_diagnostics_of_a_stopped_instance_is_refused_as_nova_refuses(
        worker: Service, rpc: RpcClient, cfg: Config, stats_vm: Vm,
        qemu: libvirt.virConnect) -> None:
    """A shut-off instance has no counters: InstanceInvalidState, nova's class."""
    qemu.lookupByUUIDString(stats_vm.uuid).destroy()

    with pytest.raises(RemoteError) as caught:
        rpc.call(cfg.host, "get_diagnostics", stats_vm.args, timeout=20)

    assert ("InstanceInvalidState", "nova.exception") == (
        caught.value.exc_class, caught.value.failure["module"])


def _vcpus_running(conn: libvirt.virConnect) -> int:
    total = 0
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        try:
            total += len(dom.vcpus()[0])
        except libvirt.libvirtError:
            total += 1  # gone meanwhile, or vCPUs unreadable: nova counts 1
    return total


def _meminfo_available_mb() -> int:
    fields = Path("/proc/meminfo").read_text().split()
    kb = sum(int(fields[fields.index(k) + 1]) for k in ("MemFree:", "Buffers:", "Cached:"))
    return kb // 1024


def test_available_resource_is_libvirt_s_node_info(
        worker: Service, rpc: RpcClient, cfg: Config, stats_vm: Vm,
        qemu: libvirt.virConnect) -> None:
    """vCPUs, memory, hypervisor, CPU model and disk as libvirt, /proc and statvfs say."""
    low, vcpus_low = qemu.getInfo()[1] - _meminfo_available_mb(), _vcpus_running(qemu)
    found = rpc.call(cfg.host, "get_available_resource", {}, timeout=20)
    high, vcpus_high = qemu.getInfo()[1] - _meminfo_available_mb(), _vcpus_running(qemu)

    _model, memory_mb, cpus, _mhz, *_ = qemu.getInfo()
    caps = qemu.getCapabilities()
    st = os.statvfs(cfg.instances_path)
    assert (cpus, memory_mb) == (found["vcpus"], found["memory_mb"])
    assert ("QEMU", qemu.getVersion(), qemu.getHostname()) == (
        found["hypervisor_type"], found["hypervisor_version"], found["hypervisor_hostname"])
    assert min(low, high) - 64 <= found["memory_mb_used"] <= max(low, high) + 64
    # Other tests may start or stop guests on this libvirtd meanwhile.
    assert min(vcpus_low, vcpus_high) <= found["vcpus_used"] <= max(vcpus_low, vcpus_high)
    assert st.f_frsize * st.f_blocks // (1 << 30) == found["local_gb"]
    assert abs(st.f_frsize * (st.f_blocks - st.f_bfree) / (1 << 30)
               - found["local_gb_used"]) <= 1
    assert found["disk_available_least"] <= st.f_frsize * st.f_bavail / (1 << 30)
    assert nova_cpu_info(caps) == json.loads(found["cpu_info"])
    assert nova_supported_instances(caps) == found["supported_instances"]
    assert ["x86_64", "qemu", "hvm"] in found["supported_instances"]
