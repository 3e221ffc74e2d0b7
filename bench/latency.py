"""Latency: cast -> end event at a fixed rate, call -> reply, beside the raw broker round trip.

The casts, calls and the raw round trips are all made by bench.driver in its
own process, so the measured worker does not share its GIL with the harness.
Run: .venv/bin/python -m bench.latency
"""

from __future__ import annotations

import argparse
import tempfile
import uuid

import libvirt

from bench.common import (
    append_result,
    bench_config,
    define_domains,
    machine,
    percentile,
    remove_domains,
)
from bench.throughput import Driver
from worker import envelope, events, logs
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
            "version": "1.0", "_unique_id": unique}).decode())
        ids.append(events.message_id(unique, f"instance.{action}.end", cfg.event_publisher_id))
    return bodies, ids


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
            service = Service(cfg)
            service.start()
            try:
                bodies, ids = paced_casts(cfg, uuids, ns.casts)
                casts = Driver(cfg, {"mode": "paced", "rate": ns.rate, "bodies": bodies,
                                     "ids": ids, "routing_key": f"{cfg.topic}.{cfg.host}"}
                               ).result()["latencies_ms"]
                calls = Driver(cfg, {"mode": "calls", "count": ns.calls, "host": cfg.host,
                                     "method": "get_instance_info",
                                     "args_list": [{"instance": {"uuid": u}} for u in uuids]}
                               ).result()["latencies_ms"]
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
