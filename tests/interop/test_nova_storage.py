"""nova's ComputeAPI drives storage end to end on qemu:///system (issue 11's "done when").

A build from an image with root, ephemeral and swap disks and a volume from its
block device mapping; a second volume reserved, attached and detached live
(checked in the live XML and in the persistent definition); a snapshot to each
of raw, qcow2, vmdk and vdi that ``qemu-img info`` agrees on, and builds that
boot from the qcow2 one and the raw one; terminate; and nothing of the instances
left under ``instances_path`` but the shared cache. Every event is judged by
nova's classes.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from tests.domains import QEMU_URI, qemu_domain_type, remove_domains
from tests.helpers import check_event
from tests.interop.nova import EXCHANGE, HOST, nova_context
from tests.taps import EventTap
from tests.validate_xml import assert_valid_domain
from worker.config import Config
from worker.service import Service

pytestmark = [pytest.mark.interop, pytest.mark.e2e]
IMAGE = "cirros-like"
MARKER = b"compute-worker storage marker"
FORMATS = ("raw", "qcow2", "vmdk", "vdi")


@pytest.fixture
def qemu_conn() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(QEMU_URI)
    yield conn
    conn.close()


@pytest.fixture
def cfg(make_config: Callable[..., Config], qemu_conn: libvirt.virConnect,
        tmp_path: Path) -> Config:
    """A worker on nova's exchange and host, on QEMU, loop devices allowed as volumes."""
    return make_config(virt_type=qemu_domain_type(qemu_conn), control_exchange=EXCHANGE,
                       host=HOST, volumes_path=str(tmp_path / "volumes"),
                       volume_device_prefixes="/dev/loop", soft_reboot_timeout=2,
                       shutdown_timeout=2, build_timeout=60)


@pytest.fixture
def nova_api(nova_conf: Any) -> Any:
    """nova's ComputeAPI at its full 6.5 cap."""
    from nova.compute import rpcapi

    nova_conf.set_override("compute", "6.5", group="upgrade_levels")
    yield rpcapi.ComputeAPI()
    nova_conf.clear_override("compute", group="upgrade_levels")


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A 64 MiB loop device on a file (root only: the README's test command runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    backing = tmp_path / "loop.img"
    with open(backing, "wb") as handle:
        handle.truncate(64 << 20)
    device = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                            text=True, check=True).stdout.strip()
    yield device
    subprocess.run(["losetup", "-d", device], check=False)


@pytest.fixture
def built(cfg: Config) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    remove_domains(QEMU_URI, made)


def _image(cfg: Config) -> None:
    """A 32 MiB qcow2 image in the store, the marker at 1 MiB."""
    store = Path(cfg.images_path)
    store.mkdir(parents=True, exist_ok=True)
    raw = store / "source.raw"
    with open(raw, "wb") as handle:
        handle.truncate(32 << 20)
        handle.seek(1 << 20)
        handle.write(MARKER)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
                    str(store / IMAGE)], check=True)
    raw.unlink()


def _instance(uid: str, name: str) -> Any:
    from nova import objects

    flavor = objects.Flavor(id=2, flavorid="2", name="storage", memory_mb=64, vcpus=1,
                            root_gb=1, ephemeral_gb=1, swap=32, extra_specs={})
    return objects.Instance(uuid=uid, host=HOST, node=HOST, display_name=name, hostname=name,
                            flavor=flavor, memory_mb=64, vcpus=1, root_gb=1, ephemeral_gb=1,
                            image_ref=IMAGE, vm_state="building", task_state="spawning",
                            user_id="user-1", project_id="project-1", metadata={},
                            system_metadata={}, power_state=0)


def _volume_bdm(uid: str, volume_id: str, info: dict[str, Any], device: str | None,
                **extra: Any) -> Any:
    from nova import objects

    return objects.BlockDeviceMapping(
        uuid=str(uuid.uuid4()), instance_uuid=uid, source_type="volume",
        destination_type="volume", volume_id=volume_id, attachment_id=str(uuid.uuid4()),
        device_name=device, disk_bus="scsi", device_type="disk", boot_index=None,
        delete_on_termination=False,
        connection_info=json.dumps({**info, "serial": volume_id}), **extra)


