"""The destination's CPU check against a real QEMU's idea of this host (nova's _compare_cpu).

A KVM destination asks libvirt (compareHypervisorCPU) whether it can run the
instance's CPU model; one it cannot run is nova's InvalidCPUInfo, before
the source is asked anything. The source here is a worker on libvirt's test
driver that does not have the instance: reaching it (InstanceNotFound) shows
the CPU check passed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
import pytest

from tests.e2e.migration_support import migration
from worker.amqp.client import RemoteError, RpcClient
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.e2e


@pytest.fixture
def hosts(make_config: Callable[..., Config], tmp_path: Any
          ) -> Iterator[tuple[Config, Config, Config]]:
    """A source on the test driver; KVM destinations on qemu:///system, one that compares
    CPUs and one with nova's skip_cpu_compare_on_dest."""
    source = make_config(virt_type="test")
    dests = [make_config(host=f"{source.host}-{name}", control_exchange=source.control_exchange,
                         notification_topic=source.notifications.notification_topic,
                         virt_type="kvm", state_dir=str(tmp_path / f"state-{name}"),
                         skip_cpu_compare_on_dest=skip)
             for name, skip in (("kvm", False), ("skip", True))]
    services = [Service(cfg, retry_sleep=lambda _s: None) for cfg in (source, *dests)]
    for service in services:
        service.start()
    yield source, dests[0], dests[1]
    for service in services:
        service.stop(grace=5)


def _check(rpc: RpcClient, source: Config, dest: Config, model: dict[str, Any]) -> RemoteError:
    uid = str(uuid.uuid4())
    with pytest.raises(RemoteError) as refused:
        rpc.call(dest.host, "check_can_live_migrate_destination", {
            "instance": {"uuid": uid, "host": source.host, "vcpu_model": model,
                         "flavor": {"memory_mb": 64, "vcpus": 1}},
            "block_migration": None, "disk_over_commit": False,
            "migration": migration(source.host, dest.host), "limits": None}, timeout=30)
    return refused.value


def test_a_cpu_this_host_cannot_run_is_invalid_cpu_info(
        qemu: libvirt.virConnect, hosts: tuple[Config, Config, Config]) -> None:
    source, dest, skipping = hosts
    from kombu import Connection
    with Connection(source.transport_url) as conn:
        rpc = RpcClient(conn, exchange=source.control_exchange)
        # The other vendor's server model, with a feature no x86 CPU has.
        foreign = {"arch": "x86_64", "model": "Cascadelake-Server", "vendor": "Intel",
                   "features": [{"name": "avx512vnni", "policy": "require"}]}
        refused = _check(rpc, source, dest, foreign)
        assert (refused.exc_class, refused.failure["module"]) == (
            "InvalidCPUInfo", "nova.exception"), refused.failure
        # nova's workaround skips the comparison: the source is asked (and has no such
        # instance). Nested hosts need it: on this one libvirt calls every model, qemu64
        # included, incompatible with its KVM (compareHypervisorCPU gives 0).
        assert _check(rpc, source, skipping, foreign).exc_class == "InstanceNotFound"
