"""A stop signal ends the worker within a second, whatever it is waiting for.

Once, with the broker unreachable at start, SIGTERM took 45 s (start() waited 30 s for the
broker, then a reconnect backoff, then the publisher for what it could not send) and SIGINT
went unheard while start() waited.
"""

from __future__ import annotations

import signal
import socket
import uuid
from pathlib import Path

import pytest

from tests.notify import NotifySocket
from tests.worker_run import RunningWorker, argv_for
from worker.config import Config

pytestmark = pytest.mark.integration
#: What "at once" is: signal to exit, interpreter shutdown included.
WITHIN = 1.0


def _closed_port() -> int:
    """A local port nothing listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_ends_a_worker_whose_broker_is_unreachable(
        cfg: Config, tmp_path: Path, sig: int) -> None:
    """Broker port closed: the worker is retrying (and says so in STATUS=); a signal ends it
    within a second, with status 0, and the password never shows."""
    notify = NotifySocket(abstract=f"cw-notify-{uuid.uuid4().hex}")
    url = f"amqp://guest:s3cret@127.0.0.1:{_closed_port()}//"
    worker = RunningWorker(argv_for(cfg, transport_url=url), tmp_path / "worker.log",
                           {"NOTIFY_SOCKET": notify.address})
    try:
        # Retrying twice: inside start()'s wait for the broker, and in a backoff sleep.
        worker.wait_logged("consumer_reconnect_wait", count=2)
        code, took = worker.signal_and_time(sig)
    finally:
        worker.close()
        notify.close()

    assert (0, True) == (code, took < WITHIN), (took, worker.text()[-2000:])
    assert [] == [n for n in notify.notes if "READY" in n.fields]
    assert any(s.startswith("connecting to the broker at amqp://guest:") for s in
               notify.statuses()), notify.statuses()
    assert "s3cret" not in " ".join(notify.statuses())
    assert "STOPPING" in notify.keys()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_ends_a_worker_whose_libvirt_is_unreachable(
        cfg: Config, tmp_path: Path, sig: int) -> None:
    """libvirt's port closed, broker up: a signal ends the started worker within a second."""
    uri = f"qemu+tcp://127.0.0.1:{_closed_port()}/system"
    worker = RunningWorker(argv_for(cfg, connection_uri=uri), tmp_path / "worker.log")
    try:
        worker.wait_logged("worker_started")
        worker.wait_logged("libvirt_not_reached_yet")
        code, took = worker.signal_and_time(sig)
    finally:
        worker.close()

    assert (0, True) == (code, took < WITHIN), (took, worker.text()[-2000:])
    assert any(r.get("event") == "worker_stopped" for r in worker.records())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_ends_an_idle_consuming_worker(cfg: Config, tmp_path: Path,
                                                     sig: int) -> None:
    """Broker and libvirt there, nothing running: a signal ends it within a second, said down."""
    worker = RunningWorker(argv_for(cfg), tmp_path / "worker.log")
    try:
        worker.wait_logged("consuming")
        worker.wait_logged("worker_started")
        code, took = worker.signal_and_time(sig)
    finally:
        worker.close()

    assert (0, True) == (code, took < WITHIN), (took, worker.text()[-2000:])
    assert any(r.get("event") == "worker_stopped" for r in worker.records())
