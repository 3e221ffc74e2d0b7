"""Builds with nova's disks on the test driver: the image cache, ephemeral and swap, the sweep.

Real qemu-img, mkfs and mkswap make real files; the test driver defines the
domains (QEMU boots such builds in tests/e2e).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from tests.domains import TEST_URI, domain_state
from tests.helpers import check_event
from tests.taps import EventTap
from worker.amqp.client import RemoteError, RpcClient
from worker.config import Config
from worker.service import Service
from worker.virt.image_cache import ImageCache, cache_name

pytestmark = pytest.mark.integration
Logs = list[MutableMapping[str, Any]]
IMAGE = "debian-12"


@pytest.fixture
def image(cfg: Config) -> Path:
    """A 16 MiB qcow2 image in the image store with a marker written at 1 MiB."""
    store = Path(cfg.images_path)
    store.mkdir(parents=True, exist_ok=True)
    raw = store / "source.raw"
    with open(raw, "wb") as handle:
        handle.truncate(16 << 20)
        handle.seek(1 << 20)
        handle.write(b"compute-worker-marker")
    path = store / IMAGE
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
                    str(path)], check=True)
    raw.unlink()
    return path


def _flavor(**sizes: int) -> dict[str, Any]:
    """nova's Flavor primitive with these sizes."""
    data = {"id": 1, "flavorid": "1", "name": "t", "memory_mb": 64, "vcpus": 1, "root_gb": 0,
            "ephemeral_gb": 0, "swap": 0, "extra_specs": {}, **sizes}
    return {"nova_object.name": "Flavor", "nova_object.namespace": "nova",
            "nova_object.version": "1.2", "nova_object.data": data}


def _build(rpc: RpcClient, cfg: Config, made: list[str], *, image: str | None = IMAGE,
           **sizes: int) -> str:
    uid = str(uuid.uuid4())
    made.append(uid)
    rpc.cast(cfg.host, "build_and_run_instance", {
        "instance": {"uuid": uid, "flavor": _flavor(**sizes)},
        "image": {"id": image} if image else None})
    return uid


def _info(path: Path) -> dict[str, Any]:
    done = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(path)],
                          capture_output=True, text=True, check=True)
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def _blkid(path: Path) -> dict[str, str]:
    done = subprocess.run(["blkid", "-p", "-o", "export", str(path)], capture_output=True,
                          text=True, check=True)
    return dict(line.split("=", 1) for line in done.stdout.split() if "=" in line)


def _disks(uid: str) -> list[tuple[str, str, str]]:
    """(target, driver type, source file) of each disk in the persistent definition."""
    conn = libvirt.open(TEST_URI)
    try:
        xml = etree.fromstring(conn.lookupByUUIDString(uid).XMLDesc(
            libvirt.VIR_DOMAIN_XML_INACTIVE))
    finally:
        conn.close()
    return [(str(d.find("target").get("dev")), str(d.find("driver").get("type")),
             str(d.find("source").get("file"))) for d in xml.iterfind("devices/disk")]


def test_a_build_makes_root_ephemeral_and_swap_disks_as_nova_does(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config, built: list[str],
        image: Path, tmp_path: Path) -> None:
    uid = _build(rpc, cfg, built, root_gb=1, ephemeral_gb=1, swap=64)
    end = tap.wait_type(uid, "instance.create.end")[0]
    check_event(end)
    home = worker.paths.root / uid
    assert [("vda", "qcow2", str(home / "disk")), ("vdb", "raw", str(home / "disk.eph0")),
            ("vdc", "raw", str(home / "disk.swap"))] == _disks(uid)
    root = _info(home / "disk")
    base = worker.paths.root / "_base" / cache_name(IMAGE)
    assert ("qcow2", 1 << 30, str(base), "raw") == (
        root["format"], root["virtual-size"], root.get("backing-filename"),
        root.get("backing-filename-format"))
    assert "raw" == _info(base)["format"]  # the cache holds raw, as nova's default
    assert (1 << 30, 64 << 20) == ((home / "disk.eph0").stat().st_size,
                                   (home / "disk.swap").stat().st_size)
    eph, swap = _blkid(home / "disk.eph0"), _blkid(home / "disk.swap")
    assert ("ext4", "ephemeral0") == (eph["TYPE"], eph["LABEL"])
    assert "swap" == swap["TYPE"]
    # What the worker defined passes libvirt's own schema.
    subprocess.run(["virt-xml-validate", str(home / "libvirt.xml"), "domain"], check=True,
                   capture_output=True)
    # The marker the image holds reads through the overlay.
    read = tmp_path / "read"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(home / "disk"),
                    str(read)], check=True)  # sparse: 1 GiB costs what the image holds
    with open(read, "rb") as handle:
        handle.seek(1 << 20)
        assert b"compute-worker-marker" == handle.read(21)


