"""Queues the broker already holds with other flags (406 PRECONDITION_FAILED), said once.

At start the worker names the queue, the argument and the fix, and exits 1; found after a
reconnect, it reports the host disabled with that reason (service.update, STATUS=) instead
of reconnecting once a second.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Queue

from tests.relay import Relay
from tests.taps import Event, EventTap
from tests.worker_run import RunningWorker, argv_for
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.integration
#: AMQP method confirm.select (class 85, method 10): the publisher's link sends it.
CONFIRM_SELECT = b"\x00\x55\x00\x0a"


def _declare(url: str, name: str, **flags: Any) -> None:
    """The queue as someone else declared it before the worker came."""
    with Connection(url) as conn:
        channel = conn.channel()
        Queue(name, **flags)(channel).declare()


def _replace(url: str, name: str, **flags: Any) -> None:
    """Delete the queue and declare it again with other flags, as another deployment might."""
    with Connection(url) as conn:
        channel = conn.channel()
        Queue(name)(channel).delete()
        Queue(name, **flags)(channel).declare()


@pytest.mark.parametrize("which, flags, says", [
    ("events", {"durable": True},
     "on the broker has durable true but this worker declares durable false "
     "(option amqp_durable_queues): delete the queue"),
    ("host", {"durable": True, "queue_arguments": {"x-queue-type": "quorum"}},
     "on the broker has durable true but this worker declares durable false"),
], ids=["durable-event-queue", "quorum-host-queue"])
def test_a_clash_at_start_is_said_once_and_the_worker_exits_1(
        cfg: Config, tmp_path: Path, which: str, flags: dict[str, Any], says: str) -> None:
    """The event queue durable, or the host queue a quorum queue, where this worker declares
    classic non-durable ones: one line naming queue, argument and fix, status 1."""
    name = (f"{cfg.notifications.notification_topic}.info" if which == "events"
            else f"{cfg.topic}.{cfg.host}")
    _declare(cfg.transport_url, name, **flags)
    worker = RunningWorker(argv_for(cfg), tmp_path / "worker.log")
    try:
        code = worker.proc.wait(30)
    finally:
        worker.close()
    text = worker.text()
    last = text.strip().splitlines()[-1]

    assert 1 == code, text[-2000:]
    assert last.startswith(f"compute-worker: TopologyMismatch: queue '{name}' {says}"), last
    assert 1 == sum("inequivalent" in line or says in line for line in text.splitlines()
                    if line.startswith("{")), text[-3000:]
    assert "Traceback" not in text
    assert not any(r.get("event") == "worker_started" for r in worker.records())


@pytest.fixture
def relay(broker_url: str) -> Iterator[Relay]:
    """A relay in front of the broker: the test can cut one connection of the worker."""
    through = Relay(broker_url)
    yield through
    through.close()


def _disabled(events: list[Event]) -> list[str]:
    return [str(e["payload"]["nova_object.data"]["disabled_reason"]) for e in events
            if e["event_type"] == "service.update"
            and e["payload"]["nova_object.data"]["disabled"]]


def test_a_clash_after_a_reconnect_disables_the_host_with_the_reason(
        make_config: Callable[..., Config], broker_url: str, relay: Relay,
        info_logs: list[MutableMapping[str, Any]]) -> None:
    """A running worker whose event queue is now held durable: after its publisher reconnects,
    the host is disabled with the reason (service.update, STATUS=), said in the log once,
    and it takes no messages; it does not reconnect again and again."""
    cfg = make_config(report_interval=0.5)
    tap = EventTap(broker_url, cfg.control_exchange, cfg.notifications.notification_topic)
    service = Service(dataclasses.replace(cfg, transport_url=relay.url),
                      retry_sleep=lambda _s: None, debounce=0.3)
    service.start()
    try:
        name = f"{cfg.notifications.notification_topic}.info"
        _replace(broker_url, name, durable=True)
        link = relay.link_that_sent(CONFIRM_SELECT)
        assert link is not None
        relay.cut(link)
        events = tap.wait_for(lambda evs: len(_disabled(evs)) >= 3, timeout=30)
        consuming = service.consumer.consuming
        faults, state = service.faults, service.systemd_state()
        connections = relay.connections
    finally:
        service.stop(grace=5)
        tap.close()
    reason = _disabled(events)[0]

    assert reason.startswith(f"queue '{name}' on the broker has durable true"), reason
    assert {"broker_topology": reason} == faults
    assert (False, f"disabled, not consuming: {reason}") == state
    assert not consuming
    said = [e for e in info_logs if e["event"] == "broker_topology_mismatch"]
    assert [reason] == [e["reason"] for e in said]
    assert 3 == connections  # consumer, publisher, and the publisher once again: no more


#: AMQP method basic.qos (class 60, method 10): the consumer's link sends it.
BASIC_QOS = b"\x00\x3c\x00\x0a"


def test_a_host_queue_made_quorum_under_a_running_worker_disables_the_host(
        make_config: Callable[..., Config], broker_url: str, relay: Relay,
        info_logs: list[MutableMapping[str, Any]]) -> None:
    """The host queue deleted and declared again as a quorum queue while the worker runs: the
    consumer, back from the broker's cancel, finds it clashing and reports the host disabled
    with the reason, once, instead of reconnecting once a second."""
    cfg = make_config(report_interval=0.5)
    tap = EventTap(broker_url, cfg.control_exchange, cfg.notifications.notification_topic)
    service = Service(dataclasses.replace(cfg, transport_url=relay.url),
                      retry_sleep=lambda _s: None, debounce=0.3)
    service.start()
    try:
        link = relay.link_that_sent(BASIC_QOS)
        assert link is not None
        name = f"{cfg.topic}.{cfg.host}"
        # The consumer hears of the delete (basic.cancel) only once the quorum queue is there.
        relay.hold(link)
        _replace(broker_url, name, durable=True, queue_arguments={"x-queue-type": "quorum"})
        relay.release()
        events = tap.wait_for(lambda evs: len(_disabled(evs)) >= 3, timeout=30)
        faults, state = service.faults, service.systemd_state()
        connections = relay.connections
    finally:
        service.stop(grace=5)
        tap.close()
    reason = _disabled(events)[0]

    assert reason.startswith(f"queue '{name}' on the broker has durable true"), reason
    assert {"broker_queues": reason} == faults
    assert (False, f"disabled, not consuming: {reason}") == state
    said = [e for e in info_logs if e["event"] == "broker_queue_mismatch"]
    assert [reason] == [e["reason"] for e in said]
    assert 3 == connections  # consumer, publisher, and the consumer once again: no more
