"""Delivery semantics on a real broker: bad input, per-instance order, duplicates, fanout."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, MutableMapping
from typing import Any

import libvirt
import pytest
from kombu import Connection, Exchange, Producer, Queue

from tests.domains import TEST_URI, state_of
from tests.helpers import BOTH_PATHS, check_event
from tests.taps import EventTap
from worker.amqp.client import RemoteError, RpcClient
from worker.amqp.topology import host_queue
from worker.codec import envelope
from worker.config import Config
from worker.service import Service

# Delivery is what the transport path decides: every test here runs on both.
pytestmark = [pytest.mark.integration, BOTH_PATHS]


def _publish_raw(cfg: Config, body: bytes, routing_key: str | None = None,
                 exchange: Exchange | None = None) -> None:
    with Connection(cfg.transport_url) as conn:
        ex = exchange or Exchange(cfg.control_exchange, type="topic", durable=False)
        Producer(conn.channel()).publish(
            body, exchange=ex, routing_key=routing_key or f"{cfg.topic}.{cfg.host}",
            content_type="application/json", content_encoding="utf-8", delivery_mode=2)


def _cast_body(method: str, args: dict[str, object], unique_id: str | None = None) -> bytes:
    return envelope.wrap({"method": method, "args": args, "version": "6.0",
                          "_unique_id": unique_id or uuid.uuid4().hex,
                          "_context_request_id": f"req-{uuid.uuid4()}"})


HOSTILE: list[bytes] = [
    b"not json at all",
    b"\xff\xfe\x00garbage",
    b"[1, 2, 3]",
    json.dumps({"oslo.version": "9.9", "oslo.message": "{}"}).encode(),
    json.dumps({"oslo.version": "2.0", "oslo.message": 42}).encode(),
    json.dumps({"oslo.version": "2.0", "oslo.message": "{broken"}).encode(),
    b"[" * 100000 + b"]" * 100000,
    b'{"method": "' + b"x" * 2_000_000 + b'"}',
    _cast_body("pause_instance", {"instance": {"uuid": "../../etc/passwd"}}),
    _cast_body("pause_instance", {"instance": {"uuid": "11111111-2222-3333-4444-555555555555",
                                               "name": "a\u0000b"}}),
    _cast_body("pause_instance", {"instance": "not an object"}),
    _cast_body("format_disk", {}),
    envelope.wrap({"method": "pause_instance", "args": {}, "version": "7.0"}),
    envelope.wrap({"method": "Pause Instance!", "args": {}}),
    envelope.wrap({"method": "list_instances", "args": [], "_timeout": True}),
]


def test_hostile_messages_are_rejected_and_the_next_one_is_served(
        worker: Service, tap: EventTap, cfg: Config,
        domains: Callable[[int], list[str]]) -> None:
    """Every malformed body is answered with an error event and dropped; a valid cast still runs."""
    (uid,) = domains(1)
    for body in HOSTILE:
        _publish_raw(cfg, body)
    _publish_raw(cfg, _cast_body("pause_instance", {"instance": {"uuid": uid}}))
    tap.wait_type(uid, "instance.pause.end")
    rejects = tap.wait_for(lambda evs: sum(
        e["event_type"] == "rpc_message.reject.error" for e in evs) >= len(HOSTILE))
    assert len(HOSTILE) == sum(e["event_type"] == "rpc_message.reject.error" for e in rejects)
    for event in tap.events:
        check_event(event)
    assert len(HOSTILE) == worker.dispatcher.rejected
    # Rejected, not requeued: nothing is left in the host queue.
    with Connection(cfg.transport_url) as conn:
        _, ready, _ = host_queue(cfg)(conn.channel()).queue_declare(passive=True)
    assert 0 == ready


def test_bad_call_gets_an_error_reply(worker: Service, rpc: RpcClient, cfg: Config) -> None:
    """A schema-invalid call is answered with an InvalidArguments failure, not left waiting."""
    with pytest.raises(RemoteError) as caught:
        rpc.call(cfg.host, "reboot_instance",
                 {"instance": {"uuid": str(uuid.uuid4())}, "reboot_type": "SIDEWAYS"}, timeout=10)
    assert "InvalidArguments" == caught.value.exc_class
    assert [] == caught.value.failure["tb"]


def test_one_instance_keeps_arrival_order_while_others_run(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config,
        domains: Callable[[int], list[str]]) -> None:
    """Alternating pause/unpause casts on several instances all succeed, each in cast order."""
    uids = domains(4)
    rounds = 40
    for number in range(rounds):
        method = "pause_instance" if number % 2 == 0 else "unpause_instance"
        for uid in uids:
            rpc.cast(cfg.host, method, {"instance": {"uuid": uid}})
    for uid in uids:
        tap.wait_for(lambda _, uid=uid: len(
            [e for e in tap.of(uid) if e["event_type"].endswith((".end", ".error"))]) >= rounds)
        ends = [e for e in tap.of(uid) if e["event_type"].endswith((".end", ".error"))]
        expected = ["instance.pause.end", "instance.unpause.end"] * (rounds // 2)
        assert expected == [e["event_type"] for e in ends]
        assert ["paused", "running"] * (rounds // 2) == [
            e["payload"]["nova_object.data"]["power_state"] for e in ends]


def test_completed_message_is_not_run_again(
        worker: Service, tap: EventTap, cfg: Config, test_driver: libvirt.virConnect,
        domains: Callable[[int], list[str]]) -> None:
    """A redelivered, already-completed cast republishes its end event but does not act again."""
    (uid,) = domains(1)
    body = _cast_body("pause_instance", {"instance": {"uuid": uid}}, unique_id=uuid.uuid4().hex)
    _publish_raw(cfg, body)
    first = tap.wait_type(uid, "instance.pause.end")[0]
    # Someone unpauses it behind our back; a repeat of the old pause must not undo that.
    test_driver.lookupByUUIDString(uid).resume()
    _publish_raw(cfg, body)
    ends = tap.wait_type(uid, "instance.pause.end", count=2)
    assert first["message_id"] == ends[1]["message_id"]
    assert libvirt.VIR_DOMAIN_RUNNING == state_of(TEST_URI, uid)
    assert 1 == len(tap.of(uid, "instance.pause.start"))


def test_fanout_cast_reaches_the_worker(
        worker: Service, tap: EventTap, cfg: Config,
        domains: Callable[[int], list[str]]) -> None:
    """A cast on the <topic>_fanout exchange is served like a direct one."""
    (uid,) = domains(1)
    fanout = Exchange(f"{cfg.topic}_fanout", type="fanout", durable=False, auto_delete=True)
    _publish_raw(cfg, _cast_body("pause_instance", {"instance": {"uuid": uid}}),
                 routing_key=cfg.topic, exchange=fanout)
    tap.wait_type(uid, "instance.pause.end")


def test_a_cast_on_the_alt_topic_is_served_like_one_on_the_host_topic(
        worker: Service, tap: EventTap, cfg: Config,
        domains: Callable[[int], list[str]]) -> None:
    """nova 6.5 sends migration and volume-connection calls to compute-alt.<host>: served too."""
    (uid,) = domains(1)
    _publish_raw(cfg, _cast_body("pause_instance", {"instance": {"uuid": uid}}),
                 routing_key=f"{cfg.topic}-alt.{cfg.host}")
    tap.wait_type(uid, "instance.pause.end")


def test_events_wait_in_the_default_queue_for_late_consumers(
        worker: Service, rpc: RpcClient, tap: EventTap, cfg: Config,
        domains: Callable[[int], list[str]]) -> None:
    """Events published before anyone listens are kept in <topic>.info, as oslo's notifier does."""
    (uid,) = domains(1)
    rpc.cast(cfg.host, "pause_instance", {"instance": {"uuid": uid}})
    tap.wait_type(uid, "instance.pause.end")
    with Connection(cfg.transport_url) as conn:
        channel = conn.channel()
        queue = Queue(f"{cfg.notifications.notification_topic}.info", channel=channel)
        kept = []
        while (message := queue.get(no_ack=True)) is not None:
            kept.append(envelope.unwrap(message.body, 1 << 20))
    assert {"service.update", "instance.pause.start", "instance.pause.end"} <= {
        e["event_type"] for e in kept}


def test_the_worker_takes_the_path_fast_path_picks(
        cfg: Config, fast_path: bool, rpc: RpcClient,
        info_logs: list[MutableMapping[str, Any]]) -> None:
    """On plain TCP both connections take FastWire, or PolledWire with fast_path off; calls work."""
    service = Service(cfg, retry_sleep=lambda _s: None, debounce=0.3)
    service.start()
    try:
        assert isinstance(rpc.call(cfg.host, "list_instances", {}, timeout=10), list)
    finally:
        service.stop(grace=5)
    wire = "FastWire" if fast_path else "PolledWire"
    assert [("consumer_connected", wire), ("publisher_connected", wire)] == sorted(
        (e["event"], e["wire"]) for e in info_logs
        if e["event"] in ("consumer_connected", "publisher_connected"))