def _image_root_bdm(uid: str, image_id: str) -> Any:
    from nova import objects

    return objects.BlockDeviceMapping(
        uuid=str(uuid.uuid4()), instance_uuid=uid, source_type="image",
        destination_type="local", image_id=image_id, boot_index=0, device_name="/dev/vda",
        disk_bus="virtio", device_type="disk", delete_on_termination=True)


def _build(api: Any, uid: str, name: str, image_id: str, *mappings: Any) -> Any:
    from nova import objects

    instance = _instance(uid, name)
    api.build_and_run_instance(
        nova_context(), instance, host=HOST, image={"id": image_id, "name": image_id},
        request_spec=None, filter_properties={},
        requested_networks=objects.NetworkRequestList(objects=[]), security_groups=[],
        block_device_mapping=objects.BlockDeviceMappingList(
            objects=[_image_root_bdm(uid, image_id), *mappings]),
        node=HOST, limits={}, host_list=[], accel_uuids=[])
    return instance


def _serials(conn: libvirt.virConnect, uid: str, flags: int) -> dict[str, str]:
    """serial -> target of every disk that has a serial, in the live or persistent XML."""
    xml = etree.fromstring(conn.lookupByUUIDString(uid).XMLDesc(flags))
    return {str(d.findtext("serial")): str(d.find("target").get("dev"))
            for d in xml.iterfind("devices/disk") if d.findtext("serial")}


def _end(tap: EventTap, uid: str, action: str, count: int = 1) -> dict[str, Any]:
    events = tap.wait_type(uid, f"instance.{action}.end", count=count, timeout=120)
    return events[-1]["payload"]


def _info(path: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", str(path)], capture_output=True, text=True,
        check=True).stdout)
    return found


def _marker_in(disk: Path, fmt: str, scratch: Path) -> bool:
    subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(disk),
                    str(scratch)], check=True)
    with open(scratch, "rb") as handle:
        handle.seek(1 << 20)
        found = handle.read(len(MARKER)) == MARKER
    scratch.unlink()
    return found


