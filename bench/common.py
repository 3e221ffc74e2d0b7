"""Shared bench tools: broker names, an event counter, domains on the test driver, results."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import libvirt
from kombu import Connection, Consumer, Exchange, Message, Producer, Queue

from tests.brokers import delete_names, notification_names, service_names
from worker import config as config_mod
from worker.codec import envelope, notifications, payloads
from worker.config import Config
from worker.virt.domain_xml import DomainSpec, domain, to_string

BROKER = os.environ.get("COMPUTE_WORKER_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
RESULTS = Path(__file__).with_name("RESULTS.md")


def bench_config(tmp: str, **overrides: Any) -> Config:
    """A config with private names, for one measurement."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "host": f"bench-{tag}", "transport_url": BROKER, "control_exchange": f"bench_{tag}",
        "notification_topic": f"bench_notifications_{tag}", "virt_type": "test",
        "instances_path": f"{tmp}/instances", "images_path": f"{tmp}/images",
        "state_dir": f"{tmp}/state", "metrics_listen": "",
    }
    values.update(overrides)
    return config_mod.load(None, values, environ={})


class EventCounter:
    """Counts events on <topic>.* of an exchange and keeps each one's arrival time.

    durable: the exchange's flag as the workers declare it (durable with quorum
    queues); the counter may declare it first, and a mismatch is a 406 for them.
    """

    def __init__(self, url: str, exchange: str, topic: str, *, durable: bool = False) -> None:
        self.arrivals: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self.count_by_type: dict[str, int] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run,
                                        args=(url, exchange, topic, durable, ready), daemon=True)
        self._thread.start()
        ready.wait(10)

    def _run(self, url: str, exchange: str, topic: str, durable: bool,
             ready: threading.Event) -> None:
        with Connection(url) as conn:
            channel = conn.channel()
            channel.basic_qos(0, 1000, False)
            ex = Exchange(exchange, type="topic", durable=durable, auto_delete=False)
            queue = Queue(f"count_{uuid.uuid4().hex}", ex, routing_key=f"{topic}.*",
                          exclusive=True, auto_delete=True)(channel)
            queue.declare()

            def received(message: Message) -> None:
                now = time.perf_counter()
                event = envelope.unwrap(message.body, 1 << 30)
                message.ack()
                kind = event["event_type"]
                with self._cond:
                    self.count_by_type[kind] = self.count_by_type.get(kind, 0) + 1
                    self.arrivals.setdefault(kind, []).append((now, event))
                    self._cond.notify_all()

            with Consumer(channel, [queue], on_message=received):
                ready.set()
                while not self._stop.is_set():
                    try:
                        conn.drain_events(timeout=0.2)
                    except TimeoutError:
                        pass

    def count(self, predicate: Callable[[str], bool]) -> int:
        """Events whose type satisfies predicate."""
        with self._cond:
            return sum(n for kind, n in self.count_by_type.items() if predicate(kind))

    def wait(self, predicate: Callable[[str], bool], n: int, timeout: float = 120) -> float:
        """Block until n matching events arrived; the perf_counter time of the n-th."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.count(predicate) < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {self.count(predicate)} of {n} events arrived")
                self._cond.wait(0.5)
            times = sorted(t for kind, items in self.arrivals.items() if predicate(kind)
                           for t, _ in items)
            return times[n - 1]

    def close(self) -> None:
        """Stop counting."""
        self._stop.set()
        self._thread.join(5)


def is_end(kind: str) -> bool:
    """An .end or .error event."""
    return kind.endswith((".end", ".error"))


def define_domains(conn: libvirt.virConnect, count: int) -> list[str]:
    """Running domains on the given test-driver connection."""
    uuids = []
    for _ in range(count):
        uid = str(uuid.uuid4())
        conn.defineXML(to_string(domain(DomainSpec(f"b-{uid[:8]}", uid, domain_type="test"))))
        conn.lookupByUUIDString(uid).create()
        uuids.append(uid)
    return uuids


def remove_domains(conn: libvirt.virConnect, uuids: list[str]) -> None:
    """Destroy and undefine."""
    for uid in uuids:
        try:
            dom = conn.lookupByUUIDString(uid)
        except libvirt.libvirtError:
            continue
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)


def percentile(values: list[float], pct: float) -> float:
    """The pct-th percentile (nearest rank)."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def machine() -> str:
    """One line describing this machine, for the results table."""
    return (f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{platform.machine()}")


def append_result(section: str, row: str) -> None:
    """Append a dated row under a section heading in bench/RESULTS.md."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    heading = f"\n## {section}\n"
    line = f"| {stamp} | {row} |\n"
    if heading not in text:
        text += heading
    head, _, tail = text.partition(heading)
    # Insert at the end of this section (before the next heading).
    body, sep, rest = tail.partition("\n## ")
    body = body.rstrip("\n") + "\n" + line
    text = head + heading + body + (("\n## " + rest) if sep else "")
    RESULTS.write_text(text)


def forget(cfg: Config, fanout_uniques: Iterable[str] = ()) -> None:
    """Delete what a bench worker left on the broker: its queues (the event queues keep
    every event nobody consumed) and its private exchange."""
    delete_names(cfg.transport_url, service_names(cfg, fanout_uniques) + notification_names(cfg),
                 [cfg.control_exchange])


def median(values: list[float]) -> float:
    """Median."""
    return statistics.median(values)


def raw_round_trip(url: str, exchange_name: str, count: int) -> list[float]:
    """Publish one message and wait for it on a queue of the same broker, count times (ms).

    The baseline every bench prints beside its figures (bench.driver's rtt
    mode runs it in the driver's process).
    """
    with Connection(url) as pub, Connection(url) as sub:
        exchange = Exchange(exchange_name, type="topic", durable=False)
        name = f"rtt_{uuid.uuid4().hex}"
        channel = sub.channel()
        queue = Queue(name, exchange, routing_key=name, auto_delete=True)(channel)
        queue.declare()
        producer = Producer(pub.channel())
        got: list[float] = []
        samples: list[float] = []

        def arrived(message: Message) -> None:
            got.append(time.perf_counter())
            message.ack()

        with Consumer(channel, [queue], on_message=arrived):
            for _ in range(count):
                sent = time.perf_counter()
                producer.publish(b"{}", exchange=exchange, routing_key=name,
                                 content_type="application/json", delivery_mode=2)
                while not got:
                    sub.drain_events(timeout=5)
                samples.append((got.pop() - sent) * 1000)
        return samples


def raw_event(uuid_: str, action: str, phase: str, *, publisher_id: str, topic: str,
              unique_id: str | None) -> notifications.Event:
    """The event a baseline publishes: the worker's own payload, built the worker's way.

    Baselines send the same bytes as the worker (a full nova InstanceActionPayload), so a
    ratio measures the work around the message, not a smaller message.
    """
    live = {"uuid": uuid_, "name": "bench-vm", "power_state": "paused", "vm_state": "paused"}
    payload = payloads.instance_action(instance={"uuid": uuid_}, live=live, host="bench-host",
                                       caller=payloads.Caller(f"req-{uuid.uuid4()}"),
                                       action=action)
    return notifications.notification(event_type=f"instance.{action}.{phase}", payload=payload,
                                      publisher_id=publisher_id, topic=topic,
                                      source_id=unique_id)
