"""oslo.messaging and raw-AMQP tools for the interop tier (the fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import copy
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fastjsonschema
import libvirt
import oslo_messaging
from kombu import Connection, Exchange, Message, Queue
from oslo_config import cfg as oslo_cfg
from oslo_messaging import opts as oslo_opts
from oslo_messaging._metrics import client as oslo_metrics
from oslo_messaging._tracing import client as oslo_tracing

from tests.taps import Gathered
from worker.config import Config
from worker.core import schemas

#: What oslo's notification dispatcher hands an endpoint, plus the priority it called.
OsloEvent = dict[str, Any]

#: (method, extra kwargs, nova action, libvirt state after, wire power_state, vm_state)
VERBS = [
    ("pause_instance", {}, "pause", libvirt.VIR_DOMAIN_PAUSED, "paused", "paused"),
    ("unpause_instance", {}, "unpause", libvirt.VIR_DOMAIN_RUNNING, "running", "active"),
    ("suspend_instance", {}, "suspend", libvirt.VIR_DOMAIN_SHUTOFF, "shutdown", "suspended"),
    ("resume_instance", {}, "resume", libvirt.VIR_DOMAIN_RUNNING, "running", "active"),
    ("reboot_instance", {"reboot_type": "HARD"}, "reboot", libvirt.VIR_DOMAIN_RUNNING,
     "running", "active"),
    # On QEMU no OS answers ACPI: SOFT waits soft_reboot_timeout, then reboots hard.
    ("reboot_instance", {"reboot_type": "SOFT"}, "reboot", libvirt.VIR_DOMAIN_RUNNING,
     "running", "active"),
    # Likewise a clean stop waits shutdown_timeout, then powers off.
    ("stop_instance", {}, "power_off", libvirt.VIR_DOMAIN_SHUTOFF, "shutdown", "stopped"),
    ("start_instance", {}, "power_on", libvirt.VIR_DOMAIN_RUNNING, "running", "active"),
    ("terminate_instance", {}, "delete", None, None, "deleted"),
]


def new_ctxt() -> dict[str, str]:
    """A request context as nova's scheduler passes it, with a fresh request_id."""
    return {"request_id": f"req-{uuid.uuid4()}", "user_id": "u1", "project_id": "p1"}


# --- oslo.config / oslo.messaging -----------------------------------------------------


def oslo_conf(cfg: Config, **rabbit: Any) -> oslo_cfg.ConfigOpts:
    """A private ConfigOpts (never the global CONF) with oslo's options and cfg's exchange."""
    conf = oslo_cfg.ConfigOpts()
    conf([], project="interop", default_config_files=[], default_config_dirs=[])
    for group, opts in oslo_opts.list_opts():
        conf.register_opts(opts, group=group)
    # oslo.messaging 18.x registers these two groups on the global CONF only, yet
    # reads them from the conf it is given (as its own ConfFixture works around).
    conf.register_opts(oslo_metrics.oslo_messaging_metrics, group="oslo_messaging_metrics")
    conf.register_opts(oslo_tracing.oslo_messaging_tracing, group="oslo_messaging_tracing")
    conf.set_override("control_exchange", cfg.control_exchange)
    conf.set_override("rpc_response_timeout", 20)  # a lost reply fails fast, not after 60 s
    for name, value in rabbit.items():
        conf.set_override(name, value, group="oslo_messaging_rabbit")
    return conf


def oslo_url(cfg: Config) -> str:
    """cfg's kombu URL as oslo spells it: the ``rabbit`` driver, vhost ``/`` as an empty path."""
    scheme, rest = cfg.transport_url.split("://", 1)
    assert scheme in ("amqp", "amqps", "pyamqp"), cfg.transport_url
    return "rabbit://" + (rest[:-1] if rest.endswith("//") else rest)


@contextlib.contextmanager
def rpc_transport(cfg: Config, allowed_remote_exmods: list[str] | None = None,
                  **rabbit: Any) -> Iterator[oslo_messaging.Transport]:
    """An oslo RPC transport on cfg's broker, cleaned up on exit."""
    transport = oslo_messaging.get_rpc_transport(oslo_conf(cfg, **rabbit), url=oslo_url(cfg),
                                                 allowed_remote_exmods=allowed_remote_exmods)
    try:
        yield transport
    finally:
        transport.cleanup()


def rpc_client(transport: oslo_messaging.Transport, cfg: Config,
               version: str = "6.0") -> oslo_messaging.RPCClient:
    """An oslo RPCClient aimed at cfg's host, as nova's scheduler builds one."""
    target = oslo_messaging.Target(topic=cfg.topic, server=cfg.host, version=version)
    return oslo_messaging.get_rpc_client(transport, target)


