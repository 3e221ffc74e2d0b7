"""snapshot_instance on real QEMU: live block copy in four formats, cold, and a build from it.

One guest, built once from a qcow2 image of recognisable bytes (with more
written into its own overlay), serves the live snapshots; each test runs a
worker of its own with the snapshot_image_format it needs.
"""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest
from kombu import Connection
from lxml import etree

from tests.brokers import delete_names, notification_names, service_names
from tests.domains import QEMU_URI, Vm, remove_domain, state_of
from tests.e2e.support import NAME_PREFIX, Verbs, check_all
from tests.snapshot_checks import (
    IN_BASE,
    IN_OVERLAY,
    check_image,
    details,
    image_info,
    leftovers,
    make_base_image,
)
from tests.taps import EventTap
from worker import config as config_mod
from worker.amqp.client import RpcClient
from worker.config import Config
from worker.service import Service
from worker.virt import disk_xml
from worker.virt.domain_xml import to_string
from worker.virt.image_cache import cache_name

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Built:
    """The guest the live snapshots are taken of, and the directories it lives in."""

    vm: Vm
    images: Path
    instances: Path

    @property
    def disk(self) -> Path:
        """Its root disk, as the build made it."""
        return self.instances / self.vm.uuid / "disk"


def _build(rpc: RpcClient, tap: EventTap, host: str, vm: Vm, image_id: str) -> dict[str, Any]:
    """build_and_run_instance of a 64 MiB, root_gb 1 guest from image_id; its end payload."""
    rpc.cast(host, "build_and_run_instance", {
        "instance": {"uuid": vm.uuid, "name": vm.name, "memory_mb": 64, "root_gb": 1},
        "image": {"id": image_id}})
    end = tap.wait_type(vm.uuid, "instance.create.end", timeout=90)[0]
    data: dict[str, Any] = end["payload"]["nova_object.data"]
    return data


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, broker_url: str, qemu: libvirt.virConnect,
          domain_type: str) -> Iterator[Built]:
    """A running guest built by the worker from an image carrying IN_BASE, its overlay
    then given IN_OVERLAY while it was off; removed after the module."""
    root = tmp_path_factory.mktemp("snapshots")
    images, instances = root / "images", root / "instances"
    base_id = str(uuid.uuid4())
    make_base_image(images / base_id)
    tag = uuid.uuid4().hex[:10]
    cfg = config_mod.load(None, {
        "host": f"host-{tag}", "transport_url": broker_url, "control_exchange": f"nova_{tag}",
        "notification_topic": f"notifications_{tag}", "virt_type": domain_type,
        "instances_path": str(instances), "images_path": str(images),
        "state_dir": str(root / "state"), "shutdown_timeout": 1, "build_timeout": 60,
    }, environ={})
    vm = Vm.new(NAME_PREFIX)
    tap = EventTap(cfg.transport_url, cfg.control_exchange,
                   cfg.notifications.notification_topic)
    service = Service(cfg)
    service.start()
    try:
        with Connection(cfg.transport_url) as conn:
            rpc = RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic)
            assert "running" == _build(rpc, tap, cfg.host, vm, base_id)["power_state"]
            # Bytes of the instance's own, beside the image's: written while QEMU is off.
            rpc.cast(cfg.host, "stop_instance", vm.args)
            tap.wait_type(vm.uuid, "instance.power_off.end", timeout=60)
            IN_OVERLAY.write(instances / vm.uuid / "disk", "qcow2")
            rpc.cast(cfg.host, "start_instance", vm.args)
            tap.wait_type(vm.uuid, "instance.power_on.end", timeout=60)
        yield Built(vm, images, instances)
    finally:
        service.stop(grace=30)
        tap.close()
        remove_domain(qemu, vm.uuid)
        delete_names(broker_url, service_names(cfg, []) + notification_names(cfg),
                     {cfg.control_exchange})


@pytest.fixture
def image_format() -> str:
    """The worker's snapshot_image_format ("" = the root disk's format)."""
    return ""


@pytest.fixture
def cfg(make_config: Callable[..., Config], built: Built, domain_type: str,
        image_format: str) -> Config:
    """A worker of this test's own on the module guest's directories."""
    return make_config(virt_type=domain_type, instances_path=str(built.instances),
                       images_path=str(built.images), snapshot_image_format=image_format,
                       shutdown_timeout=1, build_timeout=60)


@pytest.fixture
def lifecycle(qemu: libvirt.virConnect) -> Iterator[list[tuple[str, int]]]:
    """Every libvirt lifecycle event (domain uuid, event) while the test runs."""
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()

    def record(_conn: Any, dom: libvirt.virDomain, event: int, _detail: int,
               _opaque: Any) -> None:
        with lock:
            seen.append((dom.UUIDString(), event))

    callback = qemu.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                           record, None)
    yield seen
    qemu.domainEventDeregisterAny(callback)


def _root_source(qemu: libvirt.virConnect, vm: Vm) -> tuple[str | None, bool]:
    """The file the guest's vda is on now, and whether a block job still runs on it."""
    dom = qemu.lookupByUUIDString(vm.uuid)
    disk = etree.fromstring(dom.XMLDesc(0)).find("devices/disk")
    assert disk is not None
    source = disk.find("source")
    return (source.get("file") if source is not None else None,
            disk.find("mirror") is not None or bool(dom.blockJobInfo("vda", 0)))


