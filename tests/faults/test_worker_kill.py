"""SIGKILL the worker at random moments under load; each new life takes over the same state dir."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.brokers import PrivateBroker
from tests.domains import Vm
from tests.faults.scenario import Scenario
from tests.faults.support import completions, count_events

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

CASTS = 302
DOMAINS = 4
RATE = 45.0
KILLS = 3
MIN_LIFE = 0.4  # seconds a life consumes before it may be killed


def test_completed_casts_are_not_rerun_after_sigkill(
        private_broker: PrivateBroker, vms: Callable[[int], list[Vm]], tmp_path: Path) -> None:
    """Kill -9 the worker three times while casts flow: nothing lost, nothing completed re-run.

    Every restart uses the same state dir, so the journal must absorb redeliveries of what
    an earlier life completed (``duplicate_skipped_already_completed``).
    """
    seed = int(os.environ.get("FAULTS_SEED", str(random.SystemRandom().randrange(1 << 30))))
    rng = random.Random(seed)
    domains = vms(DOMAINS)
    with Scenario("worker-sigkill", url=private_broker.url, durable=True, quorum=True,
                  tmp=tmp_path, vms=domains, count=CASTS, rate=RATE,
                  broker=private_broker) as scn:
        load = scn.start_load()
        at = []
        for number in range(1, KILLS + 1):
            # A random moment around each quarter of the casts, and at least a moment into
            # the life, so every life takes some work.
            share = number / (KILLS + 1) + rng.uniform(-0.1, 0.1)
            load.wait_sent(int(CASTS * share), 90)
            time.sleep(max(0.0, MIN_LIFE - scn.worker.uptime) + rng.uniform(0.0, 0.3))
            at.append(load.sent)
            scn.worker.kill()
            scn.worker.start()
        scn.figures.faults = (f"{scn.worker.kills} SIGKILLs, after casts {at} "
                              f"(FAULTS_SEED={seed})")
        assert at[0] < CASTS, "no kill came while casts still flowed: lower RATE"

        outcome = scn.finish()
        lives = [completions(scn.worker.records(i)) for i in range(len(scn.worker.logs))]
        for number, done in enumerate(lives, 1):
            absorbed = count_events(scn.worker.records(number - 1),
                                    "duplicate_skipped_already_completed")
            scn.figures.notes.append(f"life {number}: {len(done)} verbs completed, "
                                     f"{absorbed} redeliveries absorbed")

        rerun = {}
        for number, done in enumerate(lives[1:], 2):
            before = set().union(*lives[: number - 1])
            again = sorted(before & set(done))
            if again:
                rerun[f"life {number}"] = again
        assert {} == rerun, (f"ids completed in an earlier life ran again after a SIGKILL; "
                             f"{scn.logs_hint()}")
        scn.check(outcome)
