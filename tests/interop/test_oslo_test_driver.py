"""oslo.messaging's RPCClient and notification listener against a worker on the test driver."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import oslo_messaging
import pytest

from tests.domains import TEST_URI, has_managed_save, state_of
from tests.interop.support import (
    VERBS,
    Recorder,
    check_oslo_event,
    data,
    delete_queues,
    new_ctxt,
    notification_listener,
    rpc_client,
    rpc_transport,
)
from worker.config import Config
from worker.service import Service

pytestmark = pytest.mark.interop

MISSING = "0f0e0d0c-0b0a-4909-8807-060504030201"


def test_oslo_casts_every_verb_with_start_and_end_events(
        worker: Service, client: oslo_messaging.RPCClient, listener: Recorder, cfg: Config,
        domains: Callable[[int], list[str]]) -> None:
    """Each verb cast by oslo reaches its libvirt state, and oslo's listener gets start then end."""
    (uid,) = domains(1)
    counts: dict[str, int] = {}
    for method, extra, action, state, power, vm in VERBS:
        ctxt = new_ctxt()
        client.cast(ctxt, method, instance={"uuid": uid, "name": "vm1"}, **extra)
        counts[action] = counts.get(action, 0) + 1
        end = listener.wait_type(uid, f"instance.{action}.end", counts[action])[-1]
        assert (power, vm, action) == (data(end)["power_state"], data(end)["state"],
                                       end["event_type"].split(".")[1]), method
        assert (cfg.host, ctxt["request_id"], None) == (
            data(end)["host"], data(end)["request_id"], data(end)["fault"])
        assert state == state_of(TEST_URI, uid), method
        if action == "suspend":
            assert has_managed_save(TEST_URI, uid)
    expected = [f"instance.{verb[2]}.{phase}" for verb in VERBS for phase in ("start", "end")]
    assert expected == listener.types(uid)
    for event in listener.of(uid):
        assert ("INFO", f"nova-compute:{cfg.host}") == (event["priority"], event["publisher_id"])
        if event["event_type"] != "instance.update":
            assert "InstanceActionPayload" == event["payload"]["nova_object.name"]
        check_oslo_event(event)


def test_oslo_calls_the_two_queries(worker: Service, client: oslo_messaging.RPCClient,
                                    domains: Callable[[int], list[str]]) -> None:
    """oslo's call() returns get_instance_info and list_instances as libvirt sees them."""
    uids = domains(2)
    info = client.call(new_ctxt(), "get_instance_info", instance={"uuid": uids[0]})
    assert (uids[0], "running", "active") == (info["uuid"], info["power_state"], info["vm_state"])
    assert (64 * 1024, 1) == (info["max_mem_kb"], info["num_cpu"])
    listed = {i["uuid"]: i for i in client.call(new_ctxt(), "list_instances")}
    assert set(uids) <= set(listed)
    assert {"uuid", "name", "power_state", "vm_state"} <= set(listed[uids[1]])


def test_call_without_a_version_is_1_0_and_not_served(
        worker: Service, transport: oslo_messaging.Transport, cfg: Config,
        domains: Callable[[int], list[str]]) -> None:
    """A Target without a version sends 1.0, as oslo does; nova's API is 6.x: UnsupportedVersion."""
    (uid,) = domains(1)
    client = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic=cfg.topic, server=cfg.host))
    with pytest.raises(oslo_messaging.RemoteError) as caught:
        client.call(new_ctxt(), "get_instance_info", instance={"uuid": uid})
    assert "UnsupportedVersion" == caught.value.exc_type


def test_unknown_method_is_no_such_method(worker: Service,
                                          client: oslo_messaging.RPCClient) -> None:
    """A call of an unknown method raises oslo's RemoteError with exc_type NoSuchMethod."""
    with pytest.raises(oslo_messaging.RemoteError) as caught:
        client.call(new_ctxt(), "no_such_verb")
    assert "NoSuchMethod" == caught.value.exc_type
    assert "Endpoint does not support RPC method no_such_verb" == caught.value.value


