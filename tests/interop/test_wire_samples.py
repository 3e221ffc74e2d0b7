"""The bodies oslo.messaging really put on the wire (wire-samples.json), fed raw to the worker."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
import pytest
from kombu import Message

from tests.domains import TEST_URI, state_of
from tests.helpers import check_event, wire_samples
from tests.interop.support import RawQueue, publish_raw
from worker.amqp.topology import control_exchange, fanout_exchange
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.interop

SAMPLES = wire_samples()
HEX32 = re.compile(r"[0-9a-f]{32}\Z")


def _inner(body: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(body["oslo.message"])
    return loaded


def _body(inner: dict[str, Any]) -> dict[str, Any]:
    return {"oslo.version": "2.0", "oslo.message": json.dumps(inner)}


def _unwrap(message: Message) -> tuple[dict[str, Any], dict[str, Any]]:
    """(outer envelope, inner message) of a message the worker sent."""
    outer: dict[str, Any] = json.loads(message.body)
    return outer, _inner(outer)


@pytest.fixture
def events(cfg: Config, worker: Service) -> Iterator[RawQueue]:
    """Every event the worker publishes, as raw AMQP messages."""
    queue = RawQueue(cfg.transport_url, exchange=control_exchange(cfg),
                     routing_key=f"{cfg.notifications.notification_topic}.*")
    yield queue
    queue.close()


@pytest.fixture
def replies(cfg: Config) -> Iterator[RawQueue]:
    """A reply queue as oslo's caller has one: on the default exchange, named reply_<hex>."""
    queue = RawQueue(cfg.transport_url, name=f"reply_{uuid.uuid4().hex}")
    yield queue
    queue.close()


Pair = tuple[dict[str, Any], dict[str, Any]]


def _events_about(queue: RawQueue, uid: str, count: int) -> list[Pair]:
    def about(messages: list[Message]) -> list[Pair]:
        return [(o, i) for o, i in map(_unwrap, messages)
                if i["payload"]["nova_object.data"].get("uuid") == uid
                and i["event_type"] != "instance.update"]

    queue.wait(lambda messages: len(about(messages)) >= count)
    return about(queue.messages)


def test_captured_cast_is_served(worker: Service, events: RawQueue, cfg: Config,
                                 domains: Callable[[int], list[str]]) -> None:
    """The captured cast body pauses the domain, and its events have oslo's notification shape."""
    (uid,) = domains(1)
    sample = SAMPLES["cast"]
    inner = _inner(sample["body"])
    inner["args"]["instance"]["uuid"] = uid
    inner["version"] = "6.0"  # oslo's sample was sent at 1.0; the worker serves nova's 6.x
    publish_raw(cfg, _body(inner), control_exchange(cfg), f"{cfg.topic}.{cfg.host}")
    start, end = _events_about(events, uid, 2)
    assert libvirt.VIR_DOMAIN_PAUSED == state_of(TEST_URI, uid)
    assert (["instance.pause.start", "instance.pause.end"]
            == [start[1]["event_type"], end[1]["event_type"]])
    oslo_outer, oslo_event = (SAMPLES["notification"]["body"],
                              _inner(SAMPLES["notification"]["body"]))
    for outer, event in (start, end):
        assert set(oslo_outer) == set(outer)
        assert oslo_outer["oslo.version"] == outer["oslo.version"]
        assert set(oslo_event) == set(event)
        assert set(oslo_event["payload"]) == set(event["payload"])
        assert ("INFO", "req-123") == (event["priority"],
                                       event["payload"]["nova_object.data"]["request_id"])
        assert len(oslo_event["timestamp"]) == len(event["timestamp"])
        assert HEX32.match(event["_unique_id"])
        check_event(event)
    assert {"uuid": uid, "power_state": "paused"}.items() <= end[1]["payload"][
        "nova_object.data"].items()
    message = events.messages[-1]
    assert ("application/json", "utf-8", 2) == (message.content_type, message.content_encoding,
                                                message.properties["delivery_mode"])


