"""Casts keep their effect, once, across restarts of the broker (a private RabbitMQ node)."""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import PrivateBroker
from tests.domains import Vm
from tests.faults.scenario import Scenario
from tests.faults.support import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

CASTS = 302  # 76 for two domains (last: unpause) and 75 for two (last: pause)
DOMAINS = 4
RATE = 40.0  # casts per second while the broker is up


def test_casts_survive_broker_restarts(private_broker: PrivateBroker,
                                       vms: Callable[[int], list[Vm]], tmp_path: Path) -> None:
    """A durable, quorum-queue worker loses no cast and repeats no effect when its broker restarts.

    Two faults while casts flow: ``rabbitmqctl stop_app``/``start_app`` a third of the way, a
    full node stop and boot two thirds of the way.
    """
    domains = vms(DOMAINS)
    with Scenario("broker-restart", url=private_broker.url, durable=True, quorum=True,
                  tmp=tmp_path, vms=domains, count=CASTS, rate=RATE,
                  broker=private_broker) as scn:
        load = scn.start_load()
        faults = []

        load.wait_sent(CASTS // 3, 60)
        private_broker.stop_app()
        time.sleep(1.0)
        private_broker.start_app()
        faults.append("stop_app/start_app")

        load.wait_sent(2 * CASTS // 3, 90)
        private_broker.stop_node()
        time.sleep(1.0)
        private_broker.start()
        faults.append("node stop/boot")
        scn.figures.faults = f"{len(faults)} broker restarts ({', '.join(faults)})"

        outcome = scn.finish()
        assert scn.tap is not None
        scn.figures.notes.append(f"tap reconnects {scn.tap.reconnects}, cast publish errors "
                                 f"{dict(scn.caster.errors) if scn.caster else {}}")
        scn.check(outcome)


BLIPS = 6  # short broker outages in one worker's life, at most
BLIP_DOWN = 2.0  # seconds each outage lasts
RECONNECT_BOUND = 8.0  # seconds after the broker is back by which the worker must be too


def _connected_after(records: list[dict[str, Any]], event: str, after: float) -> float | None:
    for record in records:
        if record.get("event") == event:
            at = datetime.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
            if at.timestamp() > after:
                return at.timestamp()
    return None


def test_reconnect_wait_does_not_grow_with_each_broker_outage(
        private_broker: PrivateBroker, vms: Callable[[int], list[Vm]], tmp_path: Path) -> None:
    """Each short broker outage is followed by a prompt reconnect, however many came before.

    The reconnect backoff belongs to one outage: a worker that has lived through a few broker
    restarts must not wait longer and longer for the next one. Stops at the first outage the
    worker does not recover from within the bound.
    """
    domains = vms(1)
    with Scenario("broker-blips", url=private_broker.url, durable=True, quorum=True,
                  tmp=tmp_path, vms=domains, count=2, rate=10.0, broker=private_broker) as scn:
        lags: list[float | None] = []
        events = ("consumer_connected", "publisher_connected")
        for _ in range(BLIPS):
            down = time.time()
            private_broker.stop_app()
            time.sleep(BLIP_DOWN)
            private_broker.start_app()
            back = time.time()  # serving again (the worker may have been quicker to see it)

            def reconnected(down: float = down) -> list[float] | None:
                at = [_connected_after(scn.worker.records(), e, down) for e in events]
                return None if None in at else at  # type: ignore[return-value]

            with contextlib.suppress(AssertionError):
                wait_until(reconnected, RECONNECT_BOUND + 2, "the worker to reconnect", 0.2)
            at = reconnected()
            lags.append(None if at is None else max(0.0, max(at) - back))
            if lags[-1] is None or lags[-1] >= RECONNECT_BOUND:
                break
        scn.figures.faults = f"{len(lags)} stop_app/start_app of {BLIP_DOWN:.0f}s"
        scn.figures.notes.append(
            "seconds from broker back to worker reconnected, per outage: "
            + ", ".join("-" if lag is None else f"{lag:.1f}" for lag in lags)
            + " (backoff attempts logged: " + ", ".join(
                str(r.get("attempt")) for r in scn.worker.records()
                if r.get("event") == "consumer_reconnect_wait") + ")")
        assert all(lag is not None and lag < RECONNECT_BOUND for lag in lags), (
            f"reconnect waits after successive short outages: {lags} s (bound "
            f"{RECONNECT_BOUND} s; None: not back within {RECONNECT_BOUND + 2} s); "
            f"{scn.logs_hint()}")
        scn.start_load()
        scn.check(scn.finish())
