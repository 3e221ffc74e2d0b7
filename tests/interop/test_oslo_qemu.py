"""The issue's acceptance: oslo.messaging drives a worker on qemu:///system with exchange nova."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
import oslo_messaging
import pytest

from tests.domains import QEMU_URI, has_managed_save, state_of
from tests.helpers import wire_samples
from tests.interop.support import (
    VERBS,
    RawQueue,
    Recorder,
    check_oslo_event,
    data,
    new_ctxt,
    publish_raw,
)
from worker.amqp.topology import control_exchange
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.interop

@pytest.fixture
def cfg(make_config: Callable[..., Config]) -> Config:
    """A qemu:///system worker on the real exchange name ``nova``, with short guest timeouts."""
    return make_config(virt_type="qemu", soft_reboot_timeout=2, shutdown_timeout=2,
                       control_exchange="nova")


def test_oslo_casts_every_verb_and_calls_both_queries_on_qemu(
        worker: Service, client: oslo_messaging.RPCClient, listener: Recorder, cfg: Config,
        qemu_domains: Callable[[int], list[str]]) -> None:
    """Every verb cast by oslo reaches its libvirt state with start and end events."""
    assert ("nova", QEMU_URI) == (cfg.control_exchange, worker.cfg.libvirt_uri)
    (uid,) = qemu_domains(1)
    info = client.call(new_ctxt(), "get_instance_info", instance={"uuid": uid})
    assert (uid, "running", 64 * 1024, 1) == (info["uuid"], info["power_state"],
                                              info["max_mem_kb"], info["num_cpu"])
    assert uid in {i["uuid"] for i in client.call(new_ctxt(), "list_instances")}
    counts: dict[str, int] = {}
    for method, extra, action, state, power, vm in VERBS:
        ctxt = new_ctxt()
        client.cast(ctxt, method, instance={"uuid": uid}, **extra)
        counts[action] = counts.get(action, 0) + 1
        end = listener.wait_type(uid, f"instance.{action}.end", counts[action], timeout=30)[-1]
        assert (power, vm, ctxt["request_id"], None) == (
            data(end)["power_state"], data(end)["state"], data(end)["request_id"],
            data(end)["fault"]), method
        assert state == state_of(QEMU_URI, uid), method
        if action in ("suspend", "resume"):
            assert (action == "suspend") == has_managed_save(QEMU_URI, uid)
    expected = [f"instance.{verb[2]}.{phase}" for verb in VERBS for phase in ("start", "end")]
    assert expected == listener.types(uid)
    assert uid not in {i["uuid"] for i in client.call(new_ctxt(), "list_instances")}
    for event in listener.of(uid):
        check_oslo_event(event)


def test_call_outlasting_call_monitor_timeout_succeeds(
        worker: Service, client: oslo_messaging.RPCClient, listener: Recorder,
        qemu_domains: Callable[[int], list[str]]) -> None:
    """A 2 s clean stop called with call_monitor_timeout=1 returns: heartbeats keep it alive."""
    (uid,) = qemu_domains(1)
    began = time.monotonic()
    result = client.prepare(timeout=30, call_monitor_timeout=1).call(
        new_ctxt(), "stop_instance", instance={"uuid": uid}, clean_shutdown=True, timeout=2)
    took = time.monotonic() - began
    assert ("shutdown", "stopped") == (result["power_state"], result["vm_state"])
    assert took >= 2, took
    assert libvirt.VIR_DOMAIN_SHUTOFF == state_of(QEMU_URI, uid)
    listener.wait_type(uid, "instance.power_off.end")
    assert ["instance.power_off.start", "instance.power_off.end"] == listener.types(uid)


@pytest.fixture
def replies(cfg: Config) -> Iterator[RawQueue]:
    """A reply queue named as oslo's are, on the default exchange."""
    queue = RawQueue(cfg.transport_url, name=f"reply_{uuid.uuid4().hex}")
    yield queue
    queue.close()