def test_nova_builds_attaches_detaches_snapshots_and_rebuilds_from_the_snapshot(
        nova_api: Any, cfg: Config, make_config: Callable[..., Config],
        start_worker: Callable[..., Service], tap: EventTap, built: list[str],
        qemu_conn: libvirt.virConnect, loop_device: str, tmp_path: Path) -> None:
    api, ctxt = nova_api, nova_context()
    live, persistent = 0, libvirt.VIR_DOMAIN_XML_INACTIVE
    _image(cfg)
    worker = start_worker(cfg)
    root = worker.paths.root

    # 1. A build with root, ephemeral and swap, and a volume from its mapping.
    uid = str(uuid.uuid4())
    built.append(uid)
    boot_volume = str(uuid.uuid4())
    instance = _build(api, uid, "storage-vm", IMAGE, _volume_bdm(
        uid, boot_volume, {"driver_volume_type": "local",
                           "data": {"device_path": loop_device}}, "/dev/sda"))
    created = _end(tap, uid, "create")
    assert "running" == created["nova_object.data"]["power_state"]
    xml = etree.fromstring(qemu_conn.lookupByUUIDString(uid).XMLDesc(0))
    sources = [(d.find("target").get("dev"), d.find("source").get("file")
                or d.find("source").get("dev")) for d in xml.iterfind("devices/disk")]
    assert [("vda", str(root / uid / "disk")), ("vdb", str(root / uid / "disk.eph0")),
            ("vdc", str(root / uid / "disk.swap")), ("sda", loop_device)] == sources
    assert_valid_domain((root / uid / "libvirt.xml").read_text(encoding="utf-8"))

    # 2. A second volume (a file under volumes_path): reserved, attached live, detached live.
    volumes = Path(cfg.worker.volumes_path)
    volumes.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(volumes / "vol-2.qcow2"),
                    "16M"], check=True)
    second = str(uuid.uuid4())
    reserved = api.reserve_block_device_name(ctxt, instance, None, second, "scsi", "disk",
                                             None, False)
    assert "/dev/sdb" == reserved.device_name
    bdm = _volume_bdm(uid, second, {"driver_volume_type": "file", "data": {
        "device_path": str(volumes / "vol-2.qcow2"), "format": "qcow2"}}, reserved.device_name)
    api.attach_volume(ctxt, instance, bdm)
    attached = _end(tap, uid, "volume_attach")
    assert second == attached["nova_object.data"]["volume_id"]
    for flags in (live, persistent):
        assert {boot_volume: "sda", second: "sdb"} == _serials(qemu_conn, uid, flags)
        # libvirt's own schema accepts what the worker's disks made of the domain.
        assert_valid_domain(qemu_conn.lookupByUUIDString(uid).XMLDesc(flags))
    api.detach_volume(ctxt, instance, second, bdm.attachment_id)
    assert second == _end(tap, uid, "volume_detach")["nova_object.data"]["volume_id"]
    for flags in (live, persistent):
        assert {boot_volume: "sda"} == _serials(qemu_conn, uid, flags)

    # A HARD reboot starts again from the definition: the build's volume is still there.
    api.reboot_instance(ctxt, instance, None, "HARD")
    _end(tap, uid, "reboot")
    assert {boot_volume: "sda"} == _serials(qemu_conn, uid, live)

    # 3. A snapshot in each format, the guest running throughout.
    snapshots: dict[str, str] = {}
    for count, fmt in enumerate(FORMATS, start=1):
        worker.stop(grace=30)
        worker = start_worker(make_config(
            **{**_same(cfg), "snapshot_image_format": fmt}))
        image_id = snapshots[fmt] = str(uuid.uuid4())
        api.snapshot_instance(ctxt, instance, image_id)
        ended = _end(tap, uid, "snapshot", count)
        assert (image_id, "running") == (ended["nova_object.data"]["snapshot_image_id"],
                                         ended["nova_object.data"]["power_state"])
        made = _info(Path(cfg.images_path) / image_id)
        assert (fmt, None) == (made["format"], made.get("backing-filename")), fmt
        assert fmt == ended["compute_worker.details"]["format"]
        assert _marker_in(Path(cfg.images_path) / image_id, fmt, tmp_path / "read"), fmt

    # 4. Builds that boot from the qcow2 snapshot, and from the raw one (the formats the
    # image store takes as bases).
    rebuilt: list[str] = []
    for fmt in ("qcow2", "raw"):
        again = str(uuid.uuid4())
        built.append(again)
        rebuilt.append(again)
        _build(api, again, f"from-{fmt}", snapshots[fmt])
        assert "running" == _end(tap, again, "create")["nova_object.data"]["power_state"], fmt
        assert _marker_in(root / again / "disk", "qcow2", tmp_path / "read"), fmt

    # 5. Terminate them all: nothing of them is left but the shared cache.
    from nova import objects

    for gone in (uid, *rebuilt):
        api.terminate_instance(ctxt, _instance(gone, "x"), objects.BlockDeviceMappingList(
            objects=[]))
        _end(tap, gone, "delete")
    assert ["_base"] == sorted(p.name for p in root.iterdir())
    assert os.path.exists(loop_device)  # the volume's source is left alone
    for event in tap.events:
        check_event(event)


def _same(cfg: Config) -> dict[str, Any]:
    """The options of cfg that make_config would otherwise pick afresh."""
    return {"host": cfg.host, "control_exchange": cfg.control_exchange,
            "notification_topic": cfg.notifications.notification_topic,
            "virt_type": cfg.libvirt.virt_type, "instances_path": cfg.instances_path,
            "images_path": cfg.images_path, "state_dir": cfg.state_dir,
            "volumes_path": cfg.worker.volumes_path,
            "volume_device_prefixes": cfg.worker.volume_device_prefixes,
            "build_timeout": cfg.build_timeout}
