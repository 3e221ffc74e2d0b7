"""systemd's notify protocol: what Notifier and Supervision send, on a socket the test owns."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.notify import NotifySocket
from worker.ops.systemd import Notifier, Supervision, watchdog_interval


@pytest.fixture
def listener() -> Iterator[NotifySocket]:
    """An abstract-namespace NOTIFY_SOCKET (@name), as systemd may hand one out."""
    sock = NotifySocket(abstract=f"cw-test-{uuid.uuid4().hex}")
    yield sock
    sock.close()


def test_ready_and_status_reach_an_abstract_socket(listener: NotifySocket) -> None:
    """NOTIFY_SOCKET=@name (Linux's abstract namespace): READY=1 and STATUS= in one datagram."""
    notifier = Notifier({"NOTIFY_SOCKET": listener.address})

    assert notifier.ready("consuming compute.h1")

    note = listener.wait_for("READY", "1", timeout=5)
    assert {"READY": "1", "STATUS": "consuming compute.h1"} == note.fields


def test_a_socket_file_works_too() -> None:
    """A NOTIFY_SOCKET that is a path (systemd's usual /run/systemd/notify) gets the message."""
    with tempfile.TemporaryDirectory(prefix="cw-") as tmp:
        listener = NotifySocket(path=Path(tmp) / "notify")
        try:
            Notifier({"NOTIFY_SOCKET": listener.address}).stopping("stopping")
            assert {"STOPPING": "1", "STATUS": "stopping"} == listener.wait_for("STOPPING",
                                                                                timeout=5).fields
        finally:
            listener.close()


def test_outside_systemd_nothing_is_sent() -> None:
    """Without NOTIFY_SOCKET every message is a quiet no-op and there is no watchdog."""
    notifier = Notifier({})

    assert (False, False, None) == (notifier.enabled, notifier.ready("x"),
                                    notifier.watchdog_interval)


def test_a_socket_nobody_listens_on_fails_quietly() -> None:
    """A stale NOTIFY_SOCKET costs a warning, never an exception."""
    notifier = Notifier({"NOTIFY_SOCKET": f"@cw-test-nobody-{uuid.uuid4().hex}"})

    assert False is notifier.status("hello")


@pytest.mark.parametrize("env, expected", [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),  # asked of another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_the_ping_interval_is_half_the_watchdog_period(env: dict[str, str],
                                                       expected: float | None) -> None:
    """sd_watchdog_enabled(3): WATCHDOG_USEC for this pid (WATCHDOG_PID), two pings a period."""
    assert expected == watchdog_interval(env, os.getpid())


def test_supervision_says_ready_once_pings_while_moving_and_stops_pinging_when_stuck(
        listener: NotifySocket) -> None:
    """STATUS while connecting, READY=1 once consuming, WATCHDOG=1 at the rate asked only while
    the loops move, STOPPING=1 last."""
    # Given a watchdog of 0.2 s (a ping every 0.1 s) and a worker that connects after 0.3 s
    notifier = Notifier({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "200000"})
    began = time.monotonic()
    frozen: list[float] = []

    def state() -> tuple[bool, str]:
        if time.monotonic() - began < 0.3:
            return False, "connecting to the broker"
        return True, "consuming compute.h1"

    def moved_at() -> float:
        return frozen[0] if frozen else time.monotonic()

    supervision = Supervision(notifier, state, moved_at, stale_after=0.3)
    supervision.start()
    try:
        listener.wait_for("READY", timeout=5)
        time.sleep(1.0)
        # When a loop stops moving
        frozen.append(time.monotonic())
        time.sleep(1.0)
    finally:
        supervision.stopping()
    listener.wait_for("STOPPING", timeout=5)

    pings = listener.times("WATCHDOG")
    moving = [t for t in pings if t < frozen[0]]
    after = [t for t in pings if t > frozen[0] + 0.3 + 0.15]
    gaps = [b - a for a, b in zip(moving, moving[1:], strict=False)]
    # Then the pings came every 0.1 s while moving, and none once the loop was stuck
    assert 8 <= len(moving) and max(gaps) < 0.3, gaps
    assert [] == after
    assert 1 <= supervision.withheld
    keys = [k for k in listener.keys() if k != "WATCHDOG"]
    assert ["STATUS", "READY", "STATUS", "STOPPING", "STATUS"] == keys
    assert ["connecting to the broker", "consuming compute.h1",
            "stopping: finishing verbs in flight"] == listener.statuses()
