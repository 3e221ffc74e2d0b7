"""nova's own ComputeAPI asks for diagnostics and uptime; its serializer rebuilds the answers.

On libvirt's test driver (cheap): the point is nova's client and objects, not QEMU.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
import pytest

from tests.domains import TEST_URI, Vm, define_vms, remove_domains
from tests.interop.nova import EXCHANGE, HOST, nova_context
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.interop


@pytest.fixture
def cfg(make_config: Callable[..., Config]) -> Config:
    """A worker on nova's exchange and host, on the test driver."""
    return make_config(control_exchange=EXCHANGE, host=HOST)


@pytest.fixture
def vm(test_driver: libvirt.virConnect) -> Iterator[Vm]:
    """A running test-driver domain (64 MiB, one vCPU)."""
    made: list[Vm] = []
    (new,) = define_vms(test_driver, "test", 1, made, prefix="cw-nova-diag-")
    yield new
    remove_domains(TEST_URI, [v.uuid for v in made])


def _instance(vm: Vm) -> Any:
    from nova import objects

    launched = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=90)
    return objects.Instance(uuid=vm.uuid, host=HOST, node=HOST, vm_state="active",
                            task_state=None, launched_at=launched, config_drive="")


def test_nova_reads_both_diagnostics(nova: Any, worker: Service, vm: Vm,
                                     test_driver: libvirt.virConnect) -> None:
    """get_diagnostics is nova's dict; get_instance_diagnostics comes back a Diagnostics."""
    from nova.objects import diagnostics

    api, ctxt, instance = nova.ComputeAPI(), nova_context(), _instance(vm)

    flat = api.get_diagnostics(ctxt, instance)
    obj = api.get_instance_diagnostics(ctxt, instance)

    dom = test_driver.lookupByUUIDString(vm.uuid)
    assert {"cpu0_time", "memory"} <= set(flat) and dom.maxMemory() == flat["memory"]
    assert isinstance(obj, diagnostics.Diagnostics)
    assert ("running", "libvirt", 1, 64) == (obj.state, obj.driver, obj.num_cpus,
                                             obj.memory_details.maximum)
    assert 90 <= obj.uptime <= 150


def test_nova_s_client_raises_invalid_state_for_a_paused_instance(
        nova: Any, worker: Service, vm: Vm, test_driver: libvirt.virConnect) -> None:
    """Not running: nova's own InstanceInvalidState, raised by nova's client."""
    from nova import exception

    test_driver.lookupByUUIDString(vm.uuid).suspend()

    with pytest.raises(exception.InstanceInvalidState):
        nova.ComputeAPI().get_diagnostics(nova_context(), _instance(vm))


def test_nova_reads_the_host_uptime(nova: Any, worker: Service) -> None:
    """get_host_uptime(ctxt, host): the uptime line."""
    found = nova.ComputeAPI().get_host_uptime(nova_context(), HOST)

    assert "load average" in found
