"""A real worker under systemd's notify protocol: READY, WATCHDOG at the rate asked, STOPPING.

The worker is ``compute-worker run`` on libvirt's test driver and the real RabbitMQ; the
NOTIFY_SOCKET is the test's own, so the test hears what systemd would.
"""

from __future__ import annotations

import signal
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.brokers import wait_until
from tests.notify import NotifySocket
from tests.relay import Relay
from tests.worker_run import RunningWorker, argv_for
from worker.config import Config

pytestmark = pytest.mark.integration
#: A ping every 0.5 s (half the period).
WATCHDOG_USEC = 1_000_000
#: AMQP method confirm.select (class 85, method 10): the publisher's link sends it.
CONFIRM_SELECT = b"\x00\x55\x00\x0a"


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    """The test's own NOTIFY_SOCKET, in the abstract namespace as systemd may hand it out."""
    sock = NotifySocket(abstract=f"cw-notify-{uuid.uuid4().hex}")
    yield sock
    sock.close()


def _env(notify: NotifySocket) -> dict[str, str]:
    return {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}


def test_ready_then_watchdog_pings_at_the_rate_asked_then_stopping(
        cfg: Config, tmp_path: Path, notify: NotifySocket) -> None:
    """READY=1 once consuming, WATCHDOG=1 every half WATCHDOG_USEC, STOPPING=1 on SIGTERM."""
    worker = RunningWorker(argv_for(cfg), tmp_path / "worker.log", _env(notify))
    try:
        ready = notify.wait_for("READY", "1", timeout=30)
        time.sleep(3.0)
        code, _ = worker.signal_and_time(signal.SIGTERM)
    finally:
        worker.close()
    assert 0 == code, worker.text()[-2000:]
    stopping = notify.wait_for("STOPPING", "1", timeout=5)

    keys = [k for k in notify.keys() if k != "STATUS"]
    # READY first, then only pings, then STOPPING, and nothing after it.
    assert "READY" == keys[0] and "STOPPING" == keys[-1], keys
    assert {"WATCHDOG"} == set(keys[1:-1]), keys
    pings = notify.times("WATCHDOG")
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert 5 <= len(pings), pings
    assert 0.4 <= statistics.median(gaps) <= 0.65, gaps
    assert max(gaps) < WATCHDOG_USEC / 1e6, gaps  # never a gap systemd would count as hung
    assert ready.at < pings[0] and pings[-1] < stopping.at
    assert f"consuming {cfg.topic}.{cfg.host}" == ready.fields["STATUS"]
    assert "stopping" in stopping.fields["STATUS"]


def test_a_publisher_stuck_on_a_silent_broker_stops_the_pings(
        make_config: Callable[..., Config], broker_url: str, tmp_path: Path,
        notify: NotifySocket) -> None:
    """A broker link that stops answering hangs the publishing loop: the pings stop, and
    come back when the broker answers again.

    Given a worker whose broker is behind a relay, pinging its watchdog, when the relay holds
    back everything the broker says to the publishing connection (the worker's heartbeat
    service.update then waits for a confirm that never comes, and the connection is closed,
    which waits for the broker's close-ok), then WATCHDOG=1 stops within the stale time, and
    starts again once the relay lets the broker's bytes through.
    """
    relay = Relay(broker_url)
    cfg = make_config()
    argv = argv_for(cfg, transport_url=relay.url, confirm_timeout=1.0, report_interval=0.5)
    worker = RunningWorker(argv, tmp_path / "worker.log", _env(notify))
    try:
        notify.wait_for("READY", "1", timeout=30)
        link = wait_until(lambda: relay.link_that_sent(CONFIRM_SELECT), 10,
                          "the publisher's link")
        time.sleep(1.5)
        held_at = time.monotonic()
        relay.hold(link)
        # confirm timeout (1 s) + the next heartbeat (0.5 s) + stale (2 s) + a tick or two
        time.sleep(5.0)
        quiet_from = time.monotonic()
        time.sleep(3.0)
        quiet_to = time.monotonic()
        relay.release()
        wait_until(lambda: any(t > quiet_to for t in notify.times("WATCHDOG")), 20,
                   "the pings to come back")
        code, _ = worker.signal_and_time(signal.SIGTERM)
    finally:
        worker.close()
        relay.close()
    pings = notify.times("WATCHDOG")
    before = [t for t in pings if t < held_at]
    during = [t for t in pings if quiet_from <= t <= quiet_to]
    assert 3 <= len(before), pings
    assert [] == during, [round(t - held_at, 2) for t in pings if t > held_at]
    assert any(r.get("event") == "watchdog_withheld_loop_stuck" for r in worker.records())
    assert 0 == code, worker.text()[-2000:]
