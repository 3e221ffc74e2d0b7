"""Host resources and metrics, held to nova's own code: its _get_cpu_info, its instance
capabilities, its cpu.virt_driver monitor and its notification classes."""

from __future__ import annotations

import datetime
import json
import subprocess
import warnings
from pathlib import Path

import pytest
from lxml import etree

from tests.nova_driver import nova_cpu_info, nova_supported_instances
from tests.nova_judge import judge, missing
from worker.codec import host_payloads
from worker.config import load
from worker.core import schemas
from worker.core.host_report import CpuMonitor
from worker.errors import ConfigError
from worker.virt import host_info

# A KVM host's capabilities as libvirt 9 writes them (trimmed): one NUMA cell, two guests.
CAPS = """<capabilities><host><uuid>4c4c4544-0042-4810-8056-b4c04f4e3432</uuid>
<cpu><arch>x86_64</arch><model>Skylake-Client-IBRS</model><vendor>Intel</vendor>
<microcode version='240'/><counter name='tsc' frequency='2112000000' scaling='no'/>
<topology sockets='1' dies='1' cores='4' threads='2'/>
<maxphysaddr mode='emulate' bits='39'/>
<feature name='vmx'/><feature name='ds'/><feature name='acpi'/><feature name='ss'/>
<pages unit='KiB' size='4'/></cpu>
<topology><cells num='1'><cell id='0'><memory unit='KiB'>16106556</memory>
<cpus num='8'><cpu id='0' socket_id='0' die_id='0' core_id='0' siblings='0,4'/></cpus>
</cell></cells></topology></host>
<guest><os_type>hvm</os_type><arch name='i686'><wordsize>32</wordsize>
<emulator>/usr/bin/qemu-system-i386</emulator><machine>pc</machine>
<domain type='qemu'/><domain type='kvm'/></arch></guest>
<guest><os_type>hvm</os_type><arch name='x86_64'><wordsize>64</wordsize>
<emulator>/usr/bin/qemu-system-x86_64</emulator><machine>pc</machine>
<domain type='qemu'/><domain type='kvm'/></arch></guest>
<guest><os_type>hvm</os_type><arch name='riscv-unknown'><domain type='qemu'/></arch></guest>
</capabilities>"""


def test_cpu_info_is_nova_s_from_the_same_capabilities() -> None:
    """arch, model, vendor, topology (cells from NUMA), maxphysaddr and features, as nova's."""
    ours = host_info.cpu_info(etree.fromstring(CAPS))

    assert nova_cpu_info(CAPS) == ours
    assert {"cells": 1, "sockets": 1, "cores": 4, "threads": 2} == ours["topology"]
    assert ["acpi", "ds", "ss", "vmx"] == ours["features"]


def test_cpu_info_without_host_topology_counts_one_cell() -> None:
    """No <topology> under <host>: one cell, as nova's getattr default says."""
    caps = "<capabilities><host><cpu><arch>aarch64</arch></cpu></host></capabilities>"

    ours = host_info.cpu_info(etree.fromstring(caps))

    assert nova_cpu_info(caps) == ours
    assert 1 == ours["topology"]["cells"]


def test_supported_instances_are_nova_s_triples() -> None:
    """Each guest arch and domain type, canonical; an arch nova does not know is left out."""
    ours = host_info.supported_instances(etree.fromstring(CAPS))

    assert nova_supported_instances(CAPS) == ours
    assert [["i686", "qemu", "hvm"], ["i686", "kvm", "hvm"], ["x86_64", "qemu", "hvm"],
            ["x86_64", "kvm", "hvm"]] == ours


def test_canonical_names_are_nova_s() -> None:
    """The architecture, hypervisor type and vm mode lists are nova 34's fields."""
    from nova.objects import fields

    assert set(fields.Architecture.ALL) == host_info.ARCHITECTURES
    assert set(fields.HVType.ALL) == host_info.HV_TYPES
    assert set(fields.VMMode.ALL) == host_info.VM_MODES
    assert ["i686", "xen", "xen"] == host_info.canonical_instance_type("i386", "xapi", "pv")


def _disk_xml(*disks: tuple[str, str, bool]) -> str:
    devices = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
        f"<source file='{path}'/><target dev='vd{chr(97 + i)}'/>"
        f"{'<serial>vol</serial>' if volume else ''}</disk>"
        for i, (path, fmt, volume) in enumerate(disks))
    return f"<domain><devices>{devices}</devices></domain>"


def test_over_commit_is_what_local_disks_may_still_grow_by(tmp_path: Path) -> None:
    """qcow2: virtual less held; raw: size less held; volumes and missing files count 0."""
    qcow2, raw, volume = tmp_path / "disk", tmp_path / "disk.eph0", tmp_path / "vol"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "1G"], check=True)
    with open(raw, "wb") as handle:
        handle.truncate(8 << 20)
        handle.write(b"x" * 4096)
    with open(volume, "wb") as handle:
        handle.truncate(1 << 30)
    held = {p: p.stat().st_blocks * 512 for p in (qcow2, raw)}

    found = host_info.over_committed_bytes(_disk_xml(
        (str(qcow2), "qcow2", False), (str(raw), "raw", False), (str(volume), "raw", True),
        (str(tmp_path / "gone"), "qcow2", False)))

    assert (1 << 30) - held[qcow2] + (8 << 20) - held[raw] == found


def test_fs_info_is_statvfs(tmp_path: Path) -> None:
    """total, free and used bytes of the file system, as nova's get_fs_info reads them."""
    import os

    st = os.statvfs(tmp_path)
    info = host_info.fs_info(str(tmp_path))

    assert st.f_frsize * st.f_blocks == info["total"]
    assert 0 <= info["free"] <= info["total"] and 0 <= info["used"] <= info["total"]


