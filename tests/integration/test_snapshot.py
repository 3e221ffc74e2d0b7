"""snapshot_instance through a real RabbitMQ on libvirt's test driver, with real qemu-img disks.

The test driver has no block copy, so a running guest takes the paused path here;
tests/e2e/test_snapshot_e2e.py takes the live one on QEMU.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.domains import TEST_URI, Vm, remove_domain, state_of
from tests.helpers import check_event, small_disk
from tests.snapshot_checks import (
    IN_BASE,
    IN_OVERLAY,
    check_image,
    details,
    leftovers,
    make_base_image,
)
from tests.taps import Event, EventTap
from worker.amqp.client import RemoteError, RpcClient
from worker.config import Config
from worker.service import Service
from worker.virt.domain_xml import DomainSpec, domain, to_string

pytestmark = pytest.mark.integration


@pytest.fixture
def image_format() -> str:
    """snapshot_image_format of the worker under test ("" = the root disk's format)."""
    return ""


@pytest.fixture
def small_images() -> bool:
    """True: images_path is a 4 MiB tmpfs (root only)."""
    return False


@pytest.fixture
def cfg(make_config: Callable[..., Config], image_format: str, small_images: bool,
        tmp_path: Path) -> Iterator[Config]:
    """The worker's config: the test driver, the snapshot format, images_path as asked."""
    if not small_images:
        yield make_config(snapshot_image_format=image_format)
        return
    with small_disk(tmp_path / "small-images") as images:
        yield make_config(images_path=str(images), snapshot_image_format=image_format)


@pytest.fixture
def guest(cfg: Config, test_driver: libvirt.virConnect) -> Iterator[Callable[..., Vm]]:
    """Factory: a test-driver domain whose vda is a real qcow2 overlay (IN_OVERLAY) on a base
    image (IN_BASE), inside instances_path/<uuid>/; removed after the test."""
    made: list[Vm] = []

    def make(*, start: bool = True, disk: Path | None = None) -> Vm:
        vm = Vm.new("cw-snap-")
        made.append(vm)
        if disk is None:
            base = make_base_image(Path(cfg.images_path) / str(uuid.uuid4()))
            directory = Path(cfg.instances_path) / vm.uuid
            directory.mkdir(parents=True)
            disk = directory / "disk"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F",
                            "qcow2", str(disk), "64M"], check=True)
            IN_OVERLAY.write(disk, "qcow2")
        dom = test_driver.defineXML(to_string(domain(DomainSpec(
            vm.name, vm.uuid, domain_type="test", disks=(str(disk),)))))
        if start:
            dom.create()
        return vm

    yield make
    for vm in made:
        remove_domain(test_driver, vm.uuid)


def snapshot(rpc: RpcClient, tap: EventTap, cfg: Config, vm: Vm, image_id: str,
             final: str = "end", **extra: Any) -> Event:
    """Cast snapshot_instance; its end (or error) event, after checking both its events."""
    sent = rpc.cast(cfg.host, "snapshot_instance", {**vm.args, "image_id": image_id, **extra})
    request_id = sent["_context_request_id"]

    def mine() -> list[Event]:
        return [e for e in tap.of(vm.uuid)
                if e["payload"]["nova_object.data"]["request_id"] == request_id]

    tap.wait_for(lambda _: any(e["event_type"] != "instance.snapshot.start" for e in mine()),
                 timeout=60)
    events = mine()
    assert ["instance.snapshot.start", f"instance.snapshot.{final}"] == [
        e["event_type"] for e in events]
    for event in events:
        check_event(event)
        assert image_id == event["payload"]["nova_object.data"]["snapshot_image_id"]
    return events[-1]


def test_a_running_guest_the_driver_cannot_copy_live_is_paused_only_while_its_disk_is_copied(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config,
        guest: Callable[..., Vm]) -> None:
    """Paused path: details say paused and for how long, the guest runs again, the image is a
    standalone qcow2 (the root disk's format) holding both layers' bytes."""
    vm = guest()
    image_id = str(uuid.uuid4())

    end = snapshot(rpc, tap, cfg, vm, image_id)

    said = details(end)
    assert "paused" == said["method"]
    assert 0 <= said["paused_seconds"] < 5
    assert "running" == end["payload"]["nova_object.data"]["power_state"]
    assert libvirt.VIR_DOMAIN_RUNNING == state_of(TEST_URI, vm.uuid)
    image = Path(cfg.images_path) / image_id
    check_image(image, "qcow2", end)
    assert IN_BASE.found_in(image, "qcow2") and IN_OVERLAY.found_in(image, "qcow2")
    assert [] == leftovers(Path(cfg.images_path), worker.paths.root / vm.uuid)


