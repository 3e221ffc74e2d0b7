"""Pause, unpause, suspend and resume on real QEMU domains, checked through libvirt itself."""

from __future__ import annotations

import os
from collections.abc import Callable

import libvirt
import pytest

from tests.domains import QEMU_URI, Vm, domain_state
from tests.e2e.support import Verbs, check_all, states
from tests.taps import EventTap
from worker.amqp.client import RpcClient
from worker.config import Config

pytestmark = pytest.mark.e2e


def test_pause_then_unpause_freezes_and_thaws_the_same_qemu_process(
        verb: Verbs, vms: Callable[..., list[Vm]], qemu: libvirt.virConnect,
        tap: EventTap) -> None:
    """pause_instance freezes a running domain (twice is fine) and unpause_instance thaws it."""
    (vm,) = vms(1)
    dom_id = qemu.lookupByUUIDString(vm.uuid).ID()

    run = verb(vm, "pause_instance", "pause")
    assert ("running", "active") == states(run.before)
    assert ("paused", "paused") == states(run.after)
    assert (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER) == domain_state(
        QEMU_URI, vm.uuid)

    again = verb(vm, "pause_instance", "pause")
    assert ("paused", "paused") == states(again.before)
    assert ("paused", "paused") == states(again.after)

    run = verb(vm, "unpause_instance", "unpause")
    assert ("paused", "paused") == states(run.before)
    assert ("running", "active") == states(run.after)
    assert (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_UNPAUSED) == domain_state(
        QEMU_URI, vm.uuid)
    assert dom_id == qemu.lookupByUUIDString(vm.uuid).ID()
    check_all(tap)


def test_suspend_saves_to_disk_and_resume_restores(
        verb: Verbs, vms: Callable[..., list[Vm]], qemu: libvirt.virConnect, tap: EventTap,
        rpc: RpcClient, cfg: Config) -> None:
    """suspend_instance leaves a managed-save image and SHUTOFF; resume_instance restores it."""
    (vm,) = vms(1)
    dom = qemu.lookupByUUIDString(vm.uuid)

    run = verb(vm, "suspend_instance", "suspend")
    assert ("running", "active") == states(run.before)
    assert ("shutdown", "suspended") == states(run.after)
    assert (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SAVED) == domain_state(
        QEMU_URI, vm.uuid)
    assert 1 == dom.hasManagedSaveImage(0)
    assert os.path.isfile(vm.save_image)
    info = rpc.call(cfg.host, "get_instance_info", vm.args, timeout=20)
    assert ("shutdown", "suspended") == states(info)

    # Starting a suspended instance would throw its memory away: refused, nothing changes.
    refused = verb(vm, "start_instance", "power_on", phase="error")
    assert "InstanceInvalidState" == refused.after["fault"]["nova_object.data"]["exception"]
    assert 1 == dom.hasManagedSaveImage(0)

    again = verb(vm, "suspend_instance", "suspend")
    assert ("shutdown", "suspended") == states(again.after)
    assert 1 == dom.hasManagedSaveImage(0)

    run = verb(vm, "resume_instance", "resume")
    assert ("shutdown", "suspended") == states(run.before)
    assert ("running", "active") == states(run.after)
    assert (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_RESTORED) == domain_state(
        QEMU_URI, vm.uuid)
    assert 0 == dom.hasManagedSaveImage(0)
    assert not os.path.exists(vm.save_image)

    again = verb(vm, "resume_instance", "resume")
    assert ("running", "active") == states(again.after)
    check_all(tap)


def test_suspend_of_a_paused_instance_resumes_running(
        verb: Verbs, vms: Callable[..., list[Vm]], tap: EventTap) -> None:
    """A paused instance that is suspended comes back running on resume."""
    (vm,) = vms(1)
    verb(vm, "pause_instance", "pause")

    run = verb(vm, "suspend_instance", "suspend")
    assert ("paused", "paused") == states(run.before)
    assert ("shutdown", "suspended") == states(run.after)
    assert (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SAVED) == domain_state(
        QEMU_URI, vm.uuid)

    run = verb(vm, "resume_instance", "resume")
    assert ("running", "active") == states(run.after)
    assert (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_RESTORED) == domain_state(
        QEMU_URI, vm.uuid)
    check_all(tap)


def test_power_verbs_on_a_stopped_instance_fail_and_change_nothing(
        verb: Verbs, vms: Callable[..., list[Vm]], tap: EventTap) -> None:
    """pause, unpause, suspend and resume of a never-started domain emit error events only."""
    (vm,) = vms(1, start=False)
    for method, action in (("pause_instance", "pause"), ("unpause_instance", "unpause"),
                           ("suspend_instance", "suspend"), ("resume_instance", "resume")):
        run = verb(vm, method, action, phase="error")
        assert ("shutdown", "stopped") == states(run.before), method
        fault = run.after["fault"]["nova_object.data"]
        assert "InstanceInvalidState" == fault["exception"], method
        assert "shutdown" in fault["exception_message"], method
        assert (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN) == domain_state(
            QEMU_URI, vm.uuid), method
    check_all(tap)
