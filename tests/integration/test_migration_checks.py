"""The two-worker conversation before a live migration, on libvirt's test driver.

Host A (test:///default) has an instance built through a cast; host B is a
second worker on a private test driver. A conductor's call to B's
check_can_live_migrate_destination makes B call A's
check_can_live_migrate_source over the broker; pre_live_migration and
rollback_live_migration_at_destination run on B. The test driver cannot
migrate (tests/e2e moves QEMU guests between two libvirtds).
"""

from __future__ import annotations

import json
import subprocess
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.migration_support import migration
from tests.helpers import check_event
from tests.integration.test_storage_build import IMAGE, _build, image  # noqa: F401
from tests.taps import EventTap
from worker.amqp.client import RemoteError, RpcClient
from worker.config import Config
from worker.service import Service
from worker.virt.image_cache import cache_name

pytestmark = pytest.mark.integration


def _start(cfg: Config) -> Service:
    service = Service(cfg, retry_sleep=lambda _s: None, debounce=0.3)
    service.start()
    return service


@pytest.fixture
def host_b_factory(make_config: Callable[..., Config], cfg: Config, tmp_path: Path
                   ) -> Iterator[Callable[..., Service]]:
    """Starts host B: same broker and exchange as A, its own test driver and state."""
    node = tmp_path / "node-b.xml"
    node.write_text("<node><cpu><mhz>2000</mhz></cpu></node>")
    started: list[Service] = []

    def start(*, shared: bool) -> Service:
        b_cfg = make_config(host=f"{cfg.host}-b", control_exchange=cfg.control_exchange,
                            notification_topic=cfg.notifications.notification_topic,
                            connection_uri=f"test://{node}", state_dir=str(tmp_path / "state-b"),
                            instances_path=cfg.instances_path if shared
                            else str(tmp_path / "instances-b"))
        started.append(_start(b_cfg))
        return started[-1]

    yield start
    for service in started:
        service.stop(grace=10)


def _instance(uid: str, host: str) -> dict[str, Any]:
    return {"uuid": uid, "host": host, "vm_state": "active", "image_ref": IMAGE,
            "flavor": {"memory_mb": 64, "vcpus": 1, "root_gb": 1, "ephemeral_gb": 0,
                       "swap": 0}}


