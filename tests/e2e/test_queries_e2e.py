"""get_instance_info and list_instances calls against real QEMU domains."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import libvirt
import pytest

from tests.domains import Vm
from worker.amqp.client import RemoteError, RpcClient
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.e2e


def test_get_instance_info_reports_a_running_domain(
        worker: Service, rpc: RpcClient, cfg: Config, vms: Callable[..., list[Vm]]) -> None:
    """get_instance_info returns the domain's identity, state, 64 MiB, one vCPU and CPU time."""
    (vm,) = vms(1)
    info = rpc.call(cfg.host, "get_instance_info", vm.args, timeout=20)
    assert (vm.uuid, vm.name, "running", "active") == (
        info["uuid"], info["name"], info["power_state"], info["vm_state"])
    assert (64 * 1024, 1) == (info["max_mem_kb"], info["num_cpu"])
    assert info["mem_kb"] > 0
    assert info["cpu_time_ns"] > 0


def test_get_instance_info_of_an_unknown_uuid_is_instance_not_found(
        worker: Service, rpc: RpcClient, cfg: Config) -> None:
    """get_instance_info for a UUID libvirt does not know fails with InstanceNotFound."""
    with pytest.raises(RemoteError) as caught:
        rpc.call(cfg.host, "get_instance_info", {"instance": {"uuid": str(uuid.uuid4())}},
                 timeout=20)
    assert "InstanceNotFound" == caught.value.exc_class


def test_list_instances_reports_every_state(
        worker: Service, rpc: RpcClient, cfg: Config, vms: Callable[..., list[Vm]],
        qemu: libvirt.virConnect) -> None:
    """list_instances lists running, paused and defined-only domains with their states."""
    running, paused = vms(2)
    (stopped,) = vms(1, start=False)
    qemu.lookupByUUIDString(paused.uuid).suspend()

    listed = {i["uuid"]: i for i in rpc.call(cfg.host, "list_instances", {}, timeout=20)}
    assert {running.uuid, paused.uuid, stopped.uuid} <= set(listed)
    expected = {running.uuid: (running.name, "running", "active"),
                paused.uuid: (paused.name, "paused", "paused"),
                stopped.uuid: (stopped.name, "shutdown", "stopped")}
    assert expected == {uid: (listed[uid]["name"], listed[uid]["power_state"],
                              listed[uid]["vm_state"]) for uid in expected}