def test_without_cow_images_the_root_disk_is_a_full_copy(
        make_config: Callable[..., Config], rpc: RpcClient, tap: EventTap, cfg: Config,
        built: list[str], image: Path) -> None:
    copy_cfg = make_config(use_cow_images=False, host=cfg.host,
                           control_exchange=cfg.control_exchange,
                           notification_topic=cfg.notifications.notification_topic)
    service = Service(copy_cfg, retry_sleep=lambda _s: None)
    service.start()
    try:
        uid = _build(rpc, cfg, built, root_gb=1)
        tap.wait_type(uid, "instance.create.end")
        root = _info(service.paths.root / uid / "disk")
        assert ("qcow2", 1 << 30, None) == (root["format"], root["virtual-size"],
                                            root.get("backing-filename"))
    finally:
        service.stop(grace=10)


def test_concurrent_builds_of_one_new_image_fill_the_cache_once(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config, built: list[str],
        image: Path, info_logs: Logs) -> None:
    uids = [_build(rpc, cfg, built, root_gb=1) for _ in range(4)]
    for uid in uids:
        check_event(tap.wait_type(uid, "instance.create.end")[0])
    assert 1 == sum(1 for e in info_logs if e["event"] == "image_cached")
    base = str(worker.paths.root / "_base" / cache_name(IMAGE))
    assert {base} == {_info(worker.paths.root / u / "disk")["backing-filename"] for u in uids}


def test_the_cache_lock_holds_between_threads(cfg: Config, image: Path) -> None:
    """Eight threads asking for one new image at once: one fill, one entry, all see it."""
    caches = [ImageCache(cfg.instances_path, cfg.images_path) for _ in range(8)]
    seen: list[Path] = []
    gate = threading.Barrier(len(caches))

    def use(cache: ImageCache) -> None:
        gate.wait()
        with cache.base(IMAGE) as base:
            seen.append(base.path)

    threads = [threading.Thread(target=use, args=(c,)) for c in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert (1, 8) == (sum(c.fills for c in caches), len(seen))
    assert 1 == len(set(seen))
    assert [] == [p.name for p in (Path(cfg.instances_path) / "_base").iterdir()
                  if ".part-" in p.name]


@pytest.mark.parametrize("sizes, error, reason", [
    ({"root_gb": 60000}, "InsufficientStorage", "flavor's disks"),
    ({"root_gb": 1, "ephemeral_gb": 60000}, "InsufficientStorage", "flavor's disks"),
], ids=["huge root_gb", "huge ephemeral_gb"])
def test_a_flavor_the_host_cannot_hold_is_refused_with_nothing_made(
        worker: Service, rpc: RpcClient, cfg: Config, built: list[str], image: Path,
        sizes: dict[str, int], error: str, reason: str) -> None:
    uid = str(uuid.uuid4())
    with pytest.raises(RemoteError) as failure:
        rpc.call(cfg.host, "build_and_run_instance",
                 {"instance": {"uuid": uid, "flavor": _flavor(**sizes)}, "image": {"id": IMAGE}},
                 timeout=20)
    assert (error, True) == (failure.value.exc_class, reason in failure.value.message)
    assert None is domain_state(TEST_URI, uid)
    assert not (worker.paths.root / uid).exists()
    assert not (worker.paths.root / "_base" / cache_name(IMAGE)).exists()


def test_an_image_smaller_flavor_is_refused_with_novas_error(
        worker: Service, rpc: RpcClient, cfg: Config, built: list[str]) -> None:
    store = Path(cfg.images_path)
    store.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(store / "big"), "3G"],
                   check=True)
    uid = str(uuid.uuid4())
    with pytest.raises(RemoteError) as failure:
        rpc.call(cfg.host, "build_and_run_instance",
                 {"instance": {"uuid": uid, "flavor": _flavor(root_gb=2)}, "image": {"id": "big"}},
                 timeout=20)
    assert "FlavorDiskSmallerThanImage" == failure.value.exc_class
    assert not (worker.paths.root / uid).exists()
    # The cache entry stays: it is whole, and the next build of this image may use it.
    assert (worker.paths.root / "_base" / cache_name("big")).is_file()


def test_the_sweep_removes_only_old_bases_no_instance_uses(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config, built: list[str],
        image: Path) -> None:
    store = Path(cfg.images_path)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(store / "unused"), "1M"],
                   check=True)
    cache = ImageCache(cfg.instances_path, cfg.images_path)
    with cache.base("unused"):
        pass
    uid = _build(rpc, cfg, built, root_gb=1)
    tap.wait_type(uid, "instance.create.end")
    used, unused = cache_name(IMAGE), cache_name("unused")

    young = cache.sweep(min_age=3600)
    assert ((), (used,), (unused,)) == (young.removed, young.in_use, young.too_young)
    later = time.time() + 7200
    swept = cache.sweep(min_age=3600, now=later)
    assert ((unused,), (used,)) == (swept.removed, swept.in_use)
    assert (worker.paths.root / "_base" / used).is_file()

    rpc.cast(cfg.host, "terminate_instance", {"instance": {"uuid": uid}})
    tap.wait_type(uid, "instance.delete.end")
    assert (worker.paths.root / "_base" / used).is_file()  # terminate leaves the cache alone
    assert (used,) == cache.sweep(min_age=3600, now=later).removed
    assert [] == cache.entries()


