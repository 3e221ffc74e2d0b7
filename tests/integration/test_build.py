"""build_and_run_instance through a real RabbitMQ on the test driver, with real qemu-img disks."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from tests.domains import TEST_URI, domain_state, state_of
from tests.helpers import check_event
from tests.taps import EventTap
from worker.amqp.client import RemoteError, RpcClient
from worker.config import Config
from worker.errors import FlavorDiskSmallerThanImage, ImageError
from worker.service import Service
from worker.virt import image_cache, images
from worker.virt.image_cache import ImageCache

pytestmark = pytest.mark.integration


def _build(rpc: RpcClient, cfg: Config, made: list[str], **instance: Any) -> str:
    uid = str(uuid.uuid4())
    made.append(uid)
    extra = instance.pop("args", {})
    rpc.cast(cfg.host, "build_and_run_instance",
             {"instance": {"uuid": uid, **instance}, **extra})
    return uid


def _data(event: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = event["payload"]["nova_object.data"]
    return data


def _qemu_img_info(path: Path) -> dict[str, Any]:
    done = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(path)],
                          capture_output=True, text=True, check=True)
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def test_build_defines_and_starts_the_domain_it_was_asked_for(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config, built: list[str]) -> None:
    uid = _build(rpc, cfg, built, name="web-1", memory_mb=128, vcpus=2)
    end = tap.wait_type(uid, "instance.create.end")[0]
    assert ["instance.create.start", "instance.create.end"] == [
        e["event_type"] for e in tap.of(uid)]
    assert ("running", "active", "web-1") == (
        _data(end)["power_state"], _data(end)["state"], _data(end)["instance_name"])
    assert libvirt.VIR_DOMAIN_RUNNING == state_of(TEST_URI, uid)
    conn = libvirt.open(TEST_URI)
    try:
        dom = conn.lookupByUUIDString(uid)
        xml = etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        assert (128 * 1024, 2) == (dom.maxMemory(), dom.vcpusFlags(
            libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_VCPU_MAXIMUM))
        assert [] == xml.findall("devices/disk")  # no image and no root_gb: diskless
    finally:
        conn.close()
    saved = etree.fromstring((worker.paths.root / uid / "libvirt.xml").read_bytes())
    assert (uid, "web-1") == (saved.findtext("uuid"), saved.findtext("name"))
    for event in tap.events:
        check_event(event)


def test_build_makes_a_qcow2_root_disk_over_a_base_image(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config, built: list[str]) -> None:
    images = Path(cfg.images_path)
    images.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(images / "cirros-0.6"), "1M"],
                   check=True)
    blank = _build(rpc, cfg, built, root_gb=1)
    layered = _build(rpc, cfg, built, root_gb=2, args={"image": {"id": "cirros-0.6"}})
    for uid in (blank, layered):
        tap.wait_type(uid, "instance.create.end")
    blank_info = _qemu_img_info(worker.paths.root / blank / "disk")
    assert ("qcow2", 1 << 30, None) == (blank_info["format"], blank_info["virtual-size"],
                                        blank_info.get("backing-filename"))
    layered_info = _qemu_img_info(worker.paths.root / layered / "disk")
    # The overlay sits on the cache entry (nova's name: the SHA-1 of the image id), raw.
    base = worker.paths.root / "_base" / image_cache.cache_name("cirros-0.6")
    assert ("qcow2", 2 << 30, str(base)) == (
        layered_info["format"], layered_info["virtual-size"],
        layered_info.get("backing-filename"))
    assert "raw" == layered_info["backing-filename-format"]
    conn = libvirt.open(TEST_URI)
    try:
        xml = etree.fromstring(conn.lookupByUUIDString(layered).XMLDesc(0))
        assert [str(worker.paths.root / layered / "disk")] == [
            d.get("file") for d in xml.findall("devices/disk/source")]
    finally:
        conn.close()


def test_a_failed_build_is_rolled_back_and_reported(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config, built: list[str]) -> None:
    uid = _build(rpc, cfg, built, root_gb=1, args={"image": {"id": "not-there"}})
    error = tap.wait_type(uid, "instance.create.error")[0]
    check_event(error)
    fault = _data(error)["fault"]["nova_object.data"]
    assert ("ImageNotFound", "error") == (fault["exception"], _data(error)["state"])
    assert "not-there" in fault["exception_message"]
    assert None is domain_state(TEST_URI, uid)
    assert not (worker.paths.root / uid).exists()


def test_a_failed_retry_removes_the_disk_an_earlier_attempt_left(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config, built: list[str]) -> None:
    """A build killed after making its disk, then retried and failing, leaves no directory."""
    uid = str(uuid.uuid4())
    built.append(uid)
    left = worker.paths.root / uid
    left.mkdir(parents=True)
    _img("-f", "qcow2", str(left / "disk"), "1M")  # what the killed attempt had made

    rpc.cast(cfg.host, "build_and_run_instance",
             {"instance": {"uuid": uid, "root_gb": 1}, "image": {"id": "not-there"}})

    tap.wait_type(uid, "instance.create.error")
    assert None is domain_state(TEST_URI, uid)
    assert not left.exists()


@pytest.mark.parametrize("name", [".", "..", ".snapshot", "-rf", "a/b", "vm\ufffe", "vm\ud800",
                                  "a\u202eb", "a\u200b", "   "], ids=repr)
def test_a_domain_name_unsafe_as_a_file_name_is_refused_with_nothing_made(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config, built: list[str],
        name: str) -> None:
    """'..' once made libvirtd delete its own state: such names never reach libvirt."""
    uid = str(uuid.uuid4())
    built.append(uid)
    with pytest.raises(RemoteError) as failure:
        rpc.call(cfg.host, "build_and_run_instance", {"instance": {"uuid": uid, "name": name}},
                 timeout=10)
    assert "InvalidArguments" == failure.value.exc_class
    assert None is domain_state(TEST_URI, uid)
    assert not (worker.paths.root / uid).exists()


def test_building_again_finishes_the_existing_domain_instead_of_a_second(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config, built: list[str]) -> None:
    uid = _build(rpc, cfg, built, name="again")
    tap.wait_type(uid, "instance.create.end")
    conn = libvirt.open(TEST_URI)
    try:
        conn.lookupByUUIDString(uid).destroy()  # as if the first try died before starting it
        # A new message (new _unique_id), so the journal does not answer it.
        rpc.cast(cfg.host, "build_and_run_instance", {"instance": {"uuid": uid, "name": "again"}})
        ends = tap.wait_type(uid, "instance.create.end", count=2)
        assert "running" == _data(ends[-1])["power_state"]
        assert 1 == sum(1 for d in conn.listAllDomains(0) if d.name() == "again")
    finally:
        conn.close()


def _nova_list(name: str, item: str, *objects: dict[str, Any]) -> dict[str, Any]:
    """An object list as nova's serializer sends it."""
    return {"nova_object.name": name, "nova_object.namespace": "nova",
            "nova_object.version": "1.1", "nova_object.changes": ["objects"],
            "nova_object.data": {"objects": [
                {"nova_object.name": item, "nova_object.namespace": "nova",
                 "nova_object.version": "1.3", "nova_object.data": o} for o in objects]}}


