"""Live and block migration between two real libvirt hosts, through two workers (issue 13).

Host B is a SecondHost: libvirtd in a network and mount namespace these
tests make and remove. Guests are built through a cast on A (the one-sector
test guest, on TCG, printing to its console log every 0.27 s), moved by the
conductor's calls in nova's order, and checked through both libvirtds: running
and persistent on exactly one host, its console still growing there. Failures
are injected mid-way (the destination refuses in pre, an abort, the
destination's libvirtd stopped during the job, the source's worker killed
during the job) and the guest must still run on exactly one host, with
nothing of it left on the other.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.brokers import wait_until
from tests.domains import connection
from tests.e2e.migration_support import (
    Pair,
    broker_user,
    console_grows,
    moving_slowly,
    pair_of_hosts,
    runs_on_exactly,
)
from tests.helpers import check_event
from tests.second_host import SecondHost

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("migration")


@pytest.fixture(scope="module")
def second(base: Path) -> Iterator[SecondHost]:
    """Host B; base/own/instances is B's own directory there, everything else is shared."""
    with SecondHost(private_paths=[base / "own" / "instances"]) as host:
        yield host


@pytest.fixture
def shared_pair(second: SecondHost, base: Path, broker_url: str, tmp_path: Path
                ) -> Iterator[Pair]:
    """A and B with one instances_path (shared storage)."""
    instances = base / "shared" / uuid.uuid4().hex[:8]
    instances.mkdir(parents=True)
    with pair_of_hosts(second, tag=uuid.uuid4().hex[:8], broker_url=broker_url,
                       work=tmp_path, instances=instances, b_instances_seen=instances,
                       images=base / "images") as pair:
        yield pair


@pytest.fixture
def own_pair(second: SecondHost, base: Path, broker_url: str, tmp_path: Path
             ) -> Iterator[Pair]:
    """A and B with an instances_path each, at the same path (block migration)."""
    instances = base / "own" / "instances"
    with pair_of_hosts(second, tag=uuid.uuid4().hex[:8], broker_url=broker_url,
                       work=tmp_path, instances=instances,
                       b_instances_seen=second.private_dir(instances),
                       images=base / "images") as pair:
        yield pair


def _blkid(path: Path) -> dict[str, str]:
    done = subprocess.run(["blkid", "-p", "-o", "export", str(path)], capture_output=True,
                          text=True, check=False)
    return dict(line.split("=", 1) for line in done.stdout.split() if "=" in line)


def _progress(pair: Pair, uid: str) -> list[dict[str, Any]]:
    """The details of every progress event of uid so far (ours: data remaining, time)."""
    return [e["payload"]["compute_worker.details"]
            for e in pair.tap.of(uid, "instance.live_migration.progress")]


def _checked(pair: Pair, uid: str) -> None:
    for event in pair.tap.snapshot():
        if event["payload"]["nova_object.data"].get("uuid") == uid:
            check_event(event)


def test_live_migration_a_to_b_and_back_with_shared_storage(shared_pair: Pair) -> None:
    pair = shared_pair
    uid = pair.build()
    data = pair.move(uid, pair.a, pair.b)
    assert data["nova_object.data"]["is_shared_instance_path"] is True
    runs_on_exactly(pair, uid, pair.b)
    console_grows(pair.a.instances / uid / "console.log")
    # The shared directory stays; it is the instance's, now on B.
    assert (pair.a.instances / uid / "disk").is_file()
    pair.move(uid, pair.b, pair.a)
    runs_on_exactly(pair, uid, pair.a)
    console_grows(pair.a.instances / uid / "console.log")
    # nova's events, each host for its part, in nova's order.
    types = [(e["publisher_id"].split(":")[1], e["event_type"]) for e in pair.tap.of(uid)
             if "live_migration" in e["event_type"] and "progress" not in e["event_type"]]
    first = [(pair.b.name, "instance.live_migration_pre.start"),
             (pair.b.name, "instance.live_migration_pre.end"),
             (pair.a.name, "instance.live_migration_post.start"),
             (pair.b.name, "instance.live_migration_post_dest.start"),
             (pair.b.name, "instance.live_migration_post_dest.end"),
             (pair.a.name, "instance.live_migration_post.end")]
    back = [(pair.a.name if h == pair.b.name else pair.b.name, t) for h, t in first]
    assert types == first + back
    post_dest = pair.tap.of(uid, "instance.live_migration_post_dest.end")[0]
    assert (post_dest["payload"]["nova_object.data"]["host"],
            post_dest["payload"]["nova_object.data"]["power_state"]) == (pair.b.name, "running")
    # Neither state watch said the instance went away or stopped while it moved.
    assert not pair.tap.of(uid, "instance.update")
    _checked(pair, uid)