@pytest.mark.parametrize("version", ["2.0", "1.1", "0.9"])
def test_unserved_version_is_unsupported_version(
        worker: Service, client: oslo_messaging.RPCClient, version: str,
        domains: Callable[[int], list[str]]) -> None:
    """A call at a version the worker does not serve raises RemoteError UnsupportedVersion."""
    (uid,) = domains(1)
    with pytest.raises(oslo_messaging.RemoteError) as caught:
        client.prepare(version=version).call(new_ctxt(), "get_instance_info",
                                             instance={"uuid": uid})
    assert "UnsupportedVersion" == caught.value.exc_type
    assert f"Endpoint does not support RPC version {version}" in caught.value.value


def test_dispatcher_failures_rebuild_as_oslo_exceptions(
        worker: Service, cfg: Config) -> None:
    """With oslo's dispatcher module allowed, failures rebuild as oslo's own exception classes."""
    with rpc_transport(cfg, allowed_remote_exmods=["oslo_messaging.rpc.dispatcher"]) as transport:
        client = rpc_client(transport, cfg)
        with pytest.raises(oslo_messaging.NoSuchMethod) as no_method:
            client.call(new_ctxt(), "no_such_verb")
        with pytest.raises(oslo_messaging.UnsupportedVersion) as unsupported:
            client.prepare(version="2.0").call(new_ctxt(), "list_instances")
    assert "NoSuchMethod_Remote" == type(no_method.value).__name__
    assert "UnsupportedVersion_Remote" == type(unsupported.value).__name__


def test_failing_handler_is_instance_not_found(
        worker: Service, client: oslo_messaging.RPCClient, listener: Recorder) -> None:
    """An unknown UUID fails a call with InstanceNotFound and a cast with an ERROR event."""
    with pytest.raises(oslo_messaging.RemoteError) as caught:
        client.call(new_ctxt(), "get_instance_info", instance={"uuid": MISSING})
    assert ("InstanceNotFound", f"Instance {MISSING} could not be found.") == (
        caught.value.exc_type, caught.value.value)
    client.cast(new_ctxt(), "pause_instance", instance={"uuid": MISSING})
    error = listener.wait_type(MISSING, "instance.pause.error")[0]
    listener.wait_type(MISSING, "instance.pause.start")
    assert ["instance.pause.start", "instance.pause.error"] == listener.types_as_made(MISSING)
    assert "ERROR" == error["priority"]
    fault = data(error)["fault"]["nova_object.data"]
    assert ("InstanceNotFound", f"Instance {MISSING} could not be found.", "nova.exception") == (
        fault["exception"], fault["exception_message"], fault["module_name"])
    for event in listener.of(MISSING):
        check_oslo_event(event)


def test_unservable_casts_reach_the_error_endpoint(
        worker: Service, client: oslo_messaging.RPCClient, listener: Recorder) -> None:
    """Casts with bad arguments or an unknown method come back as rpc_message.reject.error."""
    ctxt = new_ctxt()
    client.cast(ctxt, "pause_instance", instance={"uuid": "not-a-uuid"})
    client.cast(ctxt, "refresh_cache", x=1)
    bad_args = listener.wait_type("not-a-uuid", "rpc_message.reject.error")[0]
    no_method = listener.wait_type(None, "rpc_message.reject.error")[0]
    assert ("InvalidArguments", "pause_instance", ctxt["request_id"]) == (
        data(bad_args)["fault"]["exception"], data(bad_args)["method"],
        data(bad_args)["request_id"])
    assert ("NoSuchMethod", "refresh_cache") == (data(no_method)["fault"]["exception"],
                                                 data(no_method)["method"])
    for event in (bad_args, no_method):
        assert ("ERROR", "RpcRejectPayload") == (event["priority"],
                                                 event["payload"]["nova_object.name"])
        check_oslo_event(event)