@pytest.mark.parametrize("image_format", ["raw", "qcow2", "vmdk", "vdi"])
def test_a_running_guest_is_snapshotted_live_and_keeps_running(
        built: Built, verb: Verbs, tap: EventTap, qemu: libvirt.virConnect, image_format: str,
        lifecycle: list[tuple[str, int]]) -> None:
    """Live block copy: a standalone image in the asked format with both layers' bytes, the
    checksum the end event says; the guest never paused and is still on its own disk."""
    image_id = str(uuid.uuid4())

    run = verb(built.vm, "snapshot_instance", "snapshot", image_id=image_id, timeout=120)

    assert "live" == details(run.end)["method"]
    assert ("running", "running") == (run.before["power_state"], run.after["power_state"])
    assert image_id == run.after["snapshot_image_id"]
    image = built.images / image_id
    check_image(image, image_format, run.end)
    assert IN_BASE.found_in(image, image_format) and IN_OVERLAY.found_in(image, image_format)
    assert libvirt.VIR_DOMAIN_RUNNING == state_of(QEMU_URI, built.vm.uuid)
    assert [] == [event for uid, event in lifecycle if uid == built.vm.uuid]
    assert (str(built.disk), False) == _root_source(qemu, built.vm)
    assert [] == leftovers(built.images, built.instances / built.vm.uuid)
    check_all(tap)


def test_a_build_boots_from_the_qcow2_snapshot(
        built: Built, verb: Verbs, rpc: RpcClient, tap: EventTap, cfg: Config,
        qemu: libvirt.virConnect) -> None:
    """The qcow2 snapshot is a base image the next build boots, carrying the guest's bytes."""
    image_id = str(uuid.uuid4())
    verb(built.vm, "snapshot_instance", "snapshot", image_id=image_id, timeout=120)
    second = Vm.new(NAME_PREFIX)
    try:
        assert "running" == _build(rpc, tap, cfg.host, second, image_id)["power_state"]
        disk = built.instances / second.uuid / "disk"
        # The build's base is the snapshot, cached (raw) under nova's name for it.
        assert str(built.instances / "_base" / cache_name(image_id)) == check_backing(disk)
        assert IN_BASE.found_in(disk, "qcow2", shared=True)
        assert IN_OVERLAY.found_in(disk, "qcow2", shared=True)
        verb(second, "terminate_instance", "delete")
        assert not (built.instances / second.uuid).exists()
    finally:
        remove_domain(qemu, second.uuid)
    check_all(tap)


def check_backing(disk: Path) -> str:
    """The backing file of a qcow2 disk (the image the build put under it)."""
    return str(image_info(disk)["full-backing-filename"])


def test_a_stopped_guest_is_copied_cold(
        built: Built, verb: Verbs, rpc: RpcClient, tap: EventTap, cfg: Config,
        qemu: libvirt.virConnect, lifecycle: list[tuple[str, int]]) -> None:
    """A stopped guest is exported from its disk as it is, and stays stopped."""
    base_id = str(uuid.uuid4())
    make_base_image(built.images / base_id)
    vm = Vm.new(NAME_PREFIX)
    try:
        _build(rpc, tap, cfg.host, vm, base_id)
        verb(vm, "stop_instance", "power_off")
        image_id = str(uuid.uuid4())

        run = verb(vm, "snapshot_instance", "snapshot", image_id=image_id, timeout=120)

        assert ("cold", "shutdown") == (details(run.end)["method"], run.after["power_state"])
        image = built.images / image_id
        check_image(image, "qcow2", run.end)
        assert IN_BASE.found_in(image, "qcow2")
        assert libvirt.VIR_DOMAIN_SHUTOFF == state_of(QEMU_URI, vm.uuid)
        assert [] == leftovers(built.images, built.instances / vm.uuid)
        # The recorder the live test relies on does see a guest's state changes.
        assert (vm.uuid, libvirt.VIR_DOMAIN_EVENT_STOPPED) in lifecycle
    finally:
        remove_domain(qemu, vm.uuid)
    check_all(tap)


def test_a_block_copy_left_by_a_killed_snapshot_is_ended_and_the_snapshot_done_again(
        built: Built, verb: Verbs, tap: EventTap, qemu: libvirt.virConnect) -> None:
    """A worker killed mid-copy leaves QEMU mirroring into the delta; the redelivered
    snapshot ends that job and takes its own, leaving no job and no delta behind."""
    image_id = str(uuid.uuid4())
    delta = built.instances / built.vm.uuid / f"snapshot-{image_id}.delta"
    root = image_info(built.disk)
    backing, backing_fmt = root["full-backing-filename"], root["backing-filename-format"]
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing),
                    "-F", str(backing_fmt), str(delta), "1G"], check=True)
    dom = qemu.lookupByUUIDString(built.vm.uuid)
    destination = to_string(disk_xml.disk(disk_xml.DiskSpec("file", str(delta), "vda")))
    dom.blockCopy("vda", destination, None,
                  libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT | libvirt.VIR_DOMAIN_BLOCK_COPY_SHALLOW
                  | libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB)
    try:
        assert (str(built.disk), True) == _root_source(qemu, built.vm)

        run = verb(built.vm, "snapshot_instance", "snapshot", image_id=image_id, timeout=120)
    finally:
        if dom.blockJobInfo("vda", 0):
            dom.blockJobAbort("vda", 0)

    assert "live" == details(run.end)["method"]
    check_image(built.images / image_id, "qcow2", run.end)
    assert (str(built.disk), False) == _root_source(qemu, built.vm)
    assert [] == leftovers(built.images, built.instances / built.vm.uuid)
    check_all(tap)