def _nova_migrate_data(primitive: dict[str, Any]) -> Any:
    """What nova's conductor makes of the answer: its own LibvirtLiveMigrateData."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nova.objects import migrate_data
    return migrate_data.LibvirtLiveMigrateData.obj_from_primitive(primitive)


def _check(rpc: RpcClient, dest: str, uid: str, source: str,
           block: bool | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = rpc.call(dest, "check_can_live_migrate_destination", {
        "instance": _instance(uid, source), "block_migration": block,
        "disk_over_commit": False, "migration": migration(source, dest), "limits": None},
        timeout=30)
    return answer


def _built(worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config,
           built: list[str]) -> str:
    uid = _build(rpc, cfg, built, root_gb=1)
    tap.wait_type(uid, "instance.create.end")
    return uid


def test_shared_instances_path_means_a_live_migration_without_block_copy(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config, built: list[str],
        image: Path, host_b_factory: Callable[..., Service]) -> None:  # noqa: F811
    host_b = host_b_factory(shared=True)
    uid = _built(worker, rpc, tap, cfg, built)
    answer = _check(rpc, host_b.cfg.host, uid, cfg.host)
    data = _nova_migrate_data(answer)
    assert (data.is_shared_instance_path, data.is_shared_block_storage,
            data.block_migration) == (True, True, False)
    assert data.disk_available_mb > 0 and data.instance_relative_path == uid
    # The test file only served the question.
    assert not (Path(cfg.instances_path) / data.filename).exists()
    # Asking for a block copy of shared disks is refused with nova's class, from the source.
    with pytest.raises(RemoteError) as refused:
        _check(rpc, host_b.cfg.host, uid, cfg.host, block=True)
    assert ("InvalidLocalStorage", "nova.exception") == (
        refused.value.exc_class, refused.value.failure["module"])


def test_own_instances_paths_mean_a_block_migration_and_pre_makes_the_disks(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config, built: list[str],
        image: Path, host_b_factory: Callable[..., Service]) -> None:  # noqa: F811
    host_b = host_b_factory(shared=False)
    b_tap = tap  # one exchange and topic: both hosts' events arrive here
    uid = _built(worker, rpc, tap, cfg, built)
    answer = _check(rpc, host_b.cfg.host, uid, cfg.host)
    data = _nova_migrate_data(answer)
    assert (data.is_shared_instance_path, data.block_migration) == (False, True)
    with pytest.raises(RemoteError) as refused:
        _check(rpc, host_b.cfg.host, uid, cfg.host, block=False)
    assert "InvalidSharedStorage" == refused.value.exc_class
    # The source's disk info, as live_migration sends it to pre_live_migration.
    source_disk = Path(cfg.instances_path) / uid / "disk"
    disk = json.dumps([{"type": "qcow2", "path": str(source_disk), "virt_disk_size": 1 << 30,
                        "backing_file": cache_name(IMAGE), "disk_size": 0}])
    pre = rpc.call(host_b.cfg.host, "pre_live_migration", {
        "instance": _instance(uid, cfg.host), "disk": None, "migrate_data": answer},
        timeout=30)
    assert pre["nova_object.name"] == "LibvirtLiveMigrateData"
    # Same path on B: B's own directory, own disk, on B's own copy of the base.
    b_dir = Path(host_b.cfg.instances_path) / uid
    assert b_dir.is_dir() and not (b_dir / "disk").exists()  # no disk info: no disks
    pre = rpc.call(host_b.cfg.host, "pre_live_migration", {
        "instance": _instance(uid, cfg.host), "disk": disk.replace(
            cfg.instances_path, host_b.cfg.instances_path), "migrate_data": answer}, timeout=30)
    info = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", str(b_dir / "disk")], check=True,
        capture_output=True, text=True).stdout)
    assert (info["virtual-size"], info["backing-filename"]) == (
        1 << 30, str(Path(host_b.cfg.instances_path) / "_base" / cache_name(IMAGE)))
    b_tap.wait_type(uid, "instance.live_migration_pre.end", count=2)
    rpc.call(host_b.cfg.host, "rollback_live_migration_at_destination", {
        "instance": _instance(uid, cfg.host), "destroy_disks": True, "migrate_data": answer},
        timeout=30)
    assert not b_dir.exists()
    assert (Path(cfg.instances_path) / uid / "disk").is_file()  # A keeps its own
    for event in b_tap.wait_type(uid, "instance.live_migration_rollback_dest.end"):
        check_event(event)
        assert event["payload"]["nova_object.data"]["host"] == host_b.cfg.host


def test_a_disk_outside_the_instance_directory_is_refused_by_pre(
        worker: Service, rpc: RpcClient, cfg: Config, host_b_factory: Callable[..., Service],
        tmp_path: Path) -> None:
    host_b = host_b_factory(shared=False)
    uid = str(uuid.uuid4())
    disk = json.dumps([{"type": "raw", "path": str(tmp_path / "victim"),
                        "virt_disk_size": 1 << 20, "backing_file": ""}])
    data = {"is_shared_instance_path": False, "block_migration": True}
    with pytest.raises(RemoteError) as refused:
        rpc.call(host_b.cfg.host, "pre_live_migration", {
            "instance": _instance(uid, cfg.host), "disk": disk, "migrate_data": data},
            timeout=30)
    assert refused.value.exc_class == "UnsafePath"
    assert not (tmp_path / "victim").exists()


def test_the_destination_says_when_the_source_does_not_have_the_instance(
        worker: Service, rpc: RpcClient, cfg: Config,
        host_b_factory: Callable[..., Service]) -> None:
    host_b = host_b_factory(shared=True)
    with pytest.raises(RemoteError) as refused:
        _check(rpc, host_b.cfg.host, str(uuid.uuid4()), cfg.host)
    assert ("InstanceNotFound", "nova.exception") == (
        refused.value.exc_class, refused.value.failure["module"])
    with pytest.raises(RemoteError) as same:
        _check(rpc, host_b.cfg.host, str(uuid.uuid4()), host_b.cfg.host)
    assert same.value.exc_class == "MigrationPreCheckError"


def test_a_destination_without_the_memory_refuses_before_asking_the_source(
        worker: Service, rpc: RpcClient, cfg: Config,
        host_b_factory: Callable[..., Service]) -> None:
    host_b = host_b_factory(shared=True)
    uid = str(uuid.uuid4())
    huge = {**_instance(uid, cfg.host), "flavor": {"memory_mb": 4194304, "vcpus": 1}}
    with pytest.raises(RemoteError) as refused:
        rpc.call(host_b.cfg.host, "check_can_live_migrate_destination", {
            "instance": huge, "block_migration": None, "disk_over_commit": False,
            "migration": migration(cfg.host, host_b.cfg.host), "limits": None}, timeout=30)
    assert refused.value.exc_class == "MigrationPreCheckError"
    assert "4194304 MiB" in refused.value.failure["message"]