def test_events_published_before_the_listener_are_kept(
        worker: Service, client: oslo_messaging.RPCClient, cfg: Config,
        domains: Callable[[int], list[str]]) -> None:
    """Events sent before oslo's listener exists wait in the pre-declared queue for it."""
    (uid,) = domains(1)
    client.cast(new_ctxt(), "pause_instance", instance={"uuid": uid})
    # Same instance: this call runs after the pause has finished and its events are confirmed.
    assert "paused" == client.call(new_ctxt(), "get_instance_info",
                                   instance={"uuid": uid})["power_state"]
    recorder = Recorder()
    with notification_listener(cfg, recorder):
        recorder.wait_type(uid, "instance.pause.end")
        status = recorder.wait_type(None, "service.update")[0]  # heartbeats may follow
    assert ["instance.pause.start", "instance.pause.end"] == recorder.types(uid)
    assert (cfg.host, False) == (data(status)["host"], data(status)["disabled"])
    for event in recorder.events:
        check_oslo_event(event)


def test_listener_declaring_first_matches_the_worker(
        start_worker: Callable[..., Service], cfg: Config,
        domains: Callable[[int], list[str]]) -> None:
    """oslo's listener declares the event queues before the worker does; no 406, events flow."""
    (uid,) = domains(1)
    recorder = Recorder()
    with notification_listener(cfg, recorder), rpc_transport(cfg) as transport:
        start_worker(cfg)
        rpc_client(transport, cfg).cast(new_ctxt(), "pause_instance", instance={"uuid": uid})
        recorder.wait_type(uid, "instance.pause.end")
        recorder.wait_type(None, "service.update")
    assert ["instance.pause.start", "instance.pause.end"] == recorder.types(uid)
    assert libvirt.VIR_DOMAIN_PAUSED == state_of(TEST_URI, uid)


def test_durable_deployment_matches_oslo_flags(
        start_worker: Callable[..., Service], make_config: Callable[..., Config],
        domains: Callable[[int], list[str]]) -> None:
    """With amqp_durable_queues on both sides, oslo and the worker declare alike (no 406)."""
    (uid,) = domains(1)
    durable = make_config(amqp_durable_queues=True)
    recorder = Recorder()
    with notification_listener(durable, recorder, amqp_durable_queues=True), \
            rpc_transport(durable, amqp_durable_queues=True) as transport:
        start_worker(durable)
        client = rpc_client(transport, durable)
        client.cast(new_ctxt(), "pause_instance", instance={"uuid": uid})
        recorder.wait_type(uid, "instance.pause.end")
        info = client.call(new_ctxt(), "get_instance_info", instance={"uuid": uid})
    assert "paused" == info["power_state"]
    assert ["instance.pause.start", "instance.pause.end"] == recorder.types(uid)


def _queue_arguments(name: str) -> dict[str, Any]:
    """The x-arguments RabbitMQ holds for a queue of the system broker."""
    done = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "arguments",
                           "--formatter", "json"], capture_output=True, text=True, timeout=60,
                          check=True)
    rows = {row["name"]: row["arguments"] for row in json.loads(done.stdout or "[]")}
    assert name in rows, f"no queue {name}"
    # rabbitmqctl renders an argument table as {name: value} or as [[name, type, value]].
    found = rows[name]
    return dict(found) if isinstance(found, dict) else {row[0]: row[-1] for row in found}