def test_uptime_is_what_uptime_prints() -> None:
    """get_host_uptime's string: uptime's one line, in the C locale, newline kept."""
    out = host_info.uptime()

    assert out.endswith("\n") and "load average" in out and 1 == out.count("\n")


STATS = [{"user": 10, "kernel": 20, "idle": 30, "iowait": 40, "frequency": 800},
         {"user": 15, "kernel": 30, "idle": 100, "iowait": 41, "frequency": 800},
         {"user": 15, "kernel": 30, "idle": 100, "iowait": 41, "frequency": 2400},
         {"user": 115, "kernel": 30, "idle": 100, "iowait": 41, "frequency": 2400}]


def _nova_monitor_samples(samples: list[dict[str, int]]) -> list[dict[str, int]]:
    """nova's cpu.virt_driver Monitor fed the same node CPU stats one sample at a time."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nova's imports warn about eventlet and friends
        from nova import objects
        from nova.compute.monitors.cpu import virt_driver

        objects.register_all()
    queue = [dict(s) for s in samples]

    class Driver:
        def get_host_cpu_stats(self) -> dict[str, int]:
            return queue.pop(0)

    class Tracker:
        driver = Driver()

    monitor = virt_driver.Monitor(Tracker())
    monitor.source = host_payloads.SOURCE  # nova's CONF.compute_driver on a libvirt host
    found = []
    for _ in samples:
        metrics = objects.MonitorMetricList()
        try:
            monitor.populate_metrics(metrics)
        except ZeroDivisionError:  # nova's: no change in the times since the last sample
            found.append({})
            continue
        found.append({m.name: m.value for m in metrics.objects})
    return found


def test_cpu_metrics_are_nova_s_monitor_s() -> None:
    """Times as read, percentages of the change since the sample before: nova's arithmetic."""
    ours = CpuMonitor()
    mine = [ours.sample(s) for s in STATS]
    nova = _nova_monitor_samples(STATS)

    assert nova[0] == mine[0] and nova[1] == mine[1] and nova[3] == mine[3]
    assert {} == nova[2]  # nova divides by zero; we say 0 %
    assert 0 == mine[2]["cpu.percent"] and 2400 == mine[2]["cpu.frequency"]
    assert 100 == mine[3]["cpu.user.percent"] == mine[3]["cpu.percent"]


def test_metrics_payload_is_accepted_by_nova_and_its_schema() -> None:
    """MetricsPayload 1.0 of ten MetricPayloads: nova's class and schemas/events agree."""
    values = CpuMonitor().sample(STATS[0])
    payload = host_payloads.metrics(host="h1", host_ip="192.0.2.1", nodename="node1",
                                    values=values,
                                    timestamp=datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC))

    judge(payload)
    schemas.validator("events", "MetricsPayload")(payload["nova_object.data"])
    assert [] == missing(payload) == missing(payload["nova_object.data"]["metrics"][0])
    assert "2026-12-01T00:00:00Z" == payload["nova_object.data"]["metrics"][0][
        "nova_object.data"]["timestamp"]
    assert 10 == len(payload["nova_object.data"]["metrics"])


def test_host_resources_payload_is_ours_and_fits_its_schema() -> None:
    """HostResourcesPayload says its namespace is compute_worker; a wrong trigger is refused."""
    resources = {"vcpus": 4, "memory_mb": 2048, "local_gb": 10, "vcpus_used": 1,
                 "memory_mb_used": 512, "local_gb_used": 2, "hypervisor_type": "QEMU",
                 "hypervisor_version": 7002000, "hypervisor_hostname": "node1",
                 "cpu_info": json.dumps({"arch": "x86_64"}), "disk_available_least": 7,
                 "supported_instances": [["x86_64", "kvm", "hvm"]],
                 "pci_passthrough_devices": "[]", "numa_topology": None}
    payload = host_payloads.host_resources(host="h1", nodename="node1", resources=resources,
                                           trigger="start")
    check = schemas.validator("events", "HostResourcesPayload")

    assert "compute_worker" == payload["nova_object.namespace"]
    check(payload["nova_object.data"])
    with pytest.raises(Exception, match="trigger"):
        check({**payload["nova_object.data"], "trigger": "whenever"})


@pytest.mark.parametrize("monitors, on", [("", False), ("cpu.virt_driver", True),
                                          ("virt_driver", True), (" cpu.virt_driver , ", True)])
def test_compute_monitors_turns_the_cpu_monitor_on(monitors: str, on: bool) -> None:
    """nova's monitor name, with or without its cpu. namespace."""
    assert on == load(None, {"compute_monitors": monitors}, environ={}).cpu_monitor


def test_an_unknown_monitor_is_refused_by_name() -> None:
    """A monitor the worker does not have is a configuration error naming it."""
    with pytest.raises(ConfigError, match="numa.mem_bw"):
        load(None, {"compute_monitors": "cpu.virt_driver,numa.mem_bw"}, environ={})


@pytest.mark.parametrize("given, interval", [(0, 60.0), (5, 5.0), (-1, None), (-30, None)])
def test_update_resources_interval_reads_as_nova_s(given: int, interval: float | None) -> None:
    """0 is nova's default periodic spacing (60 s); any negative turns the periodic off."""
    from worker.core.host_report import HostReport

    cfg = load(None, {"update_resources_interval": given, "virt_type": "test"}, environ={})

    assert interval == HostReport(cfg, None, None, print).interval  # type: ignore[arg-type]