@pytest.mark.parametrize("args, error, reason", [
    ({"requested_networks": [{"network_id": "n1"}]}, "InvalidInput", "network id 'n1'"),
    ({"requested_networks": _nova_list(
        "NetworkRequestList", "NetworkRequest",
        {"network_id": "1b2c3d4e-5f60-4718-9a2b-3c4d5e6f7081",
         "port_id": "6a7b8c9d-0e1f-4a2b-8c3d-4e5f6a7b8c9d"})},
     "NetworkNotFound", "Network 1b2c3d4e-5f60-4718-9a2b-3c4d5e6f7081 could not be found"),
    ({"block_device_mapping": _nova_list(
        "BlockDeviceMappingList", "BlockDeviceMapping",
        {"source_type": "volume", "destination_type": "volume", "volume_id": "v1"})},
     "NotSupported", "block_device_mapping"),
    ({"block_device_mapping": {"nova_object.name": "BlockDeviceMappingList",
                               "nova_object.namespace": "nova", "nova_object.version": "1.18",
                               "nova_object.data": "not an object"}},
     "InvalidArguments", "block_device_mapping"),
    ({"image": {"id": "../../etc/passwd"}}, "InvalidArguments", "image.id"),
    ({"instance_memory": 1}, "InvalidArguments", "must not contain"),
], ids=["plain networks", "nova networks", "a volume mapping", "a hostile list", "image path",
        "unknown kwarg"])
def test_what_a_build_cannot_do_is_refused_before_anything_runs(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config, built: list[str],
        args: dict[str, Any], error: str, reason: str) -> None:
    """What the schema refuses, or a plain build cannot do (a network no bridge_mappings
    maps, volumes), makes nothing."""
    uid = str(uuid.uuid4())
    with pytest.raises(RemoteError) as failure:
        rpc.call(cfg.host, "build_and_run_instance", {"instance": {"uuid": uid}, **args},
                 timeout=10)
    assert error == failure.value.exc_class
    assert reason in failure.value.message
    assert None is domain_state(TEST_URI, uid)
    assert not (worker.paths.root / uid).exists()


def _img(*args: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", *args], check=True)


def test_base_images_that_could_reach_other_files_are_refused(tmp_path: Path) -> None:
    """Only plain raw or qcow2 files inside images_path are used as a base."""
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    outside = tmp_path / "secret.raw"
    _img("-f", "raw", str(outside), "1M")
    (images_dir / "escape").symlink_to(outside)
    _img("-f", "qcow2", "-b", str(outside), "-F", "raw", str(images_dir / "layered"))
    _img("-f", "vmdk", str(images_dir / "other-format"), "1M")
    _img("-f", "raw", str(images_dir / "good"), "3M")
    cache = ImageCache(str(tmp_path / "instances"), str(images_dir))
    for image_id, reason in [("escape", "leads out"), ("layered", "backing file"),
                             ("other-format", "vmdk"), ("absent", "could not be found"),
                             ("..", "not one file name"), ("a/../../secret.raw", "not one")]:
        with pytest.raises(ImageError, match=reason):
            cache.source(image_id)
    assert (images_dir.resolve() / "good", "raw") == cache.source("good")
    assert not (tmp_path / "instances" / "_base").exists()  # nothing cached on the way


def test_a_root_disk_needs_a_size_or_a_base_and_is_never_smaller_than_its_base(
        tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="needs a base image or a size"):
        images.root_disk(tmp_path / "disk", 0, None)
    _img("-f", "raw", str(tmp_path / "big"), "2G")  # sparse: costs no space
    with pytest.raises(FlavorDiskSmallerThanImage, match="too small"):
        images.root_disk(tmp_path / "disk", 1, tmp_path / "big", "raw")
    assert not (tmp_path / "disk").exists()
    images.root_disk(tmp_path / "disk", 0, tmp_path / "big", "raw")
    assert (2 << 30) == _qemu_img_info(tmp_path / "disk")["virtual-size"]
