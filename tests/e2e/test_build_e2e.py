"""build_and_run_instance on real QEMU: a qcow2 root disk, a started domain, then terminate."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from tests.domains import QEMU_URI, Vm, domain_state, remove_domain, state_of
from tests.e2e.support import NAME_PREFIX
from tests.helpers import check_event
from tests.taps import EventTap
from worker.amqp.client import RpcClient
from worker.config import Config
from worker.service import Service
from worker.virt.image_cache import cache_name

pytestmark = pytest.mark.e2e


@pytest.fixture
def build_cfg(make_config: Callable[..., Config], domain_type: str) -> Config:
    """virt_type matching the machine, so the build makes a kvm domain where KVM works."""
    return make_config(virt_type=domain_type, build_timeout=60)


@pytest.fixture
def builder(build_cfg: Config, qemu: libvirt.virConnect) -> Iterator[tuple[Service, EventTap]]:
    tap = EventTap(build_cfg.transport_url, build_cfg.control_exchange,
                   build_cfg.notifications.notification_topic)
    service = Service(build_cfg)
    service.start()
    yield service, tap
    service.stop(grace=30)
    tap.close()


def test_build_boots_a_qemu_domain_on_its_own_disk_and_terminate_removes_it(
        builder: tuple[Service, EventTap], build_cfg: Config, rpc: RpcClient,
        qemu: libvirt.virConnect, domain_type: str) -> None:
    service, tap = builder
    vm = Vm.new(NAME_PREFIX)
    uid = vm.uuid
    try:
        rpc.cast(build_cfg.host, "build_and_run_instance",
                 {"instance": {"uuid": uid, "name": vm.name, "memory_mb": 64, "root_gb": 1}})
        end = tap.wait_type(uid, "instance.create.end", timeout=90)[0]
        assert "running" == end["payload"]["nova_object.data"]["power_state"]
        assert libvirt.VIR_DOMAIN_RUNNING == state_of(QEMU_URI, uid)
        live = etree.fromstring(qemu.lookupByUUIDString(uid).XMLDesc(0))
        assert domain_type == live.get("type")
        disk = service.paths.root / uid / "disk"
        assert [str(disk)] == [s.get("file") for s in live.findall("devices/disk/source")]
        assert disk.is_file()

        rpc.cast(build_cfg.host, "terminate_instance", {"instance": {"uuid": uid}})
        tap.wait_type(uid, "instance.delete.end", timeout=60)
        assert None is domain_state(QEMU_URI, uid)
        assert not (service.paths.root / uid).exists()
        for event in tap.of(uid):
            check_event(event)
    finally:
        remove_domain(qemu, uid)


def test_a_build_with_nova_s_flavor_disks_boots_and_terminate_leaves_only_the_cache(
        builder: tuple[Service, EventTap], build_cfg: Config, rpc: RpcClient,
        qemu: libvirt.virConnect) -> None:
    """Root overlay on the cached image, ext4 ephemeral and swap: QEMU opens all three."""
    service, tap = builder
    store = Path(build_cfg.images_path)
    store.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(store / "img-1"), "16M"],
                   check=True)
    vm = Vm.new(NAME_PREFIX)
    flavor = {"memory_mb": 64, "vcpus": 1, "root_gb": 1, "ephemeral_gb": 1, "swap": 32}
    try:
        rpc.cast(build_cfg.host, "build_and_run_instance",
                 {"instance": {"uuid": vm.uuid, "name": vm.name, "flavor": flavor},
                  "image": {"id": "img-1"}})
        end = tap.wait_type(vm.uuid, "instance.create.end", timeout=90)[0]
        check_event(end)
        assert "running" == end["payload"]["nova_object.data"]["power_state"]
        live = etree.fromstring(qemu.lookupByUUIDString(vm.uuid).XMLDesc(0))
        home = service.paths.root / vm.uuid
        assert [str(home / n) for n in ("disk", "disk.eph0", "disk.swap")] == [
            s.get("file") for s in live.findall("devices/disk/source")]

        rpc.cast(build_cfg.host, "terminate_instance", {"instance": {"uuid": vm.uuid}})
        tap.wait_type(vm.uuid, "instance.delete.end", timeout=60)
        assert ["_base"] == [p.name for p in service.paths.root.iterdir()]
        assert [cache_name("img-1")] == [p.name for p in (service.paths.root / "_base").iterdir()
                                         if not p.name.endswith(".lock")]
    finally:
        remove_domain(qemu, vm.uuid)
