"""The scheduler side of a benchmark, in its own process so it does not share the GIL.

Reads one JSON job on stdin and prints JSON lines: {"ready": true} once its
event counter is bound, then its result. Modes:

- ``burst``: publish ``bodies`` as fast as it can, wait for one end (or error)
  event per body; result {"casts", "seconds"}.
- ``paced``: publish ``bodies`` at ``rate`` per second; ``ids`` are the
  message_ids their end events will carry; result {"latencies_ms": [...]}.
- ``calls``: ``count`` calls of ``method`` with ``args_list`` in turn, one after
  another; result {"latencies_ms": [...]}.
- ``rtt``: ``count`` raw publish -> consume round trips on a private queue;
  result {"latencies_ms": [...]}.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from kombu import Connection, Exchange, Producer

from bench.common import EventCounter, is_end, raw_round_trip
from worker.amqp.client import RpcClient


def _publisher(job: dict[str, Any]) -> tuple[Connection, Producer, Exchange]:
    conn = Connection(job["url"])
    return conn, Producer(conn.channel()), Exchange(job["exchange"], type="topic", durable=False)


def _publish(producer: Producer, exchange: Exchange, routing_key: str, body: bytes) -> None:
    producer.publish(body, exchange=exchange, routing_key=routing_key,
                     content_type="application/json", content_encoding="utf-8", delivery_mode=2)


def burst(job: dict[str, Any]) -> dict[str, Any]:
    """Casts as fast as possible; seconds from the first publish to the last end event."""
    counter = EventCounter(job["url"], job["exchange"], job["topic"])
    bodies = [b.encode() for b in job["bodies"]]
    print(json.dumps({"ready": True}), flush=True)
    conn, producer, exchange = _publisher(job)
    with conn:  # open until the end: closing at once can drop unconfirmed publishes
        started = time.perf_counter()
        for body in bodies:
            _publish(producer, exchange, job["routing_key"], body)
        last = counter.wait(is_end, len(bodies), timeout=job.get("timeout", 300))
    counter.close()
    return {"casts": len(bodies), "seconds": last - started}


def paced(job: dict[str, Any]) -> dict[str, Any]:
    """Casts at a fixed rate; ms from each publish to its end event."""
    counter = EventCounter(job["url"], job["exchange"], job["topic"])
    print(json.dumps({"ready": True}), flush=True)
    sent: dict[str, float] = {}
    conn, producer, exchange = _publisher(job)
    with conn:
        start = time.perf_counter()
        for number, (body, mid) in enumerate(zip(job["bodies"], job["ids"], strict=True)):
            sent[mid] = time.perf_counter()
            _publish(producer, exchange, job["routing_key"], body.encode())
            delay = start + (number + 1) / job["rate"] - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    counter.wait(lambda kind: kind.endswith(".end"), len(sent), timeout=job.get("timeout", 300))
    counter.close()
    latencies = [(at - sent[event["message_id"]]) * 1000
                 for kind, items in counter.arrivals.items() if kind.endswith(".end")
                 for at, event in items if event["message_id"] in sent]
    # perf_counter is the system's monotonic clock: the measured process can
    # compare its own timestamps with these to split the latency into hops.
    arrived = {event["message_id"]: at for kind, items in counter.arrivals.items()
               if kind.endswith(".end") for at, event in items}
    return {"latencies_ms": latencies, "sent": sent, "arrived": arrived}


def calls(job: dict[str, Any]) -> dict[str, Any]:
    """Calls one after another; ms per round trip."""
    print(json.dumps({"ready": True}), flush=True)
    latencies = []
    with Connection(job["url"]) as conn:
        client = RpcClient(conn, exchange=job["exchange"], topic=job.get("rpc_topic", "compute"))
        for number in range(job["count"]):
            args = job["args_list"][number % len(job["args_list"])]
            started = time.perf_counter()
            client.call(job["host"], job["method"], args, timeout=30)
            latencies.append((time.perf_counter() - started) * 1000)
    return {"latencies_ms": latencies}


def rtt(job: dict[str, Any]) -> dict[str, Any]:
    """The raw broker: publish one message, consume it, count times; ms each."""
    print(json.dumps({"ready": True}), flush=True)
    return {"latencies_ms": raw_round_trip(job["url"], job["exchange"], job["count"])}


MODES = {"burst": burst, "paced": paced, "calls": calls, "rtt": rtt}


def main() -> None:
    job = json.load(sys.stdin)
    sys.stdin.close()
    result = MODES[job.get("mode", "burst")](job)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
