"""Latency: cast -> end event at a fixed rate, call -> reply, beside the raw broker round trip.

Run: .venv/bin/python -m bench.latency
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid

import libvirt
from kombu import Connection, Consumer, Exchange, Producer, Queue

from bench.common import (
    EventCounter,
    append_result,
    bench_config,
    define_domains,
    machine,
    percentile,
    remove_domains,
)
from worker import envelope, events, logs
from worker.client import RpcClient
from worker.config import Config
from worker.service import Service


def raw_round_trip(cfg: Config, count: int) -> list[float]:
    """Publish one message and wait for it on a queue of the same broker, count times (ms)."""
    with Connection(cfg.transport_url) as pub, Connection(cfg.transport_url) as sub:
        exchange = Exchange(cfg.control_exchange, type="topic", durable=False)
        name = f"rtt_{uuid.uuid4().hex}"
        channel = sub.channel()
        queue = Queue(name, exchange, routing_key=name, auto_delete=True)(channel)
        queue.declare()
        producer = Producer(pub.channel())
        got: list[float] = []
        samples: list[float] = []
        with Consumer(channel, [queue], on_message=lambda m: (got.append(time.perf_counter()),
                                                              m.ack())):
            for _ in range(count):
                sent = time.perf_counter()
                producer.publish(b"{}", exchange=exchange, routing_key=name,
                                 content_type="application/json", delivery_mode=2)
                while not got:
                    try:
                        sub.drain_events(timeout=5)
                    except TimeoutError:
                        break
                samples.append((got.pop() - sent) * 1000)
        return samples


def cast_latency(cfg: Config, uuids: list[str], rate: float, count: int) -> list[float]:
    """Casts at a fixed rate; ms from publish to the matching end event."""
    counter = EventCounter(cfg.transport_url, cfg.control_exchange, cfg.notification_topic)
    sent: dict[str, float] = {}
    with Connection(cfg.transport_url) as conn:
        producer = Producer(conn.channel())
        exchange = Exchange(cfg.control_exchange, type="topic", durable=False)
        start = time.perf_counter()
        for number in range(count):
            uid = uuids[number % len(uuids)]
            method = "pause_instance" if (number // len(uuids)) % 2 == 0 else "unpause_instance"
            unique = uuid.uuid4().hex
            action = "pause" if method == "pause_instance" else "unpause"
            sent[events.message_id(unique, f"instance.{action}.end",
                                   cfg.event_publisher_id)] = time.perf_counter()
            producer.publish(envelope.wrap({"method": method, "args": {"instance": {"uuid": uid}},
                                            "version": "1.0", "_unique_id": unique}),
                             exchange=exchange, routing_key=f"{cfg.topic}.{cfg.host}",
                             content_type="application/json", delivery_mode=2)
            # Hold the rate: sleep until this cast's slot.
            delay = start + (number + 1) / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    counter.wait(lambda k: k.endswith(".end"), count)
    counter.close()
    samples = []
    for kind, items in counter.arrivals.items():
        if kind.endswith(".end"):
            samples += [(at - sent[e["message_id"]]) * 1000 for at, e in items
                        if e["message_id"] in sent]
    return samples


def call_latency(cfg: Config, uuids: list[str], count: int) -> list[float]:
    """get_instance_info calls one after another; ms per round trip."""
    samples = []
    with Connection(cfg.transport_url) as conn:
        client = RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic)
        for number in range(count):
            started = time.perf_counter()
            client.call(cfg.host, "get_instance_info",
                        {"instance": {"uuid": uuids[number % len(uuids)]}}, timeout=10)
            samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="casts per second")
    parser.add_argument("--casts", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--no-record", action="store_true")
    ns = parser.parse_args()
    logs.setup("error")
    holder = libvirt.open("test:///default")
    uuids = define_domains(holder, 20)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = bench_config(tmp)
            raw = raw_round_trip(cfg, ns.calls)
            service = Service(cfg)
            service.start()
            try:
                casts = cast_latency(cfg, uuids, ns.rate, ns.casts)
                calls = call_latency(cfg, uuids, ns.calls)
            finally:
                service.stop(grace=10)
    finally:
        remove_domains(holder, uuids)
        holder.close()

    def fmt(samples: list[float]) -> str:
        return f"p50 {percentile(samples, 50):.2f} ms, p99 {percentile(samples, 99):.2f} ms"

    print(f"raw broker round trip:            {fmt(raw)}")
    print(f"cast -> end event at {ns.rate:.0f}/s:     {fmt(casts)}  (target p50 < 3, p99 < 15)")
    print(f"call get_instance_info -> reply:  {fmt(calls)}")
    if not ns.no_record:
        append_result(
            "Latency (ms; targets: cast->end p50 < 3, p99 < 15)",
            f"{machine()} | cast->end at {ns.rate:.0f}/s {fmt(casts)} | call {fmt(calls)} | "
            f"raw broker round trip {fmt(raw)}")


if __name__ == "__main__":
    main()