def test_quorum_deployment_matches_oslo_flags(
        start_worker: Callable[..., Service], make_config: Callable[..., Config],
        domains: Callable[[int], list[str]]) -> None:
    """rabbit_quorum_queue and a delivery limit on both sides: the worker takes over the host
    queue nova-compute's oslo server declared, and shares the exchange and the event queues
    with oslo's notification listener, all without a 406; the queues are quorum ones."""
    (uid,) = domains(1)
    rabbit = {"rabbit_quorum_queue": True, "rabbit_quorum_delivery_limit": 5}
    quorum = make_config(**rabbit)
    recorder = Recorder()
    with notification_listener(quorum, recorder, **rabbit), \
            rpc_transport(quorum, **rabbit) as transport:
        # nova-compute on this host before: its server declared compute.<host> as oslo does.
        server = oslo_messaging.get_rpc_server(
            transport, oslo_messaging.Target(topic=quorum.topic, server=quorum.host), [])
        server.start()
        server.stop()
        server.wait()
        start_worker(quorum)
        client = rpc_client(transport, quorum)
        client.cast(new_ctxt(), "pause_instance", instance={"uuid": uid})
        recorder.wait_type(uid, "instance.pause.end")
    assert ["instance.pause.start", "instance.pause.end"] == recorder.types(uid)
    expected = {"x-queue-type": "quorum", "x-delivery-limit": 5}
    assert expected == _queue_arguments(f"{quorum.topic}.{quorum.host}")
    assert expected == _queue_arguments(f"{quorum.notifications.notification_topic}.info")


def test_fanout_cast_reaches_the_worker(
        start_worker: Callable[..., Service], make_config: Callable[..., Config],
        domains: Callable[[int], list[str]]) -> None:
    """An oslo fanout cast (Target(fanout=True)) on a private topic is served by the worker."""
    (uid,) = domains(1)
    private = make_config(topic=f"compute_{uuid.uuid4().hex[:10]}")
    recorder = Recorder()
    start_worker(private)
    with notification_listener(private, recorder), rpc_transport(private) as transport:
        target = oslo_messaging.Target(topic=private.topic, fanout=True, version="6.0")
        oslo_messaging.get_rpc_client(transport, target).cast(
            new_ctxt(), "pause_instance", instance={"uuid": uid})
        recorder.wait_type(uid, "instance.pause.end")
    assert libvirt.VIR_DOMAIN_PAUSED == state_of(TEST_URI, uid)


def test_call_with_bad_arguments_is_answered(worker: Service, client: oslo_messaging.RPCClient,
                                             domains: Callable[[int], list[str]]) -> None:
    """A call whose arguments fail the schema gets RemoteError InvalidArguments, not a timeout."""
    (uid,) = domains(1)
    with pytest.raises(oslo_messaging.RemoteError) as caught:
        client.prepare(timeout=10).call(new_ctxt(), "stop_instance", instance={"uuid": uid},
                                        clean_shutdown="yes")
    assert "InvalidArguments" == caught.value.exc_type
    assert libvirt.VIR_DOMAIN_RUNNING == state_of(TEST_URI, uid)


class _Echo:
    """An oslo RPC endpoint standing in for another service on the same topic."""

    target = oslo_messaging.Target(version="1.0")

    def echo(self, ctxt: object, value: int) -> dict[str, int]:
        """Return what it was given."""
        return {"echo": value}


def test_worker_shares_exchange_and_queues_with_an_oslo_server(
        start_worker: Callable[..., Service], make_config: Callable[..., Config],
        domains: Callable[[int], list[str]]) -> None:
    """An oslo RPC server declares the shared names first; the worker's declares agree with it."""
    (uid,) = domains(1)
    shared = make_config(topic=f"compute_{uuid.uuid4().hex[:10]}", shared_queue=True)
    with rpc_transport(shared) as transport:
        server = oslo_messaging.get_rpc_server(
            transport, oslo_messaging.Target(topic=shared.topic, server=f"oslo-{shared.host}"),
            [_Echo()])
        server.start()
        try:
            start_worker(shared)
            to_oslo = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(
                topic=shared.topic, server=f"oslo-{shared.host}", version="1.0"))
            assert {"echo": 7} == to_oslo.call(new_ctxt(), "echo", value=7)
            info = rpc_client(transport, shared).call(new_ctxt(), "get_instance_info",
                                                      instance={"uuid": uid})
        finally:
            server.stop()
            server.wait()
            delete_queues(shared, f"{shared.topic}.oslo-{shared.host}")
    assert (uid, "running") == (info["uuid"], info["power_state"])


