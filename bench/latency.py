"""Latency: cast -> end event at a fixed rate, call -> reply, beside the raw broker round trip.

The casts, calls and the raw round trips are all made by bench.driver in its
own process, so the measured worker does not share its GIL with the harness.
Beside the worker, the same paced casts go through a raw echo loop (consume,
publish the end event with a confirm, ack: what the worker does on the wire,
and nothing else), which is the floor of this measurement here.
Run: .venv/bin/python -m bench.latency
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import uuid

import libvirt
from kombu import Connection, Consumer, Exchange, Message, Producer, Queue

from bench.common import (
    append_result,
    bench_config,
    define_domains,
    forget,
    machine,
    percentile,
    raw_event,
    remove_domains,
)
from bench.throughput import Driver
from worker import logs
from worker.codec import envelope, notifications
from worker.config import Config
from worker.service import Service


def paced_casts(cfg: Config, uuids: list[str], count: int) -> tuple[list[str], list[str]]:
    """Alternating pause/unpause casts, and the message_id each one's end event will carry."""
    bodies, ids = [], []
    for number in range(count):
        action = "pause" if (number // len(uuids)) % 2 == 0 else "unpause"
        unique = uuid.uuid4().hex
        bodies.append(envelope.wrap({
            "method": f"{action}_instance",
            "args": {"instance": {"uuid": uuids[number % len(uuids)]}},
            "version": "6.0", "_unique_id": unique}).decode())
        ids.append(notifications.message_id(unique, f"instance.{action}.end",
                                            cfg.event_publisher_id))
    return bodies, ids


class RawEcho:
    """The worker's message path without the worker: consume a cast, publish its end event
    (confirmed, as the worker does), ack; one kombu thread in this process.

    Timed by the same driver as the worker, it is the floor this measurement
    can show here: two broker hops and two client libraries.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._stop = threading.Event()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise TimeoutError("raw echo loop did not start")

    def _run(self, ready: threading.Event) -> None:
        cfg = self.cfg
        exchange = Exchange(cfg.control_exchange, type="topic", durable=False)
        name = f"{cfg.topic}.{cfg.host}"
        with Connection(cfg.transport_url) as consume_conn, \
                Connection(cfg.transport_url, transport_options={"confirm_publish": True}) \
                as publish_conn:
            channel = consume_conn.channel()
            queue = Queue(name, exchange, routing_key=name, auto_delete=True)(channel)
            queue.declare()
            producer = Producer(publish_conn.channel())
            exchange(producer.channel).declare()

            def echo(message: Message) -> None:
                inner = envelope.unwrap(message.body, cfg.worker.max_message_bytes)
                action = str(inner["method"]).removesuffix("_instance")
                event = raw_event(inner["args"]["instance"]["uuid"], action, "end",
                                  publisher_id=cfg.event_publisher_id,
                                  topic=cfg.notifications.notification_topic,
                                  unique_id=inner["_unique_id"])
                producer.publish(envelope.wrap(event.message), exchange=exchange,
                                 routing_key=event.routing_key, content_type="application/json",
                                 content_encoding="utf-8", delivery_mode=2)
                message.ack()

            with Consumer(channel, [queue], on_message=echo):
                ready.set()
                while not self._stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        consume_conn.drain_events(timeout=0.2)
            queue.delete()

    def close(self) -> None:
        """Stop the loop and delete its queue."""
        self._stop.set()
        self._thread.join(10)


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
            raw = Driver(cfg, {"mode": "rtt", "count": ns.calls}).result()["latencies_ms"]
            bodies, ids = paced_casts(cfg, uuids, ns.casts)
            paced = {"mode": "paced", "rate": ns.rate, "bodies": bodies, "ids": ids,
                     "routing_key": f"{cfg.topic}.{cfg.host}"}
            echo_loop = RawEcho(cfg)
            try:
                echo = Driver(cfg, paced).result()["latencies_ms"]
            finally:
                echo_loop.close()
            service = Service(cfg)
            service.start()
            try:
                bodies, ids = paced_casts(cfg, uuids, ns.casts)
                casts = Driver(cfg, {**paced, "bodies": bodies, "ids": ids}
                               ).result()["latencies_ms"]
                calls = Driver(cfg, {"mode": "calls", "count": ns.calls, "host": cfg.host,
                                     "method": "get_instance_info",
                                     "args_list": [{"instance": {"uuid": u}} for u in uuids]}
                               ).result()["latencies_ms"]
            finally:
                service.stop(grace=10)
                forget(cfg, [service.consumer.fanout_unique])
    finally:
        remove_domains(holder, uuids)
        holder.close()

    def fmt(samples: list[float]) -> str:
        return f"p50 {percentile(samples, 50):.2f} ms, p99 {percentile(samples, 99):.2f} ms"

    print(f"raw broker round trip:            {fmt(raw)}")
    print(f"raw echo loop, cast -> end event: {fmt(echo)}  (same path, no worker)")
    print(f"cast -> end event at {ns.rate:.0f}/s:     {fmt(casts)}  (target p50 < 3, p99 < 15)")
    print(f"call get_instance_info -> reply:  {fmt(calls)}")
    if not ns.no_record:
        append_result(
            "Latency (ms; targets: cast->end p50 < 3, p99 < 15)",
            f"{machine()} | cast->end at {ns.rate:.0f}/s {fmt(casts)} | call {fmt(calls)} | "
            f"raw broker round trip {fmt(raw)} | raw echo loop cast->end {fmt(echo)}")


if __name__ == "__main__":
    main()
