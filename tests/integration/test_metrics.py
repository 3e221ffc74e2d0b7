"""Metrics scraped from a real worker's endpoint and textfile after real traffic."""

from __future__ import annotations

import dataclasses
import struct
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Producer

from tests.brokers import wait_until
from tests.relay import Relay
from tests.scrape import Samples, scrape
from tests.taps import EventTap
from worker.amqp.client import RpcClient
from worker.codec import envelope
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.integration
# confirm.select (class 85, method 10): of the worker's connections only the publisher's sends it.
CONFIRM_SELECT = struct.pack(">HH", 85, 10)
#: The broker's connection.close-ok frame (method 10.51 on channel 0), as it is on the wire.
CLOSE_OK = b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x33\xce"


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
        s.find(messages, method="pause_instance", outcome="duplicate") == 1
        and s.find(messages, method="other", outcome="rejected") == 2))

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
           lambda s: s.find(messages, method="pause_instance", outcome="duplicate") == 1)


def test_the_textfile_s_last_write_says_the_worker_stopped(service: Service,
                                                          cfg: Config) -> None:
    """After stop node_exporter still reads the file: up 0, the endpoint gone."""
    textfile = Path(cfg.worker.metrics_textfile)
    assert 1 == Samples(textfile.read_text()).get("compute_worker_up")

    service.stop(grace=10)

    assert 0 == Samples(textfile.read_text()).get("compute_worker_up")
    assert None is service.exporter.address


def test_confirms_held_back_count_as_failures_and_the_reconnect_as_one(
        make_config: Callable[..., Config], broker_url: str,
        domains: Callable[[int], list[str]]) -> None:
    """A publisher whose confirms never come: its confirm timeout is counted, and its reconnect.

    Given a worker whose broker connections run through a relay, when the broker's side of
    the publishing connection is held and a pause is cast, the confirm timeout gives up that
    connection: the publishes it owed count as confirm failures, the new connection as one
    broker reconnect, and the events, published again, are counted once confirmed.
    """
    relay = Relay(broker_url)
    cfg = dataclasses.replace(make_config(confirm_timeout=1.0, metrics_listen="127.0.0.1:0"),
                              transport_url=relay.url)
    (uid,) = domains(1)
    tap = EventTap(broker_url, cfg.control_exchange, cfg.notifications.notification_topic)
    service = Service(cfg, retry_sleep=lambda _s: None, debounce=0.3)
    try:
        service.start()
        address = service.exporter.address
        assert address is not None
        relay.hold(wait_until(lambda: relay.link_that_sent(CONFIRM_SELECT), 10,
                              "the publisher's confirm.select"))
        with Connection(broker_url) as conn:
            RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic).cast(
                cfg.host, "pause_instance", {"instance": {"uuid": uid}})
        # Given up: the old connection waits for its close-ok, which the relay holds too.
        wait_until(lambda: relay.holding(CLOSE_OK), 10, "the publisher to give up its link")
        relay.release()

        seen = _until(lambda: scrape(address), lambda s: s.get(
            "compute_worker_reconnects_total", peer="broker") == 1 and s.find(
            "compute_worker_rpc_messages_total", method="pause_instance", outcome="ok") == 1
            and s.get("compute_worker_broker_connected") == 1, timeout=20)
        # The pause's start and end events at least were owed when the timeout fired.
        assert 2 <= seen.get("compute_worker_publish_confirm_failures_total")
        # Published again on the new connection and confirmed there: counted once each.
        ends = tap.wait_type(uid, "instance.pause.end")
        assert 1 <= len(ends)
        _until(lambda: scrape(address), lambda s: s.get(
            "compute_worker_events_published_total", priority="info") >= 3)
    finally:
        relay.release()
        service.stop(grace=5)
        tap.close()
        relay.close()