@pytest.mark.parametrize("name", ["call_ok", "call_failure", "call_no_such_method"])
def test_captured_call_gets_oslo_shaped_reply(
        worker: Service, replies: RawQueue, cfg: Config, name: str,
        domains: Callable[[int], list[str]]) -> None:
    """A captured call body gets one reply shaped exactly like oslo's server's reply to it."""
    (uid,) = domains(1)
    sample = SAMPLES[name]
    inner = _inner(sample["request"]["body"])
    inner["_reply_q"] = replies.name
    inner["version"] = "6.0"  # oslo's sample was sent at 1.0; the worker serves nova's 6.x
    if name == "call_ok":
        inner["args"]["instance"]["uuid"] = uid
    publish_raw(cfg, _body(inner), control_exchange(cfg), f"{cfg.topic}.{cfg.host}")
    (message,) = replies.wait(lambda messages: len(messages) >= 1)
    (oslo_reply,) = sample["replies"]
    outer, reply = _unwrap(message)
    oslo_inner = _inner(oslo_reply["body"])
    assert ("", replies.name) == (message.delivery_info["exchange"],
                                  message.delivery_info["routing_key"])
    assert oslo_reply["properties"] == {"content_type": message.content_type,
                                        "content_encoding": message.content_encoding,
                                        "delivery_mode": message.properties["delivery_mode"]}
    assert set(oslo_reply["body"]) == set(outer)
    assert "2.0" == outer["oslo.version"]
    assert set(oslo_inner) == set(reply)
    assert (inner["_msg_id"], True) == (reply["_msg_id"], reply["ending"])
    assert HEX32.match(reply["_unique_id"]) and reply["_unique_id"] != inner["_unique_id"]
    if oslo_inner["failure"] is None:
        assert None is reply["failure"]
        assert set(oslo_inner["result"]) <= set(reply["result"])
        assert (uid, "running") == (reply["result"]["uuid"], reply["result"]["power_state"])
    else:
        assert None is reply["result"]
        oslo_failure, failure = json.loads(oslo_inner["failure"]), json.loads(reply["failure"])
        # The sample's InstanceNotFound came from a stand-in server module; the rest must agree.
        if oslo_failure["class"] == "InstanceNotFound":
            # Ours is nova's own (module nova.exception, nova's wording): nova's client
            # rebuilds nova's exception from it.
            missing = oslo_failure["message"]
            assert ("nova.exception", f"Instance {missing} could not be found.") == (
                failure["module"], failure["message"])
            for key in ("module", "message", "args"):
                oslo_failure.pop(key), failure.pop(key)
        assert oslo_failure == failure


def test_captured_fanout_cast_is_consumed_and_answered_with_a_reject_event(
        start_worker: Callable[..., Service], make_config: Callable[..., Config]) -> None:
    """The captured fanout cast (an unknown method) is consumed and answered with a reject event."""
    private = make_config(topic=f"compute_{uuid.uuid4().hex[:10]}")
    start_worker(private)
    queue = RawQueue(private.transport_url, exchange=control_exchange(private),
                     routing_key=f"{private.notifications.notification_topic}.error")
    try:
        body = SAMPLES["fanout_cast"]["body"]
        publish_raw(private, body, fanout_exchange(private), "")
        (message,) = queue.wait(lambda messages: len(messages) >= 1)
    finally:
        queue.close()
    event = _unwrap(message)[1]
    sent = _inner(body)
    data = event["payload"]["nova_object.data"]
    assert ("rpc_message.reject.error", "ERROR") == (event["event_type"], event["priority"])
    # Sent at version 6.0, which this API (nova's 6.5) serves: a method it does not have.
    assert ("refresh_cache", sent["_unique_id"], "req-123", "NoSuchMethod") == (
        data["method"], data["unique_id"], data["request_id"], data["fault"]["exception"])
    check_event(event)

