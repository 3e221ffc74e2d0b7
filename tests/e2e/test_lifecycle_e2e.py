"""Reboot, power off and on, and terminate on real QEMU domains, checked through libvirt itself."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest

from tests.domains import QEMU_URI, Vm, domain_state
from tests.e2e.support import Verbs, check_all, states
from tests.taps import EventTap
from worker.config import Config

pytestmark = pytest.mark.e2e


def _dom_id(qemu: libvirt.virConnect, vm: Vm) -> int:
    return int(qemu.lookupByUUIDString(vm.uuid).ID())


def test_hard_reboot_restarts_the_qemu_process(
        verb: Verbs, vms: Callable[..., list[Vm]], qemu: libvirt.virConnect,
        tap: EventTap) -> None:
    """reboot_instance HARD destroys and boots the domain again: it runs with a new id."""
    (vm,) = vms(1)
    old_id = _dom_id(qemu, vm)

    run = verb(vm, "reboot_instance", "reboot", reboot_type="HARD")
    assert ("running", "active") == states(run.before)
    assert ("running", "active") == states(run.after)
    assert (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED) == domain_state(
        QEMU_URI, vm.uuid)
    assert old_id < _dom_id(qemu, vm)
    check_all(tap)


def test_soft_reboot_of_a_guest_without_os_falls_back_to_hard(
        verb: Verbs, vms: Callable[..., list[Vm]], qemu: libvirt.virConnect, tap: EventTap,
        cfg: Config) -> None:
    """reboot_instance SOFT waits for a guest that never answers, then reboots it hard."""
    (vm,) = vms(1)
    old_id = _dom_id(qemu, vm)

    run = verb(vm, "reboot_instance", "reboot", reboot_type="SOFT")
    assert ("running", "active") == states(run.after)
    assert run.elapsed >= cfg.soft_reboot_timeout
    assert (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED) == domain_state(
        QEMU_URI, vm.uuid)
    assert old_id < _dom_id(qemu, vm)
    check_all(tap)


def test_stop_powers_off_and_start_powers_on(
        verb: Verbs, vms: Callable[..., list[Vm]], qemu: libvirt.virConnect, tap: EventTap,
        cfg: Config) -> None:
    """stop_instance waits shutdown_timeout then powers off; start_instance boots it again."""
    (vm,) = vms(1)
    old_id = _dom_id(qemu, vm)

    run = verb(vm, "stop_instance", "power_off")
    assert ("running", "active") == states(run.before)
    assert ("shutdown", "stopped") == states(run.after)
    assert run.elapsed >= cfg.shutdown_timeout
    assert (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED) == domain_state(
        QEMU_URI, vm.uuid)
    assert 0 == qemu.lookupByUUIDString(vm.uuid).hasManagedSaveImage(0)

    again = verb(vm, "stop_instance", "power_off")
    assert ("shutdown", "stopped") == states(again.after)

    run = verb(vm, "start_instance", "power_on")
    assert ("shutdown", "stopped") == states(run.before)
    assert ("running", "active") == states(run.after)
    assert (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED) == domain_state(
        QEMU_URI, vm.uuid)
    assert old_id < _dom_id(qemu, vm)

    again = verb(vm, "start_instance", "power_on")
    assert ("running", "active") == states(again.after)
    check_all(tap)


def test_stop_without_clean_shutdown_powers_off_a_paused_instance(
        verb: Verbs, vms: Callable[..., list[Vm]], tap: EventTap) -> None:
    """stop_instance with clean_shutdown false pulls the plug on a paused domain at once."""
    (vm,) = vms(1)
    verb(vm, "pause_instance", "pause")

    run = verb(vm, "stop_instance", "power_off", clean_shutdown=False)
    assert ("paused", "paused") == states(run.before)
    assert ("shutdown", "stopped") == states(run.after)
    assert (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED) == domain_state(
        QEMU_URI, vm.uuid)
    check_all(tap)


def test_terminate_removes_the_domain_and_only_its_directory(
        verb: Verbs, vms: Callable[..., list[Vm]], instances: Path, tap: EventTap) -> None:
    """terminate_instance undefines the domain and removes only instances_path/<uuid>/."""
    gone, keep = vms(2)
    for vm in (gone, keep):
        (instances / vm.uuid).mkdir()
        (instances / vm.uuid / "disk").write_bytes(b"\0" * 4096)
    (instances / "unrelated.txt").write_text("stays")

    run = verb(gone, "terminate_instance", "delete")
    assert (gone.uuid, "running", "active") == (run.before["uuid"], *states(run.before))
    assert (gone.uuid, None, "deleted") == (run.after["uuid"], *states(run.after))
    assert None is domain_state(QEMU_URI, gone.uuid)
    assert not (instances / gone.uuid).exists()
    assert [keep.uuid, "unrelated.txt"] == sorted(p.name for p in instances.iterdir())
    assert (instances / keep.uuid / "disk").is_file()
    assert (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED) == domain_state(
        QEMU_URI, keep.uuid)

    # Terminating again finds no domain, which is a success.
    again = verb(gone, "terminate_instance", "delete")
    assert (None, "deleted") == states(again.after)
    check_all(tap)


def test_terminate_of_a_suspended_instance_removes_its_saved_image(
        verb: Verbs, vms: Callable[..., list[Vm]], instances: Path, tap: EventTap) -> None:
    """terminate_instance of a managed-saved domain undefines it and deletes the save image."""
    (vm,) = vms(1)
    (instances / vm.uuid).mkdir()
    verb(vm, "suspend_instance", "suspend")
    assert os.path.isfile(vm.save_image)

    run = verb(vm, "terminate_instance", "delete")
    assert ("shutdown", "suspended") == states(run.before)
    assert (None, "deleted") == states(run.after)
    assert None is domain_state(QEMU_URI, vm.uuid)
    assert not os.path.exists(vm.save_image)
    assert [] == list(instances.iterdir())
    check_all(tap)
