"""Volumes on real QEMU: loop devices, files and NBD attached and detached, running and stopped.

A guest with no OS never lets go of a virtio disk (no device-removed event), while a
SCSI disk detaches in about 0.05 s: live detaches use scsi, and the virtio case is
where nova's retries run out.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from tests.domains import Vm
from tests.e2e.support import Verbs
from tests.validate_xml import assert_valid_domain
from worker.amqp.client import RemoteError, RpcClient
from worker.config import Config

pytestmark = pytest.mark.e2e

Volume = tuple[str, dict[str, Any], str]
"""A volume to attach: its driver_volume_type, its data, and the source libvirt must show."""


@pytest.fixture
def cfg(make_config: Callable[..., Config], tmp_path: Path) -> Config:
    """The e2e config with volumes under tmp_path and nova's detach retries made short."""
    (tmp_path / "volumes").mkdir()
    return make_config(virt_type="qemu", soft_reboot_timeout=2, shutdown_timeout=2,
                       max_concurrent_ops=4, libvirt_retry_seconds=5,
                       volumes_path=str(tmp_path / "volumes"),
                       volume_device_prefixes="/dev/loop,/dev/nbd",
                       device_detach_attempts=2, device_detach_timeout=0.5)


def raw_file(path: Path, size: int = 8 << 20) -> Path:
    """A sparse raw image of size bytes."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A loop device on a file in tmp_path, detached afterwards."""
    device = subprocess.run(["losetup", "-f", "--show", str(raw_file(tmp_path / "loop.img"))],
                            check=True, capture_output=True, text=True).stdout.strip()
    yield device
    subprocess.run(["losetup", "-d", device], check=False)


def free_port() -> int:
    """A TCP port nobody listens on just now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def nbd_export(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """qemu-nbd serving a raw file on 127.0.0.1 (export name, port), killed afterwards."""
    port, pid_file = free_port(), tmp_path / "qemu-nbd.pid"
    subprocess.run(["qemu-nbd", "--fork", "-t", "-b", "127.0.0.1", "-p", str(port), "-x", "vol1",
                    "-f", "raw", "--pid-file", str(pid_file),
                    str(raw_file(tmp_path / "nbd.img"))], check=True, timeout=20)
    try:
        yield "vol1", port
    finally:
        os.kill(int(pid_file.read_text()), signal.SIGTERM)


@pytest.fixture
def volume(request: pytest.FixtureRequest, cfg: Config) -> Volume:
    """One volume of the kind the test is parametrized with."""
    if request.param == "loop":
        device = request.getfixturevalue("loop_device")
        return "local", {"device_path": device}, device
    if request.param == "file":
        image = raw_file(Path(cfg.worker.volumes_path) / "vol.img")
        return "file", {"device_path": str(image), "format": "raw"}, str(image)
    name, port = request.getfixturevalue("nbd_export")
    return "nbd", {"name": name, "hosts": ["127.0.0.1"], "ports": [str(port)]}, name


def bdm(vm: Vm, volume_id: str, kind: str, data: dict[str, Any], *, bus: str = "virtio",
        device: str | None = None) -> dict[str, Any]:
    """nova's BlockDeviceMapping primitive for attach_volume, connection_info as nova's string."""
    info = {"driver_volume_type": kind, "data": data, "serial": volume_id}
    fields = {"volume_id": volume_id, "instance_uuid": vm.uuid, "source_type": "volume",
              "destination_type": "volume", "device_name": device, "disk_bus": bus,
              "device_type": "disk", "boot_index": None, "delete_on_termination": False,
              "attachment_id": str(uuid.uuid4()), "connection_info": json.dumps(info)}
    return {"nova_object.name": "BlockDeviceMapping", "nova_object.namespace": "nova",
            "nova_object.version": "1.21", "nova_object.data": fields,
            "nova_object.changes": sorted(fields)}


def disk(dom: libvirt.virDomain, serial: str, *, persistent: bool) -> etree._Element | None:
    """The disk with this serial in the live XML or the definition, or None."""
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if persistent else 0)
    found = etree.fromstring(xml).xpath(f"devices/disk[serial='{serial}']")
    return found[0] if found else None


def source_of(element: etree._Element) -> str:
    """What a disk's <source> names: file, dev or the network export."""
    source = element.find("source")
    assert source is not None
    return str(source.get("file") or source.get("dev") or source.get("name"))


