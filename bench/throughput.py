"""Throughput: pause/unpause casts through the worker vs a raw kombu loop doing the same work.

Both sides consume N casts from a queue on the same RabbitMQ, ack each, and
publish two events per cast (start and end) on a second connection with
publisher confirms on; both are counted by the end events that a separate
process (bench.driver, which also publishes the casts) receives, so the
harness does not share the measured process's GIL.
Run: .venv/bin/python -m bench.throughput
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import uuid
from typing import Any

import libvirt
from kombu import Connection, Consumer, Exchange, Message, Producer, Queue

from bench.common import (
    BROKER,
    append_result,
    bench_config,
    define_domains,
    forget,
    machine,
    median,
    raw_event,
    remove_domains,
)
from worker import logs
from worker.codec import envelope
from worker.config import Config
from worker.service import Service


def _cast_bodies(uuids: list[str], total: int) -> list[bytes]:
    bodies = []
    for number in range(total):
        method = "pause_instance" if (number // len(uuids)) % 2 == 0 else "unpause_instance"
        bodies.append(envelope.wrap({
            "method": method, "args": {"instance": {"uuid": uuids[number % len(uuids)]}},
            "version": "6.0", "_unique_id": uuid.uuid4().hex,
            "_context_request_id": f"req-{uuid.uuid4()}"}))
    return bodies


class Driver:
    """bench.driver in a subprocess (its own GIL): publishes casts, counts end events."""

    def __init__(self, cfg: Config, job: dict[str, Any]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.driver"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({
            "url": cfg.transport_url, "exchange": cfg.control_exchange,
            "topic": cfg.notifications.notification_topic, **job}))
        self.proc.stdin.close()
        assert json.loads(self.proc.stdout.readline())["ready"]

    def result(self) -> dict[str, Any]:
        """The driver's result line."""
        assert self.proc.stdout is not None
        result: dict[str, Any] = json.loads(self.proc.stdout.readline())
        self.proc.wait(30)
        return result

    @classmethod
    def burst(cls, cfg: Config, routing_key: str, bodies: list[bytes]) -> Driver:
        """Publish bodies as fast as possible and count their end events."""
        return cls(cfg, {"mode": "burst", "routing_key": routing_key,
                         "bodies": [b.decode() for b in bodies]})

    def rate(self) -> float:
        """Casts per second, from the first publish to the last end event."""
        result = self.result()
        return float(result["casts"]) / float(result["seconds"])


def raw_loop(cfg: Config, bodies: list[bytes], confirm: bool) -> float:
    """The ceiling: consume, ack, publish start and end events; casts per second."""
    exchange = Exchange(cfg.control_exchange, type="topic", durable=False)
    queue_name = f"raw_{uuid.uuid4().hex}"
    with Connection(cfg.transport_url, heartbeat=cfg.rabbit.heartbeat) as consume_conn, \
            Connection(cfg.transport_url,
                       transport_options={"confirm_publish": confirm}) as publish_conn:
        channel = consume_conn.channel()
        channel.basic_qos(0, cfg.rabbit.prefetch_count, False)
        queue = Queue(queue_name, exchange, routing_key=queue_name, auto_delete=True)(channel)
        queue.declare()
        producer = Producer(publish_conn.channel())
        exchange(producer.channel).declare()
        inbox: list[Message] = []
        with Consumer(channel, [queue], on_message=inbox.append):
            driver = Driver.burst(cfg, queue_name, bodies)
            done = 0
            while done < len(bodies):
                try:
                    consume_conn.drain_events(timeout=1)
                except TimeoutError:
                    continue
                while inbox:
                    message = inbox.pop(0)
                    inner = envelope.unwrap(message.body, 1 << 20)
                    for phase in ("start", "end"):
                        event = raw_event(inner["args"]["instance"]["uuid"], "pause", phase,
                                          publisher_id="raw",
                                          topic=cfg.notifications.notification_topic,
                                          unique_id=inner["_unique_id"])
                        producer.publish(envelope.wrap(event.message), exchange=exchange,
                                         routing_key=event.routing_key,
                                         content_type="application/json",
                                         content_encoding="utf-8", delivery_mode=2)
                    message.ack()
                    done += 1
            return driver.rate()


def worker_run(cfg: Config, bodies: list[bytes]) -> float:
    """The worker on the test driver; casts per second."""
    service = Service(cfg)
    service.start()
    try:
        return Driver.burst(cfg, f"{cfg.topic}.{cfg.host}", bodies).rate()
    finally:
        service.stop(grace=10)
        forget(cfg, [service.consumer.fanout_unique])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--casts", type=int, default=3000)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw/worker rounds")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    ns = parser.parse_args()
    logs.setup("error")
    holder = libvirt.open("test:///default")
    uuids = define_domains(holder, ns.instances)
    raw_rates, worker_rates = [], []
    try:
        for _ in range(ns.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = bench_config(tmp)
                raw_rates.append(raw_loop(cfg, _cast_bodies(uuids, ns.casts), confirm=True))
            with tempfile.TemporaryDirectory() as tmp:
                cfg = bench_config(tmp)
                worker_rates.append(worker_run(cfg, _cast_bodies(uuids, ns.casts)))
            print(f"round: raw {raw_rates[-1]:8.0f}/s  worker {worker_rates[-1]:8.0f}/s  "
                  f"ratio {worker_rates[-1] / raw_rates[-1]:.2f}", flush=True)
    finally:
        remove_domains(holder, uuids)
        holder.close()
    raw, work = median(raw_rates), median(worker_rates)
    print(f"throughput ({ns.casts} casts, {ns.instances} instances, confirms on, {BROKER}): "
          f"worker {work:.0f} casts/s, raw loop {raw:.0f}/s, ratio {work / raw:.2f}")
    if not ns.no_record:
        append_result("Throughput (casts/s, median of rounds; target ratio >= 0.75)",
                      f"{machine()} | worker {work:.0f} | raw {raw:.0f} | ratio {work / raw:.2f}")


if __name__ == "__main__":
    main()
