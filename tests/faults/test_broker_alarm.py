"""Casts keep their effect, once, through a broker memory alarm longer than the confirm timeout."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.brokers import PrivateBroker
from tests.domains import Vm
from tests.faults.scenario import Scenario
from tests.faults.support import count_events

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

CASTS = 202  # 51 for two domains (last: pause) and 50 for two (last: unpause)
DOMAINS = 4
RATE = 40.0
CONFIRM_TIMEOUT = 3
ALARM = 12.0  # seconds the broker is out of memory: four confirm timeouts
SET_ALARM = "rabbit_alarm:set_alarm({{resource_limit, memory, node()}, []})."
CLEAR_ALARM = "rabbit_alarm:clear_alarm({resource_limit, memory, node()})."
BACKLOG = 40  # casts queued for the worker when the alarm comes


def test_casts_survive_a_broker_memory_alarm(private_broker: PrivateBroker,
                                             vms: Callable[[int], list[Vm]],
                                             tmp_path: Path) -> None:
    """A memory alarm blocks publishing for four confirm timeouts: nothing lost, nothing re-run.

    A third of the way through the casts the node raises its memory alarm (every publishing
    connection is blocked: the worker's publisher and the caster), and clears it 12 s later.
    The worker must hold its events, pause consuming and say so, and pick up after. So that it
    has events to publish into the block (the caster is blocked too), the worker is stopped
    (SIGSTOP, well under its heartbeat) while a backlog of casts queues up and the alarm is
    raised, then continued.
    """
    domains = vms(DOMAINS)
    with Scenario("broker-alarm", url=private_broker.url, durable=False, quorum=False,
                  tmp=tmp_path, vms=domains, count=CASTS, rate=RATE, broker=private_broker,
                  confirm_timeout=CONFIRM_TIMEOUT) as scn:
        load = scn.start_load()
        load.wait_sent(CASTS // 3, 60)
        pid = scn.worker.pid
        assert pid is not None
        try:
            os.kill(pid, signal.SIGSTOP)
            try:
                load.wait_sent(CASTS // 3 + BACKLOG, 30)
                private_broker.ctl("eval", SET_ALARM)
            finally:
                os.kill(pid, signal.SIGCONT)
            time.sleep(ALARM)
        finally:
            private_broker.ctl("eval", CLEAR_ALARM)
        scn.figures.faults = (f"memory alarm {ALARM:.0f}s after cast {CASTS // 3} "
                              f"(confirm_timeout {CONFIRM_TIMEOUT}s)")

        outcome = scn.finish()
        records = scn.worker.records()
        said = {name: count_events(records, name) for name in (
            "broker_blocked_consuming_paused", "broker_unblocked", "consuming_paused",
            "publisher_connection_lost")}
        scn.figures.notes.append(f"worker log: {said}; cast publish errors "
                                 f"{dict(scn.caster.errors) if scn.caster else {}}")
        scn.check(outcome)
        assert said["broker_blocked_consuming_paused"] >= 1, said
        assert said["broker_unblocked"] == said["broker_blocked_consuming_paused"], said
        assert 0 == said["publisher_connection_lost"], said
