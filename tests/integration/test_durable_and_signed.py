"""Durable mode (quorum queue, dead-letter exchange) and HMAC-signed messages on a real broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Producer, Queue

from tests.helpers import EventTap
from worker import envelope, signing
from worker.config import Config
from worker.service import Service
from worker.topology import host_queue

pytestmark = pytest.mark.integration


def _cast(cfg: Config, method: str, args: dict[str, object],
          headers: dict[str, str] | None = None, body: bytes | None = None) -> bytes:
    body = body or envelope.wrap({"method": method, "args": args, "version": "1.0",
                                  "_unique_id": uuid.uuid4().hex})
    with Connection(cfg.transport_url) as conn:
        ex = Exchange(cfg.control_exchange, type="topic", durable=cfg.amqp_durable_queues)
        Producer(conn.channel()).publish(
            body, exchange=ex, routing_key=f"{cfg.topic}.{cfg.host}", headers=headers,
            content_type="application/json", content_encoding="utf-8", delivery_mode=2)
    return body


@pytest.fixture
def durable_cfg(make_config: Callable[..., Config]) -> Iterator[Config]:
    """Durable exchange, quorum host queue and a dead-letter exchange; all deleted afterwards."""
    tag = uuid.uuid4().hex[:8]
    cfg = make_config(amqp_durable_queues=True, queue_type="quorum",
                      dead_letter_exchange=f"dlx_{tag}")
    yield cfg
    with Connection(cfg.transport_url) as conn:
        channel = conn.channel()
        for name in (host_queue(cfg).name, cfg.dead_letter_exchange,
                     f"{cfg.notification_topic}.info", f"{cfg.notification_topic}.error"):
            channel.queue_delete(name)
        for name in (cfg.control_exchange, cfg.dead_letter_exchange):
            channel.exchange_delete(name)


def test_quorum_queue_serves_and_dead_letters_rejects(
        durable_cfg: Config, domains: Callable[[int], list[str]]) -> None:
    """With durable queues a quorum host queue serves casts; rejects land in the DLX queue."""
    cfg = durable_cfg
    tap = EventTap(cfg.transport_url, cfg.control_exchange, cfg.notification_topic,
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
            while (dead := Queue(cfg.dead_letter_exchange, channel=channel).get(
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


def test_signed_messages_only(make_config: Callable[..., Config], key_file: Path,
                              domains: Callable[[int], list[str]]) -> None:
    """With require_signature, unsigned and badly signed casts are rejected; signed ones run."""
    cfg = make_config(signing_key_file=str(key_file), require_signature=True)
    key = signing.load_key(str(key_file))
    tap = EventTap(cfg.transport_url, cfg.control_exchange, cfg.notification_topic)
    service = Service(cfg, retry_sleep=lambda _s: None)
    service.start()
    try:
        (uid,) = domains(1)
        args = {"instance": {"uuid": uid}}
        _cast(cfg, "pause_instance", args)
        _cast(cfg, "pause_instance", args, headers={signing.HEADER: "00" * 32})
        body = envelope.wrap({"method": "pause_instance", "args": args, "version": "1.0",
                              "_unique_id": uuid.uuid4().hex})
        _cast(cfg, "", {}, body=body, headers={signing.HEADER: signing.sign(key, body)})
        tap.wait_type(uid, "instance.pause.end")
        rejects = tap.wait_for(lambda evs: sum(
            e["event_type"] == "rpc_message.reject.error" for e in evs) >= 2)
        faults = [e["payload"]["nova_object.data"]["fault"]["exception"] for e in rejects
                  if e["event_type"] == "rpc_message.reject.error"]
        assert ["BadSignature", "BadSignature"] == faults
        assert 2 == service.dispatcher.bad_signatures
        assert 1 == len(tap.of(uid, "instance.pause.end"))
    finally:
        service.stop(grace=5)
        tap.close()
