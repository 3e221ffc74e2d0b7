"""State changes nobody asked for become instance.update; our own verbs do not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import libvirt
import pytest

from tests.helpers import check_event
from tests.taps import EventTap
from worker.amqp.client import RpcClient
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.integration


def _updates(tap: EventTap, uid: str) -> list[dict[str, Any]]:
    return [e["payload"]["nova_object.data"] for e in tap.of(uid, "instance.update")]


def _before(update: dict[str, Any]) -> Any:
    """nova's vm_state before the change (InstanceStateUpdatePayload.old_state)."""
    return update["state_update"]["nova_object.data"]["old_state"]


def test_operator_pause_is_reported_with_old_and_new_state(
        worker: Service, tap: EventTap, test_driver: libvirt.virConnect,
        domains: Callable[[int], list[str]]) -> None:
    """A pause behind the worker's back (virsh-style) yields instance.update running->paused."""
    (uid,) = domains(1)
    tap.wait_for(lambda _: any(d["power_state"] == "running" for d in _updates(tap, uid)))
    test_driver.lookupByUUIDString(uid).suspend()
    tap.wait_for(lambda _: any(d["power_state"] == "paused" for d in _updates(tap, uid)))
    change = [d for d in _updates(tap, uid) if d["power_state"] == "paused"][0]
    assert ("active", "paused", "paused") == (
        _before(change), change["state"], change["power_state"])
    assert change["state_update"]["nova_object.data"]["state"] == change["state"]
    for event in tap.of(uid, "instance.update"):
        check_event(event)


def test_guest_power_off_is_reported_after_the_debounce(
        worker: Service, tap: EventTap, test_driver: libvirt.virConnect,
        domains: Callable[[int], list[str]]) -> None:
    """A domain that stops by itself is reported as shutdown, cause stopped."""
    (uid,) = domains(1)
    tap.wait_for(lambda _: any(d["power_state"] == "running" for d in _updates(tap, uid)))
    test_driver.lookupByUUIDString(uid).destroy()
    tap.wait_for(lambda _: any(_before(d) == "active" for d in _updates(tap, uid)))
    change = [d for d in _updates(tap, uid) if _before(d) == "active"][0]
    assert ("shutdown", "stopped") == (change["power_state"], change["state"])


def test_our_own_verbs_are_not_reported_as_updates(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config,
        test_driver: libvirt.virConnect, domains: Callable[[int], list[str]]) -> None:
    """A hard reboot (a stop then a start in libvirt) gives reboot events, no instance.update.

    A second domain is the watch's witness: what it reports about that one comes after
    everything the watch would have said about the first.
    """
    uid, witness = domains(2)
    # The domains appearing (defined, then started) is news: wait until it is told.
    for each in (uid, witness):
        tap.wait_for(lambda _, u=each: any(d["power_state"] == "running"
                                           for d in _updates(tap, u)))
    before = len(_updates(tap, uid))
    for _ in range(3):
        rpc.cast(cfg.host, "reboot_instance", {"instance": {"uuid": uid},
                                               "reboot_type": "HARD"})
    rpc.cast(cfg.host, "pause_instance", {"instance": {"uuid": uid}})
    tap.wait_type(uid, "instance.pause.end")

    # When the witness stops behind the worker's back, its stop is looked at after the same
    # debounce as the reboots' stops, and later than all of them.
    test_driver.lookupByUUIDString(witness).destroy()
    tap.wait_for(lambda _: any(_before(d) == "active" for d in _updates(tap, witness)))
    # And when two full syncs each find the witness other than the watch was told (each
    # then reports it once more), the second one's report means the first compared every
    # domain and had its say.
    reported = len(_updates(tap, witness))
    for count in (reported + 1, reported + 2):
        worker.watch.observed(witness, "running")
        worker.watch.sync_now()
        tap.wait_for(lambda _, n=count: n == len(_updates(tap, witness)))

    assert before == len(_updates(tap, uid))
