"""A broker memory alarm (connection.blocked) longer than the confirm timeout, on a private node."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import structlog
from kombu import Connection, Producer
from structlog.testing import capture_logs

from tests.brokers import PrivateBroker, wait_until
from tests.taps import Event, EventTap, went_down
from worker.amqp.topology import control_exchange, host_queue
from worker.codec import envelope, notifications
from worker.config import Config
from worker.service import Service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CASTS = 300
DOMAINS = 6
ALARM = 10.0  # seconds the broker is out of memory; the worker's confirm timeout is 3
SET_ALARM = "rabbit_alarm:set_alarm({{resource_limit, memory, node()}, []})."
CLEAR_ALARM = "rabbit_alarm:clear_alarm({resource_limit, memory, node()})."


@pytest.fixture(scope="module")
def alarm_broker() -> Iterator[PrivateBroker]:
    """A RabbitMQ node of this module's own, whose memory alarm the test raises."""
    broker = PrivateBroker(name="rabbitalarm", port=5692, dist_port=25692)
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


def _cast_all(cfg: Config, uids: list[str]) -> list[tuple[str, str, str]]:
    """Queue CASTS pause/unpause casts, round robin; (unique_id, action, uuid) of each."""
    plan = []
    with Connection(cfg.transport_url) as conn:
        channel = conn.channel()
        host_queue(cfg)(channel).declare()
        producer = Producer(channel)
        for index in range(CASTS):
            uid = uids[index % len(uids)]
            action = "pause" if (index // len(uids)) % 2 == 0 else "unpause"
            unique_id = uuid.uuid4().hex
            producer.publish(envelope.wrap({
                "method": f"{action}_instance", "version": "6.0", "_unique_id": unique_id,
                "_context_request_id": f"req-{uuid.uuid4()}",
                "args": {"instance": {"uuid": uid}}}),
                exchange=control_exchange(cfg), routing_key=host_queue(cfg).name,
                content_type="application/json", content_encoding="utf-8", delivery_mode=2)
            plan.append((unique_id, action, uid))
    return plan


def _statuses(seen: list[Event]) -> list[tuple[bool, str | None]]:
    return [(e["payload"]["nova_object.data"]["disabled"],
             e["payload"]["nova_object.data"]["disabled_reason"])
            for e in seen if e["event_type"] == "service.update"]


def test_memory_alarm_longer_than_the_confirm_timeout_loses_and_repeats_nothing(
        alarm_broker: PrivateBroker, make_config: Callable[..., Config],
        domains: Callable[[int], list[str]]) -> None:
    """Blocked longer than its confirm timeout, the worker pauses, says so, ends each cast once.

    Given 300 casts queued and the broker's memory alarm raised, when the worker starts and
    the alarm is cleared 10 s later (its confirm timeout is 3 s), then every cast has one end
    event, the host queue is empty, the worker reported itself disabled for the block and
    enabled after it, and logged that consuming paused.
    """
    cfg = make_config(transport_url=alarm_broker.url, confirm_timeout=3.0)
    uids = domains(DOMAINS)
    plan = _cast_all(cfg, uids)
    tap = EventTap(cfg.transport_url, cfg.control_exchange, cfg.notifications.notification_topic)
    service = Service(cfg, retry_sleep=lambda _s: None, debounce=0.3)
    wanted = {notifications.message_id(u, f"instance.{a}.end", cfg.event_publisher_id): (u, uid)
              for u, a, uid in plan}
    try:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            alarm_broker.ctl("eval", SET_ALARM)
            service.start()
            time.sleep(ALARM)
            alarm_broker.ctl("eval", CLEAR_ALARM)
            tap.wait_for(lambda seen: wanted.keys() <= {e["message_id"] for e in seen}, 40)
            wait_until(lambda: alarm_broker.queue_counts(host_queue(cfg).name) == (0, 0), 20,
                       "the host queue to be empty")
            service.stop(grace=10)
            tap.wait_for(went_down)  # so a repeat of anything is in the tap by now
    finally:
        alarm_broker.ctl("eval", CLEAR_ALARM)
        tap.close()
    ends = Counter(e["message_id"] for e in tap.events if e["event_type"].endswith(".end"))
    strays = [m for m in ends if m not in wanted]
    assert [] == strays
    # A repeat is allowed only for a cast delivered again (the journal absorbs it): with
    # no connection lost there is none, and then every cast ends exactly once.
    redeliveries = service.consumer.received - CASTS
    repeats = sum(n - 1 for n in ends.values())
    assert repeats <= redeliveries, (repeats, redeliveries, ends.most_common(3))
    assert CASTS == len(ends)
    lost = [e for e in logs if e["event"].endswith("_connection_lost")]
    assert [] == lost
    assert 1 <= sum(e["event"] == "broker_blocked_consuming_paused" for e in logs)
    statuses = _statuses(tap.events)
    blocked = [i for i, (disabled, reason) in enumerate(statuses)
               if disabled and "broker blocked" in (reason or "")]
    assert blocked, statuses
    assert (False, None) in statuses[blocked[0] + 1:], statuses
