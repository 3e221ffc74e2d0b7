"""nova's service heartbeat: service.update every report_interval, silence once killed."""

from __future__ import annotations

import datetime
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import check_event
from tests.taps import Event, EventTap
from tests.worker_run import RunningWorker, argv_for
from worker.config import Config

pytestmark = pytest.mark.integration
INTERVAL = 0.5


def _beats(events: list[Event]) -> list[dict[str, object]]:
    return [e["payload"]["nova_object.data"] for e in events if e["event_type"] == "service.update"]


def test_a_healthy_worker_beats_and_a_killed_one_falls_silent(
        cfg: Config, tap: EventTap, tmp_path: Path) -> None:
    """report_count grows by one and last_seen_up moves on every report_interval; after SIGKILL
    nothing more comes, which is how a consumer tells the dead host from a live one."""
    worker = RunningWorker(argv_for(cfg, report_interval=INTERVAL), tmp_path / "worker.log")
    try:
        tap.wait_for(lambda evs: len(_beats(evs)) >= 6, timeout=30)
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(10)
        killed = len(_beats(tap.snapshot()))
        time.sleep(INTERVAL * 6)
    finally:
        worker.close()
    beats = _beats(tap.snapshot())

    assert killed == len(beats), "a SIGKILLed worker kept reporting"
    counts = [b["report_count"] for b in beats]
    assert list(range(counts[0], counts[0] + len(counts))) == counts
    # nova's DateTimeField goes to whole seconds: the beats move it on, a second at a time.
    seen = [datetime.datetime.fromisoformat(str(b["last_seen_up"])) for b in beats]
    assert sorted(seen) == seen
    span = (seen[-1] - seen[1]).total_seconds()
    assert (len(seen) - 2) * INTERVAL - 1 <= span <= (len(seen) - 2) * INTERVAL + 1, seen
    assert {False} == {b["disabled"] for b in beats}
    for event in tap.snapshot():
        check_event(event)
