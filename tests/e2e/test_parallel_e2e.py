"""Verbs on different instances run in parallel on real QEMU domains."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

import libvirt
import pytest

from tests.domains import QEMU_URI, Vm, domain_state
from tests.e2e.support import Verbs, check_all
from tests.taps import EventTap
from worker.config import Config

pytestmark = pytest.mark.e2e


def _at(event: dict[str, object]) -> datetime.datetime:
    return datetime.datetime.fromisoformat(str(event["timestamp"]))


def test_two_suspends_run_in_parallel(
        verb: Verbs, vms: Callable[..., list[Vm]], qemu: libvirt.virConnect, tap: EventTap,
        cfg: Config, capsys: pytest.CaptureFixture[str]) -> None:
    """Two suspend casts for two instances both end saved; the elapsed time is printed."""
    assert cfg.max_concurrent_ops >= 2
    pair = vms(2)

    begun = time.monotonic()
    request_ids = [verb.cast(vm, "suspend_instance") for vm in pair]
    runs = [verb.wait(vm, rid, "suspend") for vm, rid in zip(pair, request_ids, strict=True)]
    elapsed = time.monotonic() - begun

    for vm, (_start, end) in zip(pair, runs, strict=True):
        data = end["payload"]["nova_object.data"]
        assert ("shutdown", "suspended") == (data["power_state"], data["state"])
        assert (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SAVED) == domain_state(
            QEMU_URI, vm.uuid)
        assert 1 == qemu.lookupByUUIDString(vm.uuid).hasManagedSaveImage(0)
    each = [(_at(end) - _at(start)).total_seconds() for start, end in runs]
    # In parallel: each began before the other ended (the worker's own event times).
    assert max(_at(start) for start, _ in runs) < min(_at(end) for _, end in runs), runs
    with capsys.disabled():
        print(f"\n[e2e] 2 suspends in parallel (max_concurrent_ops={cfg.max_concurrent_ops}): "
              f"{elapsed:.2f}s wall, each start->end {each[0]:.2f}s and {each[1]:.2f}s "
              f"(serial would be about {sum(each):.2f}s)")
    check_all(tap)
