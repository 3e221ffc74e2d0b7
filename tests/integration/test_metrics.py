"""Metrics scraped from a real worker's endpoint and textfile after real traffic."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Producer

from tests.scrape import Samples, scrape
from tests.taps import EventTap
from worker.codec import envelope
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.integration


@pytest.fixture
def cfg(make_config: Callable[..., Config], tmp_path: Path) -> Config:
    """Metrics on an ephemeral port and in a textfile written five times a second."""
    return make_config(metrics_listen="127.0.0.1:0",
                       metrics_textfile=str(tmp_path / "compute-worker.prom"),
                       metrics_textfile_interval=0.2)


@pytest.fixture
def service(cfg: Config, tap: EventTap) -> Iterator[Service]:
    """A started worker; the test may stop it itself (stop twice is not needed here)."""
    made = Service(cfg, retry_sleep=lambda _s: None, debounce=0.3)
    made.start()
    yield made
    if not made.stopped.is_set():
        made.stop(grace=10)


def _publish(cfg: Config, inner: dict[str, object]) -> None:
    with Connection(cfg.transport_url) as conn:
        Producer(conn.channel()).publish(
            envelope.wrap(inner), exchange=Exchange(cfg.control_exchange, type="topic",
                                                    durable=False),
            routing_key=f"{cfg.topic}.{cfg.host}", content_type="application/json",
            content_encoding="utf-8")


def _cast(method: str, uid: str, unique_id: str | None = None) -> dict[str, object]:
    return {"method": method, "args": {"instance": {"uuid": uid}}, "version": "6.0",
            "_unique_id": unique_id or uuid.uuid4().hex, "_context_request_id": "req-metrics"}


def _until(read: Callable[[], Samples], holds: Callable[[Samples], bool],
           timeout: float = 10.0) -> Samples:
    """Scrape until holds(samples); the last scrape's text in the failure if never."""
    deadline = time.monotonic() + timeout
    while True:
        seen = read()
        if holds(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"never held; last scrape:\n{seen.text}")
        time.sleep(0.05)


def test_a_scrape_after_real_traffic_counts_each_outcome(
        service: Service, cfg: Config, tap: EventTap,
        domains: Callable[[int], list[str]]) -> None:
    """A pause that works, one that fails, two refused, a repeat: each is counted as it ended.

    Given a worker with its endpoint on; when casts of every outcome have been served;
    then the endpoint and the textfile say so, with the events the tap saw by priority.
    """
    (uid,) = domains(1)
    address = service.exporter.address
    assert address is not None
    pause = _cast("pause_instance", uid)
    _publish(cfg, pause)
    tap.wait_type(uid, "instance.pause.end")
    missing = str(uuid.uuid4())
    _publish(cfg, _cast("pause_instance", missing))
    tap.wait_type(missing, "instance.pause.error")
    _publish(cfg, _cast("format_disk", uid))  # no such method
    _publish(cfg, _cast("Pause Instance!; DROP", uid))  # hostile
    _publish(cfg, pause)  # the same _unique_id again: answered from the journal

    messages = "compute_worker_rpc_messages_total"
    seen = _until(lambda: scrape(address), lambda s: (
        s.values.get((messages, frozenset({("method", "pause_instance"),
                                           ("outcome", "duplicate")}))) == 1
        and s.values.get((messages, frozenset({("method", "other"),
                                               ("outcome", "rejected")}))) == 2))

    assert (1, 1, 1) == tuple(seen.get(messages, method="pause_instance", outcome=o)
                              for o in ("ok", "error", "duplicate"))
    assert {"pause_instance", "other"} == seen.labels(messages, "method")
    assert 2 == seen.get("compute_worker_verb_duration_seconds_count", method="pause_instance")
    assert (1, 1, 1, 0, 0) == (
        seen.get("compute_worker_up"), seen.get("compute_worker_broker_connected"),
        seen.get("compute_worker_libvirt_connected"),
        seen.get("compute_worker_reconnects_total", peer="broker"),
        seen.get("compute_worker_reconnects_total", peer="libvirt"))
    assert 1 <= seen.get("compute_worker_instances", power_state="paused")
    assert 0 == seen.get("compute_worker_redeliveries_absorbed_total")
    assert 0 == seen.get("compute_worker_publish_confirm_failures_total")

    # Every event the worker published was confirmed and counted: as many as the tap got.
    def published(s: Samples) -> dict[str, float]:
        return {p: s.get("compute_worker_events_published_total", priority=p)
                for p in ("info", "error")}
    seen = _until(lambda: scrape(address), lambda s: published(s) == dict(
        Counter(e["priority"].lower() for e in tap.snapshot())))
    assert 1 <= published(seen)["error"] and 4 <= published(seen)["info"]

    # The textfile says the same within its interval.
    textfile = Path(cfg.worker.metrics_textfile)
    _until(lambda: Samples(textfile.read_text()),
           lambda s: s.get(messages, method="pause_instance", outcome="duplicate") == 1)


def test_the_textfile_s_last_write_says_the_worker_stopped(service: Service,
                                                          cfg: Config) -> None:
    """After stop node_exporter still reads the file: up 0, the endpoint gone."""
    textfile = Path(cfg.worker.metrics_textfile)
    assert 1 == Samples(textfile.read_text()).get("compute_worker_up")

    service.stop(grace=10)

    assert 0 == Samples(textfile.read_text()).get("compute_worker_up")
    assert None is service.exporter.address
