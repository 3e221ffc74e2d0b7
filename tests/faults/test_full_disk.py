"""Casts keep their effect, once, while the worker's state directory is full (a small tmpfs)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.brokers import PrivateBroker, wait_until
from tests.domains import Vm
from tests.faults.scenario import Scenario
from tests.faults.support import count_events
from tests.helpers import fill, small_disk

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

CASTS = 202
DOMAINS = 4
RATE = 40.0
FULL_FOR = 5.0  # seconds the disk stays full once the worker has noticed


def test_casts_survive_a_full_state_dir(private_broker: PrivateBroker,
                                        vms: Callable[[int], list[Vm]], tmp_path: Path) -> None:
    """The journal's disk fills a third of the way in and is freed later: nothing lost or twice.

    While full the worker takes no casts (they wait in the queue), holds the events of verbs it
    could not journal, and reports itself disabled; freed, it journals, publishes and resumes.
    """
    # Room for the journal of every cast (nova payloads, about 8 KiB a record) once freed.
    with small_disk(tmp_path / "state-disk", size="32m") as disk:
        domains = vms(DOMAINS)
        with Scenario("full-disk", url=private_broker.url, durable=True, quorum=True,
                      tmp=tmp_path, vms=domains, count=CASTS, rate=RATE,
                      broker=private_broker, state_dir=str(disk)) as scn:
            load = scn.start_load()
            load.wait_sent(CASTS // 3, 60)
            filler = fill(disk)
            wait_until(lambda: count_events(scn.worker.records(),
                                            "journal_unusable_consuming_paused"), 30,
                       "the worker to notice the full disk")
            time.sleep(FULL_FOR)
            sent_while_full = load.sent
            filler.unlink()
            scn.figures.faults = (f"state dir full from cast {CASTS // 3} for "
                                  f"{FULL_FOR:.0f}s after noticed ({sent_while_full} sent by then)")

            outcome = scn.finish()
            records = scn.worker.records()
            scn.figures.notes.append(
                f"journal writes refused {count_events(records, 'journal_retry')} times, "
                f"resumed {count_events(records, 'journal_usable_again')} times")
            assert count_events(records, "journal_usable_again") >= 1
            scn.check(outcome)