def test_captured_monitored_call_gets_oslo_shaped_heartbeats(
        worker: Service, replies: RawQueue, cfg: Config,
        qemu_domains: Callable[[int], list[str]]) -> None:
    """The captured monitored call gets ending=false heartbeats, then the result, as oslo's."""
    (uid,) = qemu_domains(1)
    sample = wire_samples()["call_monitor_heartbeats"]
    inner: dict[str, Any] = json.loads(sample["request"]["body"]["oslo.message"])
    inner.update(method="stop_instance", args={"instance": {"uuid": uid}, "timeout": 3},
                 _reply_q=replies.name, version="6.0")  # oslo's sample: 1.0; ours: nova's 6.x
    body = {"oslo.version": "2.0", "oslo.message": json.dumps(inner)}
    began = time.monotonic()
    publish_raw(cfg, body, control_exchange(cfg), f"{cfg.topic}.{cfg.host}")
    messages = replies.wait(lambda got: any(json.loads(json.loads(m.body)["oslo.message"])
                                            ["ending"] for m in got), timeout=30)
    took = time.monotonic() - began
    got = [json.loads(json.loads(m.body)["oslo.message"]) for m in messages]
    oslo = [json.loads(r["body"]["oslo.message"]) for r in sample["replies"]]
    assert [False] * (len(got) - 1) + [True] == [r["ending"] for r in got]
    # One every _timeout/2 = 1 s while the verb ran (3 s of waiting, then a KVM destroy).
    assert 2 <= len(got) - 1 <= took + 1, (took, got)
    for reply, message in zip(got[:-1], messages[:-1], strict=True):
        assert {k: v for k, v in oslo[0].items() if k != "_unique_id"} == {
            k: v for k, v in reply.items() if k != "_unique_id"}
        assert sample["replies"][0]["properties"] == {
            "content_type": message.content_type, "content_encoding": message.content_encoding,
            "delivery_mode": message.properties["delivery_mode"]}
    assert set(oslo[-1]) == set(got[-1])
    assert (inner["_msg_id"], None, "shutdown") == (got[-1]["_msg_id"], got[-1]["failure"],
                                                    got[-1]["result"]["power_state"])
    assert len({r["_unique_id"] for r in got}) == len(got)


def test_call_queued_behind_a_slow_verb_outlasts_call_monitor_timeout(
        worker: Service, client: oslo_messaging.RPCClient, listener: Recorder,
        qemu_domains: Callable[[int], list[str]]) -> None:
    """A monitored call queued behind a slow cast on its instance still returns, as with oslo.

    The call is a verb (start_instance): queries no longer wait in the instance's line.
    """
    (uid,) = qemu_domains(1)
    client.cast(new_ctxt(), "stop_instance", instance={"uuid": uid}, clean_shutdown=True, timeout=2)
    listener.wait_type(uid, "instance.power_off.start")
    began = time.monotonic()
    result = client.prepare(timeout=30, call_monitor_timeout=1).call(
        new_ctxt(), "start_instance", instance={"uuid": uid})
    assert ("running", "active") == (result["power_state"], result["vm_state"])
    assert time.monotonic() - began > 1.0  # it did wait behind the 2 s clean stop
    listener.wait_type(uid, "instance.power_on.end")
    assert ["instance.power_off.start", "instance.power_off.end", "instance.power_on.start",
            "instance.power_on.end"] == listener.types(uid)


def test_a_query_answers_while_a_slow_verb_runs_on_its_instance(
        worker: Service, client: oslo_messaging.RPCClient, listener: Recorder,
        qemu_domains: Callable[[int], list[str]]) -> None:
    """get_instance_info is not ordered: it answers during a 2 s clean stop, not after it."""
    (uid,) = qemu_domains(1)
    client.cast(new_ctxt(), "stop_instance", instance={"uuid": uid}, clean_shutdown=True,
                timeout=2)
    listener.wait_type(uid, "instance.power_off.start")
    began = time.monotonic()
    info = client.prepare(timeout=10).call(new_ctxt(), "get_instance_info",
                                           instance={"uuid": uid})
    took = time.monotonic() - began

    assert ("running", "active") == (info["power_state"], info["vm_state"])
    assert took < 1.0, took
    assert [] == listener.of(uid, "instance.power_off.end")  # the stop is still running
    listener.wait_type(uid, "instance.power_off.end")
