"""Durable mode (quorum queue, dead-letter exchange) and HMAC-signed messages on a real broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Producer, Queue

from tests.taps import EventTap
from worker.amqp.topology import host_queue
from worker.codec import envelope, signing
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.integration


def _cast(cfg: Config, method: str, args: dict[str, object],
          headers: dict[str, str] | None = None, body: bytes | None = None,
          host: str | None = None) -> bytes:
    body = body or envelope.wrap({"method": method, "args": args, "version": "6.0",
                                  "_unique_id": uuid.uuid4().hex})
    with Connection(cfg.transport_url) as conn:
        ex = Exchange(cfg.control_exchange, type="topic", durable=cfg.rabbit.amqp_durable_queues)
        Producer(conn.channel()).publish(
            body, exchange=ex, routing_key=f"{cfg.topic}.{host or cfg.host}", headers=headers,
            content_type="application/json", content_encoding="utf-8", delivery_mode=2)
    return body


@pytest.fixture
def durable_cfg(make_config: Callable[..., Config]) -> Iterator[Config]:
    """Durable exchange, quorum host queue and a dead-letter exchange; all deleted afterwards."""
    tag = uuid.uuid4().hex[:8]
    cfg = make_config(amqp_durable_queues=True, rabbit_quorum_queue=True,
                      rabbit_quorum_delivery_limit=20,
                      dead_letter_exchange=f"dlx_{tag}")
    yield cfg
    with Connection(cfg.transport_url) as conn:
        channel = conn.channel()
        for name in (host_queue(cfg).name, cfg.rabbit.dead_letter_exchange,
                     f"{cfg.notifications.notification_topic}.info",
                     f"{cfg.notifications.notification_topic}.error"):
            channel.queue_delete(name)
        for name in (cfg.control_exchange, cfg.rabbit.dead_letter_exchange):
            channel.exchange_delete(name)


def test_quorum_queue_serves_and_dead_letters_rejects(
        durable_cfg: Config, domains: Callable[[int], list[str]]) -> None:
    """With durable queues a quorum host queue serves casts; rejects land in the DLX queue."""
    cfg = durable_cfg
    tap = EventTap(cfg.transport_url, cfg.control_exchange, cfg.notifications.notification_topic,
                   durable=True)
    service = Service(cfg, retry_sleep=lambda _s: None)
    service.start()
    try:
        (uid,) = domains(1)
        _cast(cfg, "pause_instance", {"instance": {"uuid": uid}})
        tap.wait_type(uid, "instance.pause.end")
        junk = _cast(cfg, "", {}, body=b"this is not json")
        tap.wait_for(lambda evs: any(e["event_type"] == "rpc_message.reject.error" for e in evs))
        # The error event goes out before the reject: poll the dead-letter queue.
        with Connection(cfg.transport_url) as conn:
            channel = conn.channel()
            deadline = time.monotonic() + 10
            while (dead := Queue(cfg.rabbit.dead_letter_exchange, channel=channel).get(
                    no_ack=True)) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            args = channel.queue_declare(host_queue(cfg).name, passive=True)
        assert 0 == args.message_count
        assert dead is not None
        assert junk == (dead.body if isinstance(dead.body, bytes) else dead.body.encode())
    finally:
        service.stop(grace=5)
        tap.close()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """A shared signing key."""
    path = tmp_path / "signing.key"
    path.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    return path


def _signed_cast(cfg: Config, key: bytes, args: dict[str, object], *, host: str | None = None,
                 signed_for: str | None = None, unique_id: str | None = "new",
                 age: float = 0.0) -> bytes:
    """Publish a pause signed for signed_for's queue (default host's) to host's queue."""
    message: dict[str, object] = {"method": "pause_instance", "args": args, "version": "6.0"}
    if unique_id is not None:
        message["_unique_id"] = uuid.uuid4().hex if unique_id == "new" else unique_id
    body = envelope.wrap(message)
    headers = signing.headers(key, cfg.control_exchange,
                              f"{cfg.topic}.{signed_for or host or cfg.host}", body,
                              now=time.time() - age)
    return _cast(cfg, "", {}, headers=headers, body=body, host=host)