class Recorder(Gathered[OsloEvent]):
    """A notification endpoint keeping every event oslo hands it, in dispatch order."""

    @property
    def events(self) -> list[OsloEvent]:
        """Every event so far (the live list)."""
        return self.items

    def _add(self, priority: str, ctxt: Any, publisher_id: str, event_type: str,
             payload: Any, metadata: dict[str, Any]) -> None:
        self.add({"priority": priority, "ctxt": ctxt, "publisher_id": publisher_id,
                  "event_type": event_type, "payload": payload, "metadata": metadata})

    def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any,
             metadata: dict[str, Any]) -> None:
        """oslo calls this for priority INFO."""
        self._add("INFO", ctxt, publisher_id, event_type, payload, metadata)

    def error(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any,
              metadata: dict[str, Any]) -> None:
        """oslo calls this for priority ERROR."""
        self._add("ERROR", ctxt, publisher_id, event_type, payload, metadata)

    def of(self, uid: str | None, event_type: str | None = None) -> list[OsloEvent]:
        """Events about one instance (None: events without an instance), optionally of a type."""
        return [e for e in self.snapshot()
                if _about(e) == uid and (event_type is None or e["event_type"] == event_type)]

    def types(self, uid: str | None) -> list[str]:
        """event_type of each verb's event about one instance, in order.

        ``instance.update`` (a state change the worker noticed on its own, e.g. at its
        first sync) may come at any time and is left out here.
        """
        return [e["event_type"] for e in self.of(uid) if e["event_type"] != "instance.update"]

    def types_as_made(self, uid: str | None) -> list[str]:
        """Like types(), but in the order the worker made them (oslo's metadata timestamp).

        INFO and ERROR events travel on different queues, so the order oslo hands them
        over between the two is the broker's, not the worker's.
        """
        made = sorted(self.of(uid), key=lambda e: str(e["metadata"]["timestamp"]))
        return [e["event_type"] for e in made if e["event_type"] != "instance.update"]

    def wait_type(self, uid: str | None, event_type: str, count: int = 1,
                  timeout: float = 20.0) -> list[OsloEvent]:
        """Wait until count events of event_type about uid arrived; AssertionError if not."""
        if self.until(lambda _: len(self.of(uid, event_type)) >= count, timeout) is None:
            seen = [(e["event_type"], data(e).get("uuid")) for e in self.snapshot()]
            raise AssertionError(f"no {count}x {event_type} for {uid}; saw {seen}")
        return self.of(uid, event_type)


def _about(event: OsloEvent) -> Any:
    """The instance an event is about; None for service.update (its uuid is the service's)."""
    if str(event.get("event_type", "")).startswith("service."):
        return None
    return data(event).get("uuid", data(event).get("instance_uuid"))


def data(event: OsloEvent) -> dict[str, Any]:
    """nova_object.data of an event's payload."""
    payload = event["payload"]
    return payload.get("nova_object.data", {}) if isinstance(payload, dict) else {}


@contextlib.contextmanager
def notification_listener(cfg: Config, recorder: Recorder,
                          **rabbit: Any) -> Iterator[oslo_messaging.notify.NotificationServer]:
    """oslo's notification listener on cfg's topic and exchange, stopped cleanly on exit."""
    transport = oslo_messaging.get_notification_transport(oslo_conf(cfg, **rabbit),
                                                          url=oslo_url(cfg))
    target = oslo_messaging.Target(topic=cfg.notifications.notification_topic,
                                   exchange=cfg.control_exchange)
    listener = oslo_messaging.get_notification_listener(transport, [target], [recorder],
                                                        executor="threading")
    try:
        # One dispatch thread: events reach the endpoint in the order they were queued.
        listener.start(override_pool_size=1)
        yield listener
    finally:
        listener.stop()
        listener.wait()
        transport.cleanup()


# The inner message as a notification listener would rebuild it. oslo's driver pops
# ``_unique_id`` (its duplicate filter) before the endpoint sees the message, so that
# key is checked on the raw wire in test_wire_samples.py instead.
_OSLO_VISIBLE = copy.deepcopy(schemas.raw("events", "notification"))
_OSLO_VISIBLE["required"].remove("_unique_id")
_check_oslo_visible = fastjsonschema.compile(_OSLO_VISIBLE)


def check_oslo_event(event: OsloEvent) -> None:
    """Rebuild the inner message from what oslo delivered and validate it and its payload."""
    message = {
        "message_id": event["metadata"]["message_id"],
        "publisher_id": event["publisher_id"],
        "event_type": event["event_type"],
        "priority": event["priority"],
        "timestamp": event["metadata"]["timestamp"],
        "payload": event["payload"],
    }
    _check_oslo_visible(message)
    schemas.validator("events", event["payload"]["nova_object.name"])(data(event))


# --- raw AMQP, for feeding captured oslo bodies and reading the worker's own bytes ----


class RawQueue:
    """A private queue on the broker (bound to an exchange or not) and what arrived on it."""

    def __init__(self, url: str, name: str | None = None, exchange: Exchange | None = None,
                 routing_key: str | None = None) -> None:
        self.name = name or f"raw_{uuid.uuid4().hex}"
        self._conn = Connection(url, connect_timeout=5)
        self._channel = self._conn.channel()
        self._queue = Queue(self.name, exchange, routing_key=routing_key, exclusive=True,
                            auto_delete=True)(self._channel)
        self._queue.declare()
        self.messages: list[Message] = []

    def wait(self, predicate: Callable[[list[Message]], bool],
             timeout: float = 20.0) -> list[Message]:
        """Poll until predicate(messages) holds; AssertionError with what arrived if not."""
        deadline = time.monotonic() + timeout
        while not predicate(self.messages):
            if time.monotonic() > deadline:
                got = [m.body for m in self.messages]
                raise AssertionError(f"timed out on {self.name}; got {got}")
            message = self._queue.get(no_ack=True)
            if message is None:
                time.sleep(0.02)
            else:
                self.messages.append(message)
        return list(self.messages)

    def close(self) -> None:
        """Drop the queue and the connection."""
        self._conn.release()


def publish_raw(cfg: Config, body: dict[str, Any], exchange: Exchange, routing_key: str) -> None:
    """Publish one body, serialized as oslo does, with oslo's message properties."""
    with Connection(cfg.transport_url, connect_timeout=5) as conn:
        conn.Producer().publish(json.dumps(body), exchange=exchange, routing_key=routing_key,
                                content_type="application/json", content_encoding="utf-8",
                                delivery_mode=2, declare=[exchange])


def delete_queues(cfg: Config, *names: str) -> None:
    """Delete queues by name (those an oslo server of a test declared)."""
    with Connection(cfg.transport_url, connect_timeout=5) as conn:
        channel = conn.channel()
        for name in names:
            Queue(name, channel=channel).delete()