def validate(dom: libvirt.virDomain) -> None:
    """The live XML (when running) and the definition pass virt-xml-validate."""
    assert_valid_domain(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    if dom.isActive():
        assert_valid_domain(dom.XMLDesc(0))


@pytest.mark.parametrize("volume", ["loop", "file", "nbd"], indirect=True)
def test_a_volume_attaches_and_detaches_live_on_a_running_guest(
        verb: Verbs, vms: Callable[..., list[Vm]], qemu: libvirt.virConnect,
        volume: Volume) -> None:
    """Live and persistent both get the scsi disk with the volume id as serial; both lose it."""
    (vm,) = vms(1)
    dom = qemu.lookupByUUIDString(vm.uuid)
    volume_id = str(uuid.uuid4())
    kind, data, source = volume

    run = verb(vm, "attach_volume", "volume_attach",
               bdm=bdm(vm, volume_id, kind, data, bus="scsi", device="/dev/sdb"))

    assert volume_id == run.after["volume_id"]
    for persistent in (False, True):
        found = disk(dom, volume_id, persistent=persistent)
        assert found is not None, "live" if not persistent else "definition"
        assert (source, "sdb", "scsi") == (source_of(found), found.find("target").get("dev"),
                                           found.find("target").get("bus"))
    validate(dom)

    run = verb(vm, "detach_volume", "volume_detach", volume_id=volume_id,
               attachment_id=str(uuid.uuid4()))

    assert volume_id == run.after["volume_id"]
    assert (None, None) == (disk(dom, volume_id, persistent=False),
                            disk(dom, volume_id, persistent=True))
    assert libvirt.VIR_DOMAIN_RUNNING == dom.state()[0]
    validate(dom)


@pytest.mark.parametrize("volume", ["loop", "file", "nbd"], indirect=True)
def test_a_stopped_guest_gets_and_loses_the_volume_in_its_definition_only(
        verb: Verbs, vms: Callable[..., list[Vm]], qemu: libvirt.virConnect,
        volume: Volume) -> None:
    """Stopped: the definition gets the virtio disk (next free name), and loses it again."""
    (vm,) = vms(1, start=False)
    dom = qemu.lookupByUUIDString(vm.uuid)
    volume_id = str(uuid.uuid4())
    kind, data, source = volume

    verb(vm, "attach_volume", "volume_attach", bdm=bdm(vm, volume_id, kind, data))

    found = disk(dom, volume_id, persistent=True)
    assert found is not None
    assert (source, "vdb") == (source_of(found), found.find("target").get("dev"))
    assert not dom.isActive()
    validate(dom)

    verb(vm, "detach_volume", "volume_detach", volume_id=volume_id, attachment_id=None)

    assert None is disk(dom, volume_id, persistent=True)
    validate(dom)


def test_attaching_an_attached_volume_again_is_success_with_one_disk(
        verb: Verbs, vms: Callable[..., list[Vm]], qemu: libvirt.virConnect, cfg: Config) -> None:
    """A redelivered attach ends well and adds no second disk; detaching twice ends well too."""
    (vm,) = vms(1)
    dom = qemu.lookupByUUIDString(vm.uuid)
    volume_id = str(uuid.uuid4())
    image = raw_file(Path(cfg.worker.volumes_path) / "vol.img")
    mapping = bdm(vm, volume_id, "file", {"device_path": str(image)}, bus="scsi")

    verb(vm, "attach_volume", "volume_attach", bdm=mapping)
    verb(vm, "attach_volume", "volume_attach", bdm=mapping)

    for persistent in (False, True):
        serials = etree.fromstring(dom.XMLDesc(
            libvirt.VIR_DOMAIN_XML_INACTIVE if persistent else 0)).xpath("devices/disk/serial")
        assert [volume_id] == [s.text for s in serials]

    verb(vm, "detach_volume", "volume_detach", volume_id=volume_id, attachment_id=None)
    verb(vm, "detach_volume", "volume_detach", volume_id=volume_id, attachment_id=None)
    assert None is disk(dom, volume_id, persistent=False)


def test_a_virtio_disk_the_guest_never_releases_fails_as_nova_leaves_it(
        verb: Verbs, vms: Callable[..., list[Vm]], qemu: libvirt.virConnect, cfg: Config) -> None:
    """After every attempt, DeviceDetachFailed: still in the live XML, gone from the definition."""
    (vm,) = vms(1)
    dom = qemu.lookupByUUIDString(vm.uuid)
    volume_id = str(uuid.uuid4())
    image = raw_file(Path(cfg.worker.volumes_path) / "vol.img")
    verb(vm, "attach_volume", "volume_attach",
         bdm=bdm(vm, volume_id, "file", {"device_path": str(image)}))

    run = verb(vm, "detach_volume", "volume_detach", phase="error", volume_id=volume_id,
               attachment_id=None)

    fault = run.after["fault"]["nova_object.data"]
    assert ("DeviceDetachFailed", "nova.exception") == (fault["exception"], fault["module_name"])
    # Two attempts of half a second each, and not much more.
    attempts, timeout = cfg.libvirt.device_detach_attempts, cfg.libvirt.device_detach_timeout
    assert attempts * timeout <= run.elapsed < attempts * timeout + 5
    assert volume_id == run.after["volume_id"]
    assert disk(dom, volume_id, persistent=False) is not None
    assert None is disk(dom, volume_id, persistent=True)


def test_reserve_hands_out_vdb_then_vdc_as_nova_s_block_device_mapping(
        worker: object, rpc: RpcClient, cfg: Config, vms: Callable[..., list[Vm]],
        verb: Verbs, qemu: libvirt.virConnect) -> None:
    """Two reservations never share a name; a taken name asked for is DevicePathInUse."""
    (vm,) = vms(1)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())

    def reserve(volume_id: str, device: str | None = None) -> Any:
        return rpc.call(cfg.host, "reserve_block_device_name", {
            **vm.args, "device": device, "volume_id": volume_id, "disk_bus": "virtio",
            "device_type": "disk", "tag": None, "multiattach": False}, timeout=20)

    got = [reserve(first), reserve(second)]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nova's imports warn about eventlet and friends
        from nova import objects
        objects.register_all()
        mappings = [objects.BlockDeviceMapping.obj_from_primitive(p) for p in got]
    assert ["/dev/vdb", "/dev/vdc"] == [m.device_name for m in mappings]
    assert [(vm.uuid, first), (vm.uuid, second)] == [(m.instance_uuid, m.volume_id)
                                                      for m in mappings]
    assert all(m.is_volume for m in mappings)
    with pytest.raises(RemoteError) as taken:
        reserve(str(uuid.uuid4()), "/dev/vdc")
    assert "DevicePathInUse" == taken.value.exc_class

    # The attach that follows takes the reserved name; the next reservation moves past it.
    image = raw_file(Path(cfg.worker.volumes_path) / "vol.img")
    verb(vm, "attach_volume", "volume_attach",
         bdm=bdm(vm, first, "file", {"device_path": str(image)}, device="/dev/vdb"))
    found = disk(qemu.lookupByUUIDString(vm.uuid), first, persistent=False)
    assert found is not None and "vdb" == found.find("target").get("dev")
    assert "/dev/vdd" == reserve(str(uuid.uuid4()))["nova_object.data"]["device_name"]