def _reject_reasons(tap: EventTap, count: int) -> list[str]:
    rejects = tap.wait_for(lambda evs: sum(
        e["event_type"] == "rpc_message.reject.error" for e in evs) >= count)
    return [e["payload"]["nova_object.data"]["fault"]["exception_message"] for e in rejects
            if e["event_type"] == "rpc_message.reject.error"]


@pytest.fixture
def signed_worker(make_config: Callable[..., Config], key_file: Path
                  ) -> Iterator[tuple[Config, bytes, EventTap, Service]]:
    """A worker that requires signatures, its key and a tap on its events."""
    cfg = make_config(signing_key_file=str(key_file), require_signature=True)
    tap = EventTap(cfg.transport_url, cfg.control_exchange, cfg.notifications.notification_topic)
    service = Service(cfg, retry_sleep=lambda _s: None)
    service.start()
    yield cfg, signing.load_key(str(key_file)), tap, service
    service.stop(grace=5)
    tap.close()


def test_signed_messages_only(signed_worker: tuple[Config, bytes, EventTap, Service],
                              domains: Callable[[int], list[str]]) -> None:
    """With require_signature, unsigned and badly signed casts are rejected; signed ones run."""
    cfg, key, tap, service = signed_worker
    (uid,) = domains(1)
    args = {"instance": {"uuid": uid}}
    _cast(cfg, "pause_instance", args)
    _cast(cfg, "pause_instance", args, headers={signing.HEADER: "00" * 32,
                                                 signing.TIME_HEADER: f"{time.time():.3f}"})
    _signed_cast(cfg, key, args)
    tap.wait_type(uid, "instance.pause.end")
    reasons = _reject_reasons(tap, 2)
    assert 2 == len(reasons) and 2 == service.dispatcher.bad_signatures
    assert 1 == len(tap.of(uid, "instance.pause.end"))


def test_captured_signed_messages_cannot_be_replayed(
        signed_worker: tuple[Config, bytes, EventTap, Service],
        domains: Callable[[int], list[str]]) -> None:
    """Too old, meant for another host, or without _unique_id: refused; a fresh replay runs once."""
    cfg, key, tap, service = signed_worker
    (uid,) = domains(1)
    args = {"instance": {"uuid": uid}}
    _signed_cast(cfg, key, args, age=cfg.worker.signature_max_age + 60)  # replayed after the window
    _signed_cast(cfg, key, args, signed_for="another-host")
    _signed_cast(cfg, key, args, unique_id=None)
    reasons = _reject_reasons(tap, 3)
    assert 3 == service.dispatcher.bad_signatures
    assert [] == tap.of(uid, "instance.pause.end")
    assert any("old" in r for r in reasons)
    assert any("does not match" in r for r in reasons)
    assert any("_unique_id" in r for r in reasons)

    once = uuid.uuid4().hex
    _signed_cast(cfg, key, args, unique_id=once)
    tap.wait_type(uid, "instance.pause.end")
    # Settled (acked) and so out of the running: a replay now meets the journal.
    assert service.dispatcher.wait_settled(10)
    _signed_cast(cfg, key, args, unique_id=once)  # captured and replayed within the window
    ends = tap.wait_type(uid, "instance.pause.end", count=2)
    assert 1 == len({e["message_id"] for e in ends})  # the journal's answer again
    assert 1 == len(tap.of(uid, "instance.pause.start"))  # never a second run
    assert service.dispatcher.wait_settled(10)  # counted once its confirm is in
    assert 2 == service.dispatcher.completed


def test_the_worker_signs_what_it_publishes(
        signed_worker: tuple[Config, bytes, EventTap, Service],
        domains: Callable[[int], list[str]]) -> None:
    """Events carry a signature good for the exchange and routing key they were published to."""
    cfg, key, _tap, _service = signed_worker
    (uid,) = domains(1)
    with Connection(cfg.transport_url) as conn:
        queue = Queue(f"{cfg.notifications.notification_topic}.info", channel=conn.channel())
        _signed_cast(cfg, key, {"instance": {"uuid": uid}})
        deadline = time.monotonic() + 10
        while (message := queue.get(no_ack=True)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert message is not None
        body = message.body if isinstance(message.body, bytes) else message.body.encode()
        assert signing.verify(key, body, message.headers, exchange=cfg.control_exchange,
                              routing_key=f"{cfg.notifications.notification_topic}.info",
                              max_age=60,
                              required=True)
