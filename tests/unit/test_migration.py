"""Live migration's pure parts: flags, URIs, parameters, disk info from the wire, migrate data."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from worker import config
from worker.codec import migrate_data
from worker.errors import InvalidArguments, UnsafePath
from worker.virt import migration
from worker.virt.image_cache import cache_name

UUID = "0d6f3f4e-8a5b-4c1e-9f7a-3b2c1d0e9f8a"
SAMPLES = json.loads((Path(__file__).parents[1] / "nova-wire-samples.json").read_text())


def _libvirt_options(**values: Any) -> config.LibvirtOptions:
    return config.load(None, values).libvirt


def test_live_flags_are_nova_s_and_block_adds_the_incremental_copy() -> None:
    live = migration.flags(block=False, unsafe=False)
    for flag in (libvirt.VIR_MIGRATE_LIVE, libvirt.VIR_MIGRATE_PEER2PEER,
                 libvirt.VIR_MIGRATE_PERSIST_DEST, libvirt.VIR_MIGRATE_UNDEFINE_SOURCE):
        assert live & flag
    assert not live & (libvirt.VIR_MIGRATE_NON_SHARED_INC | libvirt.VIR_MIGRATE_UNSAFE)
    block = migration.flags(block=True, unsafe=True)
    assert block & libvirt.VIR_MIGRATE_NON_SHARED_INC and block & libvirt.VIR_MIGRATE_UNSAFE
    assert not block & libvirt.VIR_MIGRATE_NON_SHARED_DISK


@pytest.mark.parametrize(("values", "dest", "uri"), [
    ({}, "compute-02", "qemu+tcp://compute-02/system"),
    ({"live_migration_scheme": "tls"}, "169.254.7.2", "qemu+tls://169.254.7.2/system"),
    ({"live_migration_uri": "qemu+ssh://nova@%s/system"}, "b", "qemu+ssh://nova@b/system"),
    ({}, "fe80::2", "qemu+tcp://[fe80::2]/system"),
])
def test_destination_uri_as_nova_builds_it(values: dict[str, str], dest: str, uri: str) -> None:
    assert migration.destination_uri(_libvirt_options(**values), dest) == uri


@pytest.mark.parametrize("dest", ["a/b", "x y", "", "-x", "h@evil", "a" * 300, "host?x=1"])
def test_a_destination_that_is_no_host_name_is_refused(dest: str) -> None:
    with pytest.raises(InvalidArguments):
        migration.destination_uri(_libvirt_options(), dest)


def test_params_name_the_data_uri_the_bandwidth_and_the_disks() -> None:
    got = migration.params(connect_addr="169.254.7.2", bandwidth_mib=16, disks=["vda"])
    assert got == {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://169.254.7.2",
                   libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 16,
                   libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: ["vda"]}
    assert migration.params(connect_addr=None, bandwidth_mib=0, disks=None) == {}


def test_job_stats_read_as_progress_and_no_job_as_none() -> None:
    assert migration.progress({"type": libvirt.VIR_DOMAIN_JOB_NONE}) is None
    seen = migration.progress({"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "time_elapsed": 1200,
                               "data_total": 100, "data_processed": 40, "data_remaining": 60,
                               "memory_remaining": 50, "disk_remaining": 10})
    assert seen is not None and seen.details()["data_remaining"] == 60
    assert migration.is_migrating({"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
                                   "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT})
    assert not migration.is_migrating({"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
                                       "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_SAVE})


def test_cpu_xml_from_cpu_info_drops_what_is_not_a_feature_name() -> None:
    xml = migration.cpu_xml({"arch": "x86_64", "model": "kvm64", "vendor": "AMD",
                             "topology": {"sockets": 1, "cores": 2, "threads": 1},
                             "features": ["sse2", "x\"/><evil", 7]})
    root = etree.fromstring(xml)
    assert root.findtext("model") == "kvm64"
    assert [f.get("name") for f in root.iterfind("feature")] == ["sse2"]
    assert root.find("topology").get("cores") == "2"


def _entry(directory: Path, **over: Any) -> dict[str, Any]:
    base = {"type": "qcow2", "path": str(directory / "disk"), "virt_disk_size": 1 << 30,
            "backing_file": cache_name("cirros"), "disk_size": 0, "target": "vda"}
    return {**base, **over}


def test_disk_info_round_trips_through_nova_s_format(tmp_path: Path) -> None:
    disks = [migration.LocalDisk("vda", str(tmp_path / "disk"), "qcow2", 1 << 30,
                                 cache_name("cirros")),
             migration.LocalDisk("vdb", str(tmp_path / "disk.eph0"), "raw", 1 << 29, None)]
    text = migration.disk_info(disks)
    assert migration.parse_disk_info(text, tmp_path, "cirros") == disks


@pytest.mark.parametrize("over", [
    {"path": "/etc/passwd"},
    {"path": "../disk"},
    {"type": "vmdk"},
    {"virt_disk_size": -1},
    {"virt_disk_size": True},
    {"virt_disk_size": 1 << 60},
    {"backing_file": "/etc/shadow"},
    {"backing_file": cache_name("another-image")},
    {"type": "raw", "backing_file": cache_name("cirros")},
])
def test_hostile_disk_info_is_refused(tmp_path: Path, over: dict[str, Any]) -> None:
    entry = _entry(tmp_path, **over)
    if entry["path"] == "../disk":
        entry["path"] = str(tmp_path / ".." / "disk")
    with pytest.raises((InvalidArguments, UnsafePath)):
        migration.parse_disk_info(json.dumps([entry]), tmp_path, "cirros")


def test_disk_info_that_is_not_a_list_is_refused(tmp_path: Path) -> None:
    for text in ("{", '{"a": 1}', json.dumps([1]), json.dumps([{}] * 65)):
        with pytest.raises(InvalidArguments):
            migration.parse_disk_info(text, tmp_path, "cirros")


def test_local_disks_are_files_in_the_instance_directory_only(tmp_path: Path) -> None:
    import subprocess
    disk = tmp_path / "disk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)
    xml = f"""<domain><devices>
      <disk type='file' device='disk'><driver type='qcow2'/><source file='{disk}'/>
        <target dev='vda'/></disk>
      <disk type='file' device='disk'><source file='/var/lib/volumes/v1'/>
        <target dev='vdb'/><serial>v1</serial></disk>
      <disk type='block' device='disk'><source dev='/dev/loop3'/><target dev='vdc'/></disk>
    </devices></domain>"""
    found = migration.local_disks(xml, tmp_path)
    assert found == [migration.LocalDisk("vda", str(disk), "qcow2", 1 << 20, None)]


def _nova_class() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nova.objects import migrate_data as nova_migrate_data
    return nova_migrate_data.LibvirtLiveMigrateData


def test_our_migrate_data_is_what_nova_s_class_deserializes() -> None:
    cls = _nova_class()
    ours = migrate_data.primitive({
        "filename": "tmpab12", "image_type": "qcow2", "block_migration": False,
        "disk_over_commit": False, "disk_available_mb": 1024, "is_shared_instance_path": True,
        "is_shared_block_storage": True, "graphics_listen_addr_vnc": "127.0.0.1",
        "serial_listen_addr": None, "target_connect_addr": "169.254.7.2",
        "serial_listen_ports": [], "supported_perf_events": [], "unknown": 1})
    assert ours["nova_object.version"] == cls.VERSION
    obj = cls.obj_from_primitive(ours)
    assert obj.target_connect_addr == "169.254.7.2" and obj.is_shared_instance_path is True
    assert str(obj.graphics_listen_addr_vnc) == "127.0.0.1"
    assert "unknown" not in ours["nova_object.data"]


def test_nova_s_migrate_data_reads_back_as_its_known_fields() -> None:
    sample = next(s["message"]["args"]["migrate_data"] for s in SAMPLES["messages"]
                  if s["message"]["method"] == "live_migration")
    plain = migrate_data.fields(sample["nova_object.data"])
    assert plain["is_shared_instance_path"] is True and plain["filename"] == "tmp-check"
    # A bool is no disk size (JSON true would pass an int check in Python).
    assert migrate_data.fields({"disk_available_mb": True}) == {}
