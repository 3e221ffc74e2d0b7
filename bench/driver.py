"""The scheduler side of a benchmark, in its own process so it does not share the GIL.

Reads a JSON job on stdin: {"url", "exchange", "topic", "routing_key", "bodies": [...],
"ready_file"}; binds an event counter, publishes the bodies as fast as it can,
waits for one end (or error) event per body, and prints
{"casts", "seconds", "first_publish", "last_end"} as one JSON line.
"""

from __future__ import annotations

import json
import sys
import time

from kombu import Connection, Exchange, Producer

from bench.common import EventCounter, is_end


def main() -> None:
    job = json.load(sys.stdin)
    counter = EventCounter(job["url"], job["exchange"], job["topic"])
    bodies = [b.encode() for b in job["bodies"]]
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.close()
    with Connection(job["url"]) as conn:
        producer = Producer(conn.channel())
        exchange = Exchange(job["exchange"], type="topic", durable=False)
        started = time.perf_counter()
        for body in bodies:
            producer.publish(body, exchange=exchange, routing_key=job["routing_key"],
                             content_type="application/json", content_encoding="utf-8",
                             delivery_mode=2)
    last = counter.wait(is_end, len(bodies), timeout=job.get("timeout", 300))
    counter.close()
    print(json.dumps({"casts": len(bodies), "seconds": last - started}), flush=True)


if __name__ == "__main__":
    main()