@pytest.mark.parametrize("hostile", ["outside the prefixes", "symlink out of volumes_path"])
def test_a_hostile_attach_is_refused_and_nothing_is_attached(
        verb: Verbs, vms: Callable[..., list[Vm]], qemu: libvirt.virConnect, cfg: Config,
        tmp_path: Path, hostile: str) -> None:
    """A device_path outside the prefixes, or a symlink leading out: InvalidVolume, no disk."""
    (vm,) = vms(1)
    dom = qemu.lookupByUUIDString(vm.uuid)
    volume_id = str(uuid.uuid4())
    secret = raw_file(tmp_path / "secret.img")
    if hostile == "outside the prefixes":
        kind, data = "local", {"device_path": str(secret)}
    else:
        link = Path(cfg.worker.volumes_path) / "vol.img"
        link.symlink_to(secret)
        kind, data = "file", {"device_path": str(link)}
    before = (dom.XMLDesc(0), dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))

    run = verb(vm, "attach_volume", "volume_attach", phase="error",
               bdm=bdm(vm, volume_id, kind, data, bus="scsi"))

    fault = run.after["fault"]["nova_object.data"]
    assert ("InvalidVolume", "nova.exception") == (fault["exception"], fault["module_name"])
    if hostile == "symlink out of volumes_path":
        assert str(secret) not in fault["exception_message"]  # where the link leads stays ours
    assert before == (dom.XMLDesc(0), dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def test_detaching_a_volume_that_is_not_attached_is_success(
        verb: Verbs, vms: Callable[..., list[Vm]]) -> None:
    """Nothing to detach: the end event, not an error (a redelivered detach lands here)."""
    (vm,) = vms(1)
    begun = time.monotonic()
    verb(vm, "detach_volume", "volume_detach", volume_id=str(uuid.uuid4()), attachment_id=None)
    assert time.monotonic() - begun < 5


def test_volumes_of_a_suspended_guest_are_left_alone(
        verb: Verbs, vms: Callable[..., list[Vm]], qemu: libvirt.virConnect, cfg: Config) -> None:
    """Its restore brings back the devices its saved memory knows: attach is refused."""
    (vm,) = vms(1)
    dom = qemu.lookupByUUIDString(vm.uuid)
    verb(vm, "suspend_instance", "suspend")
    image = raw_file(Path(cfg.worker.volumes_path) / "vol.img")
    volume_id = str(uuid.uuid4())

    run = verb(vm, "attach_volume", "volume_attach", phase="error",
               bdm=bdm(vm, volume_id, "file", {"device_path": str(image)}))

    assert "InstanceInvalidState" == run.after["fault"]["nova_object.data"]["exception"]
    assert None is disk(dom, volume_id, persistent=True)
    assert 1 == dom.hasManagedSaveImage(0)
