"""Casts keep their effect, once, across restarts of the system libvirtd (QEMU guests survive)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.domains import Vm
from tests.faults.scenario import Scenario
from tests.faults.support import SYSTEM_BROKER_URL, Tapped, restart_libvirtd
from tests.taps import STOPPED, stopped

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

CASTS = 302
DOMAINS = 4
RATE = 40.0
RESTARTS = 2


def _enabled(records: list[Tapped], host: str) -> int:
    """How many service.update events said the host is enabled (nova's payload has no "up")."""
    return sum(1 for r in records if r.event.get("event_type") == "service.update"
               and r.event["payload"]["nova_object.data"].get("host") == host
               and not r.event["payload"]["nova_object.data"].get("disabled"))


@pytest.mark.usefixtures("libvirtd_to_ourselves")
def test_casts_survive_libvirtd_restarts(vms: Callable[[int], list[Vm]], tmp_path: Path) -> None:
    """libvirtd stopped and started twice under load: no cast lost or repeated, host re-enabled.

    The worker must say so on the wire: a ``service.update`` with ``disabled: true`` and a
    reason for each loss, and ``disabled: false`` once libvirt is back.
    """
    domains = vms(DOMAINS)
    with Scenario("libvirtd-restart", url=SYSTEM_BROKER_URL, durable=False, quorum=False,
                  tmp=tmp_path, vms=domains, count=CASTS, rate=RATE) as scn:
        load = scn.start_load()
        took = []
        for number in range(1, RESTARTS + 1):
            load.wait_sent(number * CASTS // (RESTARTS + 1), 90)
            took.append(restart_libvirtd())
            # The next restart must find the worker reconnected, or there is nothing to lose.
            assert scn.tap is not None
            def back(records: list[Tapped], n: int = number, host: str = scn.cfg.host) -> bool:
                return _enabled(records, host) > n

            scn.tap.wait_for(back, 30)
        scn.figures.faults = (f"{len(took)} libvirtd restarts "
                              f"({', '.join(f'{t:.1f}s' for t in took)})")

        outcome = scn.finish()
        assert scn.tap is not None
        # The last word of the stopped worker: service.update with up=false.
        scn.tap.wait_for(lambda records: any(
            r.event.get("event_type") == "service.update"
            and stopped(r.event) for r in records), 15)
        updates: list[dict[str, Any]] = [
            r.event["payload"]["nova_object.data"] for r in scn.tap.snapshot()
            if r.event.get("event_type") == "service.update"
            and r.event["payload"]["nova_object.data"].get("host") == scn.cfg.host]
        flags = [(u["disabled"], u["disabled_reason"]) for u in updates]
        scn.figures.notes.append(f"service.update (disabled, reason): {flags}")
        scn.check(outcome)

        stops = [i for i, u in enumerate(updates) if u["disabled_reason"] == STOPPED]
        disabled = [i for i, u in enumerate(updates) if u["disabled"] and i not in stops]
        assert len(disabled) >= RESTARTS, f"a libvirtd loss went unreported: {flags}"
        assert all(updates[i]["disabled_reason"] for i in disabled), flags
        for i in disabled:
            assert any(not u["disabled"] for u in updates[i + 1:]), (
                f"no service.update with disabled=false after the loss: {flags}")
        assert [len(updates) - 1] == stops, flags  # stopped once, as the last word


OUTAGE_CASTS = 160
OUTAGE_RATE = 300.0  # faster than the worker: it holds a backlog (prefetch) when libvirtd goes
RETRY_WINDOW = 1.0  # --libvirt-retry-seconds: how long a verb waits for libvirt
OUTAGE = 4.0  # seconds libvirtd stays down: longer than the retry window
HELD = 40  # casts still unanswered when libvirtd goes (fewer than the prefetch of 64)


def _ends(records: list[Tapped]) -> int:
    return sum(1 for r in records if str(r.event.get("event_type")).endswith(".end"))


@pytest.mark.usefixtures("libvirtd_to_ourselves")
def test_order_kept_when_libvirtd_stays_down_past_the_retry_window(
        vms: Callable[[int], list[Vm]], tmp_path: Path) -> None:
    """A libvirtd outage longer than libvirt_retry_seconds: casts still take effect in order.

    Verbs that outlast the retry window are requeued. The casts for the same instance that
    the worker already holds must not overtake them: the last cast decides the state. The
    outage comes when the last casts of every instance are already in the worker's hands.
    (The default window is 60 s; a 1 s window and a 4 s outage make the same case quick.)
    """
    domains = vms(DOMAINS)
    with Scenario("libvirtd-outage", url=SYSTEM_BROKER_URL, durable=False, quorum=False,
                  tmp=tmp_path, vms=domains, count=OUTAGE_CASTS, rate=OUTAGE_RATE,
                  libvirt_retry_seconds=RETRY_WINDOW) as scn:
        load = scn.start_load()
        load.join(60)
        # Strike when the worker holds (prefetched) the last casts of every instance.
        assert scn.tap is not None
        scn.tap.wait_for(lambda records: _ends(records) >= OUTAGE_CASTS - HELD, 60)
        took = restart_libvirtd(down_for=OUTAGE)
        scn.figures.faults = (f"libvirtd down {OUTAGE:.0f}s ({took:.1f}s in all), "
                              f"retry window {RETRY_WINDOW:.0f}s")
        outcome = scn.finish()
        requeued = sum(1 for r in scn.worker.records()
                       if r.get("event") == "libvirt_unavailable_message_requeued")
        scn.figures.notes.append(f"verbs requeued after the retry window: {requeued}")
        scn.check(outcome)