@pytest.mark.parametrize("image_format", ["raw"])
def test_a_stopped_guest_is_copied_cold_in_the_configured_format(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config,
        guest: Callable[..., Vm]) -> None:
    """A defined, stopped guest is exported as it is, in snapshot_image_format, and stays off."""
    vm = guest(start=False)
    image_id = str(uuid.uuid4())

    end = snapshot(rpc, tap, cfg, vm, image_id)

    assert ("cold", "shutdown") == (details(end)["method"],
                                    end["payload"]["nova_object.data"]["power_state"])
    assert "paused_seconds" not in details(end)
    image = Path(cfg.images_path) / image_id
    check_image(image, "raw", end)
    assert IN_BASE.found_in(image, "raw") and IN_OVERLAY.found_in(image, "raw")
    assert libvirt.VIR_DOMAIN_SHUTOFF == state_of(TEST_URI, vm.uuid)


def test_a_second_snapshot_to_the_same_image_id_leaves_the_image_as_it_was(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config,
        guest: Callable[..., Vm]) -> None:
    """An image already published under the id (an earlier delivery) is success, not replaced."""
    vm = guest()
    image_id = str(uuid.uuid4())
    first = snapshot(rpc, tap, cfg, vm, image_id)
    image = Path(cfg.images_path) / image_id
    before = image.stat()

    again = snapshot(rpc, tap, cfg, vm, image_id)

    assert "existing" == details(again)["method"]
    assert details(first)["sha256"] == details(again)["sha256"]
    assert (before.st_ino, before.st_mtime_ns) == (image.stat().st_ino, image.stat().st_mtime_ns)


@pytest.mark.parametrize(("image_format", "small_images"), [("raw", True)])
def test_too_little_room_in_images_path_is_insufficient_storage_with_nothing_written(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config,
        guest: Callable[..., Vm]) -> None:
    """A raw export of a 64 MiB disk into a 4 MiB images_path fails before writing anything."""
    vm = guest()
    image_id = str(uuid.uuid4())

    error = snapshot(rpc, tap, cfg, vm, image_id, final="error")

    fault = error["payload"]["nova_object.data"]["fault"]["nova_object.data"]
    assert "InsufficientStorage" == fault["exception"]
    assert "running" == error["payload"]["nova_object.data"]["power_state"]
    assert libvirt.VIR_DOMAIN_RUNNING == state_of(TEST_URI, vm.uuid)
    assert not (Path(cfg.images_path) / image_id).exists()
    assert [] == leftovers(Path(cfg.images_path), worker.paths.root / vm.uuid)


def test_a_root_disk_outside_the_instance_directory_is_refused_with_nothing_written(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config,
        guest: Callable[..., Vm]) -> None:
    """A vda that points elsewhere (here: a base image) is never read or exported."""
    vm = guest(disk=make_base_image(Path(cfg.images_path) / str(uuid.uuid4())))
    image_id = str(uuid.uuid4())

    error = snapshot(rpc, tap, cfg, vm, image_id, final="error")

    fault = error["payload"]["nova_object.data"]["fault"]["nova_object.data"]
    assert "UnsafePath" == fault["exception"]
    assert not (Path(cfg.images_path) / image_id).exists()
    assert [] == leftovers(Path(cfg.images_path))


@pytest.mark.parametrize("extra", [
    {"image_id": "../../etc/passwd"},
    {"image_id": "snapshot-1"},
    {"image_id": None},
    {"image_id": "0d6f3f4e-8a5b-4c1e-9f7a-3b2c1d0e9f8a", "image": {"id": "not-a-uuid"}},
], ids=["dotdot", "a name", "null", "bad image.id"])
def test_an_image_id_that_is_not_a_uuid_is_refused_by_the_schema(
        worker: Service, rpc: RpcClient, cfg: Config, guest: Callable[..., Vm],
        extra: dict[str, Any]) -> None:
    """InvalidArguments, before the handler runs: nothing is written to images_path."""
    vm = guest()
    before = sorted(p.name for p in Path(cfg.images_path).iterdir())

    with pytest.raises(RemoteError) as failure:
        rpc.call(cfg.host, "snapshot_instance", {**vm.args, **extra}, timeout=10)

    assert "InvalidArguments" == failure.value.exc_class
    assert before == sorted(p.name for p in Path(cfg.images_path).iterdir())


def test_an_image_whose_id_differs_from_image_id_is_refused(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config,
        guest: Callable[..., Vm]) -> None:
    """nova's image meta, when sent, must name the image the snapshot is for."""
    vm = guest()
    image_id = str(uuid.uuid4())

    error = snapshot(rpc, tap, cfg, vm, image_id, final="error",
                     image={"id": str(uuid.uuid4()), "name": "snap"})

    fault = error["payload"]["nova_object.data"]["fault"]["nova_object.data"]
    assert "InvalidArguments" == fault["exception"]
    assert not (Path(cfg.images_path) / image_id).exists()