def test_block_migration_with_own_instance_directories(own_pair: Pair) -> None:
    pair = own_pair
    uid = pair.build(ephemeral_gb=1)
    data = pair.move(uid, pair.a, pair.b)
    assert (data["nova_object.data"]["block_migration"],
            data["nova_object.data"]["is_shared_instance_path"]) == (True, False)
    runs_on_exactly(pair, uid, pair.b)
    # B's own directory holds the disks, on B's own copy of the base; A's is gone.
    assert (pair.b.instances / uid / "disk").is_file()
    assert (pair.b.instances / uid / "disk.eph0").is_file()
    assert not (pair.b.instances / uid / ".arriving").exists()
    assert any((pair.b.instances / "_base").iterdir())
    assert not (pair.a.instances / uid).exists()
    console_grows(pair.b.instances / uid / "console.log")
    # B's pre made disk.eph0 empty; the file system on it now came through the block copy.
    found = _blkid(pair.b.instances / uid / "disk.eph0")
    assert (found.get("TYPE"), found.get("LABEL")) == ("ext4", "ephemeral0"), found
    stats = pair.b.completed_job(uid)
    assert stats["downtime"] >= 0 and stats["time_elapsed"] > 0, stats
    _checked(pair, uid)


def test_an_aborted_migration_leaves_it_running_on_the_source(own_pair: Pair) -> None:
    pair = own_pair
    uid = pair.build()
    with moving_slowly(pair, uid, pair.a, pair.b):
        # Under way: QEMU is sending memory (the job's first moments only set it up).
        pair.tap.wait_for(lambda _: any(
            d["data_total"] > 0 and d["data_remaining"] > 0 for d in _progress(pair, uid)), 30)
        pair.rpc.cast(pair.a.name, "live_migration_abort", {
            "instance": {"uuid": uid}, "migration_id": 7})
        pair.ended(uid, "instance.live_migration_rollback.end")
    runs_on_exactly(pair, uid, pair.a)
    pair.ended(uid, "instance.live_migration_rollback_dest.end")
    assert not (pair.b.instances / uid).exists()
    assert pair.ended(uid, "instance.live_migration_abort.end")
    console_grows(pair.a.instances / uid / "console.log")
    assert all(d["elapsed_seconds"] > 0 for d in _progress(pair, uid))
    _checked(pair, uid)


def test_a_destination_that_refuses_in_pre_leaves_it_on_the_source(own_pair: Pair) -> None:
    pair = own_pair
    uid = pair.build()
    planted = pair.b.instances / uid
    planted.mkdir()  # B has a directory of that name that no migration made
    (planted / "keep").write_text("not the migration's")
    pair.move(uid, pair.a, pair.b, wait=False)
    pair.ended(uid, "instance.live_migration_rollback.end")
    error = pair.ended(uid, "instance.live_migration_pre.error")[0]
    assert "already exists here" in error["payload"]["nova_object.data"]["fault"][
        "nova_object.data"]["exception_message"]
    runs_on_exactly(pair, uid, pair.a)
    assert (planted / "keep").read_text() == "not the migration's"  # never removed
    _checked(pair, uid)