class _ComputeStandIn:
    """The worker's two queries as an oslo endpoint at the worker's version (nova's 6.5)."""

    target = oslo_messaging.Target(version="6.5")

    def get_instance_info(self, ctxt: object, instance: dict[str, str]) -> dict[str, str]:
        """Echo the uuid."""
        return {"uuid": instance["uuid"]}

    def list_instances(self, ctxt: object) -> list[dict[str, str]]:
        """Nothing here."""
        return []


#: (method, version, namespace) of calls at the edges of what an endpoint serves.
PROBES = [
    ("no_such_verb", "6.0", None),
    ("list_instances", "7.0", None),
    ("list_instances", "6.6", None),
    ("no_such_verb", "7.0", None),
    ("list_instances", "6.0", "baremetal"),
    ("list_instances", "6.5.0", None),
    ("list_instances", "1.0", None),
]


def _failure_class(transport: oslo_messaging.Transport, topic: str, server: str, method: str,
                   version: str, namespace: str | None) -> str:
    target = oslo_messaging.Target(topic=topic, server=server, version=version,
                                   namespace=namespace)
    try:
        oslo_messaging.get_rpc_client(transport, target, timeout=10).call(new_ctxt(), method)
    except oslo_messaging.RemoteError as exc:
        return f"{exc.exc_type}: {exc.value}"
    return "served"


def test_failure_classes_match_an_oslo_server(
        start_worker: Callable[..., Service], make_config: Callable[..., Config]) -> None:
    """At the edges of versions and namespaces the worker answers what oslo's own server answers."""
    # A private topic: the oslo server also declares the shared queue <topic>, a global name.
    cfg = make_config(topic=f"compute_{uuid.uuid4().hex[:10]}")
    start_worker(cfg)
    with rpc_transport(cfg) as transport:
        server = oslo_messaging.get_rpc_server(
            transport, oslo_messaging.Target(topic=cfg.topic, server=f"oslo-{cfg.host}"),
            [_ComputeStandIn()])
        server.start()
        try:
            oslo = {p: _failure_class(transport, cfg.topic, f"oslo-{cfg.host}", *p)
                    for p in PROBES}
            ours = {p: _failure_class(transport, cfg.topic, cfg.host, *p) for p in PROBES}
        finally:
            server.stop()
            server.wait()
            delete_queues(cfg, cfg.topic, f"{cfg.topic}.oslo-{cfg.host}")
    assert oslo == ours


def test_fanout_cast_events_from_two_hosts_have_distinct_message_ids(
        start_worker: Callable[..., Service], make_config: Callable[..., Config],
        tmp_path: Path) -> None:
    """A fanout cast served by two hosts yields four events with four message_ids, as oslo gives."""
    first = make_config(topic=f"compute_{uuid.uuid4().hex[:10]}")
    second = make_config(topic=first.topic, host=f"{first.host}-b",
                         state_dir=str(tmp_path / "state-b"),
                         instances_path=str(tmp_path / "instances-b"))
    recorder = Recorder()
    start_worker(first)
    start_worker(second)
    with notification_listener(first, recorder), rpc_transport(first) as transport:
        target = oslo_messaging.Target(topic=first.topic, fanout=True, version="6.0")
        # An instance neither host has: each answers with its own start and error events.
        oslo_messaging.get_rpc_client(transport, target).cast(
            new_ctxt(), "pause_instance", instance={"uuid": MISSING})
        errors = recorder.wait_type(MISSING, "instance.pause.error", count=2)
    assert {first.host, second.host} == {data(e)["host"] for e in errors}
    events = [e for e in recorder.of(MISSING) if e["event_type"] != "instance.update"]
    assert 4 == len({e["metadata"]["message_id"] for e in events}), [
        (data(e)["host"], e["event_type"], e["metadata"]["message_id"]) for e in events]
