"""The worker side of the fleet benches: node files, the serving process, its CPU and memory.

`python -m bench.fleet_hosts` reads one JSON line on stdin ({"hosts": [flat
option values, one dict a worker]}), starts a worker.service.Service for each,
prints {"ready": ...}, and stops them all (deleting their queues) on "stop" or
EOF. bench.fleet and bench.cluster_fleet start a few of these, one per core.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lxml import etree

from tests.brokers import delete_names, service_names
from worker import config as config_mod
from worker import logs
from worker.broker_urls import node_urls
from worker.config import FIELDS, Config
from worker.service import Service
from worker.virt.domain_xml import DomainSpec, domain


def node_xml(path: str, count: int, *, prefix: str = "d", uuids: list[str] | None = None
             ) -> list[str]:
    """Write a libvirt test-driver node file with count running domains; their UUIDs.

    Opening test:///<path> gives each connection its own private copy of this
    node (domains defined in it start out running).
    """
    uuids = uuids or [str(uuid.uuid4()) for _ in range(count)]
    node = etree.Element("node")
    cpu = etree.SubElement(node, "cpu")
    for tag, text in (("mhz", "2000"), ("model", "bench"), ("active", "2"), ("nodes", "1"),
                      ("sockets", "1"), ("cores", "2"), ("threads", "1")):
        etree.SubElement(cpu, tag).text = text
    etree.SubElement(node, "memory").text = str(64 * 1024 * 1024)  # KiB
    for number, uid in enumerate(uuids):
        node.append(domain(DomainSpec(f"{prefix}-{number}-{uid[:8]}", uid, domain_type="test")))
    etree.ElementTree(node).write(path, encoding="utf-8", xml_declaration=True)
    return uuids


def host_names(tag: str, n: int) -> list[str]:
    """The host names of a fleet (bench.cluster_fleet predicts their broker nodes from them)."""
    return [f"fl{tag}-{i}" for i in range(n)]


def kombu_url(transport_url: str) -> str:
    """A transport URL as kombu reads it: oslo's comma form becomes kombu's `;` list."""
    return ";".join(node_urls(transport_url))


def serve() -> None:
    """Start the Services of the job on stdin, report, stop them on "stop" or EOF."""
    logs.setup("error")
    job = json.loads(sys.stdin.readline())
    cfgs = [config_mod.load(None, values, environ={}) for values in job["hosts"]]
    began = time.perf_counter()
    services = [Service(cfg) for cfg in cfgs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda s: s.start(), services))
    print(json.dumps({"ready": True, "start_s": time.perf_counter() - began,
                      "threads": threading.active_count(),
                      "fds": len(os.listdir("/proc/self/fd")), "rss_kib": rss_kib()}),
          flush=True)
    sys.stdin.readline()  # "stop", or EOF when the bench went away
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda s: s.stop(grace=10), services))
    queues = [q for s in services for q in service_names(s.cfg, [s.consumer.fanout_unique])]
    failed = delete_names(kombu_url(cfgs[0].transport_url), queues) if cfgs else 0
    print(json.dumps({"stopped": True, "stop_s": time.perf_counter() - began,
                      "queues_deleted": len(queues) - failed, "delete_failed": failed}),
          flush=True)


def flat_values(cfg: Config) -> dict[str, Any]:
    """The options of cfg that differ from the defaults, by flat name (a serve job's line)."""
    values = {}
    for name, row in FIELDS.items():
        value = getattr(cfg if row.group is None else getattr(cfg, row.group), name)
        if value != row.default:
            values[name] = value
    return values


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_and_wakeups(pid: int) -> tuple[float, int]:
    """(CPU seconds on the run queue, context switches) summed over the threads of pid.

    From /proc/<pid>/task/*/schedstat (nanoseconds, unlike /proc/<pid>/stat's
    10 ms ticks) and the threads' voluntary + involuntary switches: a thread
    that wakes to poll shows up as switches even when its CPU time is tiny.
    """
    cpu_ns, switches = 0, 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            cpu_ns += int((task / "schedstat").read_text().split()[0])
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    switches += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return cpu_ns / 1e9, switches


if __name__ == "__main__":
    serve()