def test_the_service_sweeps_on_its_own(
        make_config: Callable[..., Config], cfg: Config, image: Path) -> None:
    sweeping = make_config(manager_interval=1, remove_unused_original_minimum_age_seconds=0)
    cache = ImageCache(sweeping.instances_path, sweeping.images_path)
    with cache.base(IMAGE):
        pass
    os.utime(cache.entries()[0], (time.time() - 10, time.time() - 10))
    service = Service(sweeping, retry_sleep=lambda _s: None)
    service.start()
    try:
        deadline = time.monotonic() + 15
        while cache.entries() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [] == cache.entries()
    finally:
        service.stop(grace=10)


def _volume(volume_id: str, info: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A volume mapping as nova's serializer sends one."""
    data = {"source_type": "volume", "destination_type": "volume", "volume_id": volume_id,
            "disk_bus": "virtio", "device_type": "disk", "boot_index": None,
            "connection_info": json.dumps({**info, "serial": volume_id}), **fields}
    return {"nova_object.name": "BlockDeviceMapping", "nova_object.namespace": "nova",
            "nova_object.version": "1.21", "nova_object.data": data}


def _mapping_list(*mappings: dict[str, Any]) -> dict[str, Any]:
    return {"nova_object.name": "BlockDeviceMappingList", "nova_object.namespace": "nova",
            "nova_object.version": "1.18", "nova_object.data": {"objects": list(mappings)}}


def test_a_build_boots_from_a_volume_with_no_local_root_disk(
        make_config: Callable[..., Config], rpc: RpcClient, tap: EventTap, cfg: Config,
        built: list[str], tmp_path: Path) -> None:
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(volumes / "boot"), "8M"],
                   check=True)
    own = make_config(volumes_path=str(volumes), host=cfg.host,
                      control_exchange=cfg.control_exchange,
                      notification_topic=cfg.notifications.notification_topic)
    service = Service(own, retry_sleep=lambda _s: None)
    service.start()
    try:
        uid, volume_id = str(uuid.uuid4()), str(uuid.uuid4())
        built.append(uid)
        boot = _volume(volume_id, {"driver_volume_type": "file",
                                   "data": {"device_path": str(volumes / "boot")}},
                       boot_index=0, device_name="/dev/vda")
        rpc.cast(cfg.host, "build_and_run_instance", {
            "instance": {"uuid": uid, "flavor": _flavor(root_gb=1, ephemeral_gb=1)},
            "image": None, "block_device_mapping": _mapping_list(boot)})
        check_event(tap.wait_type(uid, "instance.create.end")[0])
        conn = libvirt.open(TEST_URI)
        try:
            xml = etree.fromstring(conn.lookupByUUIDString(uid).XMLDesc(
                libvirt.VIR_DOMAIN_XML_INACTIVE))
        finally:
            conn.close()
        home = service.paths.root / uid
        disks = [(d.find("target").get("dev"), d.find("source").get("file"),
                  d.findtext("serial"), d.find("boot").get("order") if d.find("boot") is not None
                  else None) for d in xml.iterfind("devices/disk")]
        # libvirt keeps disks sorted by target.
        assert [("vda", str(volumes.resolve() / "boot"), volume_id, "1"),
                ("vdb", str(home / "disk.eph0"), None, None)] == disks
        assert not (home / "disk").exists()
    finally:
        service.stop(grace=10)


@pytest.mark.parametrize("mappings, error", [
    ([_volume(str(uuid.UUID(int=1)), {"driver_volume_type": "local",
                                      "data": {"device_path": "/etc/passwd"}})],
     "InvalidVolume"),
    ([_volume(str(uuid.UUID(int=1)), {"driver_volume_type": "local",
                                      "data": {"device_path": "/dev/loop0"}},
              device_name="/dev/vdb"),
      _volume(str(uuid.UUID(int=2)), {"driver_volume_type": "local",
                                      "data": {"device_path": "/dev/loop1"}},
              device_name="/dev/vdb")],
     "DevicePathInUse"),
    ([_volume(str(uuid.UUID(int=1)), {"driver_volume_type": "iscsi", "data": {}})],
     "NotSupported"),
], ids=["a path outside the prefixes", "one device name twice", "a type we cannot open"])
def test_a_build_with_a_volume_it_may_not_open_makes_nothing(
        worker: Service, rpc: RpcClient, cfg: Config, built: list[str], image: Path,
        mappings: list[dict[str, Any]], error: str) -> None:
    uid = str(uuid.uuid4())
    built.append(uid)
    with pytest.raises(RemoteError) as failure:
        rpc.call(cfg.host, "build_and_run_instance", {
            "instance": {"uuid": uid, "flavor": _flavor(root_gb=1)}, "image": {"id": IMAGE},
            "block_device_mapping": _mapping_list(*mappings)}, timeout=20)
    assert error == failure.value.exc_class
    assert None is domain_state(TEST_URI, uid)
    assert not (worker.paths.root / uid).exists()