def test_the_destination_libvirtd_stopping_mid_job_leaves_it_on_the_source(
        own_pair: Pair) -> None:
    pair = own_pair
    uid = pair.build()
    try:
        with moving_slowly(pair, uid, pair.a, pair.b):
            pair.second.stop_libvirtd()
            pair.ended(uid, "instance.live_migration_rollback.end")
    finally:
        pair.second.start_libvirtd()
    runs_on_exactly(pair, uid, pair.a)
    # B's worker reconnects to its libvirtd and then cleans what pre made.
    wait_until(lambda: not (pair.b.instances / uid).exists(), 60,
               "B's arrival directory removed")
    console_grows(pair.a.instances / uid / "console.log")


def test_a_source_worker_killed_mid_job_ends_with_the_guest_on_one_host(
        own_pair: Pair) -> None:
    pair = own_pair
    uid = pair.build()
    with moving_slowly(pair, uid, pair.a, pair.b):
        pair.a.worker.kill()
    pair.a.worker.start()
    # The cast was not acked: the new life takes it again and finishes the move.
    pair.ended(uid, "instance.live_migration_post.end", timeout=120)
    runs_on_exactly(pair, uid, pair.b)
    assert not (pair.a.instances / uid).exists()
    assert pair.b.domain_state(uid) == (libvirt.VIR_DOMAIN_RUNNING, True)


def _links(netns: str | None = None) -> set[str]:
    """Link names in the root network namespace, or in netns."""
    argv = ["ip", *(["-n", netns] if netns else []), "-o", "link", "show"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _filters(uri: str) -> set[str]:
    with connection(uri) as conn:
        return set(conn.listNWFilters())


def test_vifs_move_with_the_guest_between_network_namespaces(
        second: SecondHost, base: Path, broker_url: str, tmp_path: Path) -> None:
    """B's worker in B's network namespace: pre makes the tap, the bridge and the filters
    there, post removes A's; and back again."""
    tag = uuid.uuid4().hex[:6]
    instances = base / "own" / "instances"
    tap, bridge, port_t, port_b = f"cwm{tag}t", f"cwm{tag}br", str(uuid.uuid4()), \
        str(uuid.uuid4())
    network_info = [_vif(port_t, tap, "tap", None, "10.9.7.5"),
                    _vif(port_b, None, "bridge", bridge, "10.9.7.6")]
    with broker_user(tag) as (user, password), pair_of_hosts(
            second, tag=tag, broker_url=broker_url, work=tmp_path, instances=instances,
            b_instances_seen=second.private_dir(instances), images=base / "images",
            b_transport_url=f"amqp://{user}:{password}@{second.root_addr}:5672//",
            firewall_driver="nwfilter", manage_bridges=True) as pair:
        uid = pair.build(network_info=network_info)
        assert {tap, bridge} <= _links()
        pair.move(uid, pair.a, pair.b)
        runs_on_exactly(pair, uid, pair.b)
        assert {tap, bridge} <= _links(second.netns)
        assert not {tap, bridge} & _links()  # A's worker removed what it made
        assert {f"compute-worker-{port_t}", f"compute-worker-{port_b}"} <= _filters(pair.b.uri)
        assert not {f"compute-worker-{port_t}"} & _filters(pair.a.uri)
        assert (pair.b.instances / uid / "vifs.json").is_file()
        console_grows(pair.b.instances / uid / "console.log")
        pair.move(uid, pair.b, pair.a)
        runs_on_exactly(pair, uid, pair.a)
        assert {tap, bridge} <= _links()
        assert not {tap, bridge} & _links(second.netns)
        _checked(pair, uid)


def _vif(port: str, devname: str | None, kind: str, bridge: str | None,
         ip: str) -> dict[str, Any]:
    return {"id": port, "address": None, "type": kind, "devname": devname,
            "vnic_type": "normal", "details": {},
            "network": {"id": "9a0d3c2b-5e4f-4a1b-8c7d-6e5f4a3b2c1d", "bridge": bridge,
                        "label": "private", "subnets": [{"cidr": "10.9.7.0/24",
                                                         "ips": [{"address": ip}],
                                                         "gateway": {"address": "10.9.7.1"}}]}}
