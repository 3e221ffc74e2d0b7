"""nova's own ComputeAPI drives live migration between two workers on two libvirt hosts.

As nova's conductor does it: check_can_live_migrate_destination (a call to
the destination, which asks the source; nova's client turns the answer into
its LibvirtLiveMigrateData), then live_migration (a cast to the source,
which then talks to the destination itself). live_migration_abort and
live_migration_force_complete are nova's too. Host B is a SecondHost
(tests/second_host.py); each move is checked through both libvirtds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.e2e.migration_support import (
    IMAGE,
    Host,
    Pair,
    pair_of_hosts,
    runs_on_exactly,
    wait_migrating,
)
from tests.helpers import check_event
from tests.interop.nova import EXCHANGE, nova_context
from tests.second_host import SecondHost

pytestmark = [pytest.mark.interop, pytest.mark.e2e]
SLOW_KBIT = 2000


@pytest.fixture
def nova_api(nova_conf: Any) -> Iterator[Any]:
    """nova's ComputeAPI at its full 6.5 cap (migration calls go to compute-alt)."""
    from nova.compute import rpcapi

    nova_conf.set_override("compute", "6.5", group="upgrade_levels")
    yield rpcapi.ComputeAPI()
    nova_conf.clear_override("compute", group="upgrade_levels")


@pytest.fixture
def pair(tmp_path: Path, broker_url: str) -> Iterator[Pair]:
    instances = tmp_path / "instances"
    with SecondHost() as second, pair_of_hosts(
            second, tag=uuid.uuid4().hex[:8], broker_url=broker_url, work=tmp_path,
            instances=instances, b_instances_seen=instances, images=tmp_path / "images",
            control_exchange=EXCHANGE) as hosts:
        yield hosts


def _objects(uid: str, source: Host, dest: Host) -> tuple[Any, Any]:
    from nova import objects

    flavor = objects.Flavor(id=1, flavorid="1", name="mig", memory_mb=64, vcpus=1, root_gb=0,
                            ephemeral_gb=0, swap=0, extra_specs={})
    instance = objects.Instance(uuid=uid, host=source.name, node=source.name,
                                display_name="mig", hostname="mig", flavor=flavor,
                                memory_mb=64, vcpus=1, root_gb=0, ephemeral_gb=0,
                                image_ref=IMAGE, vm_state="active", task_state="migrating",
                                user_id="user-1", project_id="project-1", metadata={},
                                system_metadata={}, power_state=1)
    migration = objects.Migration(id=7, uuid=str(uuid.uuid4()), source_compute=source.name,
                                  dest_compute=dest.name, migration_type="live-migration",
                                  status="accepted")
    return instance, migration


def _start_move(api: Any, uid: str, source: Host, dest: Host) -> tuple[Any, Any]:
    """nova's conductor: the destination's check, then the source's live_migration."""
    from nova.objects import migrate_data

    ctxt = nova_context()
    instance, migration = _objects(uid, source, dest)
    data = api.check_can_live_migrate_destination(ctxt, instance, dest.name, None, False,
                                                  migration, None)
    assert isinstance(data, migrate_data.LibvirtLiveMigrateData)
    api.live_migration(ctxt, instance, dest.name, data.block_migration, source.name, migration,
                       data)
    return instance, migration


def test_nova_moves_it_live_aborts_a_move_and_forces_one_to_complete(
        nova_api: Any, pair: Pair) -> None:
    api, ctxt = nova_api, nova_context()
    uid = pair.build()
    # A -> B, live, on shared storage.
    _start_move(api, uid, pair.a, pair.b)
    pair.ended(uid, "instance.live_migration_post.end")
    runs_on_exactly(pair, uid, pair.b)
    # B -> A on a slow link, aborted by nova's live_migration_abort: it stays on B.
    pair.second.limit_bandwidth(SLOW_KBIT)
    try:
        instance, migration = _start_move(api, uid, pair.b, pair.a)
        wait_migrating(pair.b, uid)
        api.live_migration_abort(ctxt, instance, migration.id)
        pair.ended(uid, "instance.live_migration_rollback.end")
    finally:
        pair.second.limit_bandwidth(None)
    runs_on_exactly(pair, uid, pair.b)
    assert pair.ended(uid, "instance.live_migration_abort.end")
    # B -> A again, slow, and nova's live_migration_force_complete: the guest is paused on
    # B until the copy catches up, and runs on A after.
    pair.second.limit_bandwidth(SLOW_KBIT)
    try:
        instance, migration = _start_move(api, uid, pair.b, pair.a)
        wait_migrating(pair.b, uid)
        api.live_migration_force_complete(ctxt, instance, migration)
        pair.ended(uid, "instance.live_migration_force_complete.end")
        assert pair.b.domain_state(uid) in ((libvirt.VIR_DOMAIN_PAUSED, True), None)
    finally:
        pair.second.limit_bandwidth(None)
    pair.ended(uid, "instance.live_migration_post.end", count=2)
    runs_on_exactly(pair, uid, pair.a)
    for event in pair.tap.of(uid):
        check_event(event)
