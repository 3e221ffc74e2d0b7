"""``compute-worker demo``: worker, scripted scheduler and event tracker in one process."""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from typing import Any

from worker import config as config_mod
from worker import logs
from worker.amqp.client import RemoteError, RpcClient, tail_events
from worker.amqp.connection import connection_for
from worker.config import Config
from worker.service import Service
from worker.virt.hypervisor import Hypervisor

MEMORY_URL = "memory://"
HOST = "demo-host"
# (method, extra args) in the order a scheduler might send them, per instance.
SCRIPT: list[tuple[str, dict[str, Any]]] = [
    ("build_and_run_instance", {}),  # diskless 64 MiB guests: the demo needs no images
    ("pause_instance", {}),
    ("unpause_instance", {}),
    ("suspend_instance", {}),
    ("resume_instance", {}),
    ("reboot_instance", {"reboot_type": "SOFT"}),
    ("stop_instance", {"clean_shutdown": False}),
    ("start_instance", {}),
    ("pause_instance", {}),
    ("terminate_instance", {}),
]


def _instance(method: str, uid: str, name: str) -> dict[str, Any]:
    if method == "build_and_run_instance":
        return {"uuid": uid, "name": name, "memory_mb": 64}
    return {"uuid": uid}


def _track(cfg: Config, stop: threading.Event, seen: list[tuple[float, dict[str, Any]]],
           ready: threading.Event) -> None:
    with connection_for(cfg) as conn:
        events = tail_events(conn, timeout=None)
        ready.set()
        for event in events:
            seen.append((time.monotonic(), event))
            if stop.is_set():
                return


def run_demo() -> int:
    """Run the script and print each verb's outcome as a table; 0 when every verb ended well."""
    logs.setup("error")
    holder = Hypervisor("test:///default")
    holder.connection()  # keeps the test driver's shared state alive
    with tempfile.TemporaryDirectory(prefix="compute-worker-demo-") as tmp:
        cfg = config_mod.load(None, {
            "host": HOST, "transport_url": MEMORY_URL, "virt_type": "test",
            "instances_path": f"{tmp}/instances", "state_dir": f"{tmp}/state",
            "max_concurrent_ops": 4, "soft_reboot_timeout": 2,
        }, environ={})
        uuids = {name: str(uuid.uuid4()) for name in ("web-1", "db-1")}
        names = {uid: name for name, uid in uuids.items()}
        seen: list[tuple[float, dict[str, Any]]] = []
        stop, ready = threading.Event(), threading.Event()
        tracker = threading.Thread(target=_track, args=(cfg, stop, seen, ready), daemon=True)
        tracker.start()
        ready.wait(5)
        service = Service(cfg)
        service.start()
        started = time.monotonic()
        print(f"compute-worker demo: host {HOST}, broker {MEMORY_URL}, libvirt {cfg.libvirt_uri}")
        print(f"scheduler casts {len(SCRIPT)} verbs to each of {', '.join(uuids)}; "
              "the tracker prints each end event;\n"
              "ms is when the tracker received it, counted from the first cast\n")
        with connection_for(cfg) as conn:
            client = RpcClient(conn, exchange=cfg.control_exchange, topic=cfg.topic)
            for method, extra in SCRIPT:
                for name, uid in uuids.items():
                    client.cast(HOST, method, {"instance": _instance(method, uid, name), **extra})
            expected = len(SCRIPT) * len(uuids)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                done = [e for _, e in seen if e["event_type"].endswith((".end", ".error"))]
                if len(done) >= expected:
                    break
                time.sleep(0.05)
            print(f"{'ms':>7}  {'instance':<8} {'event':<28} {'power_state':<12} state")
            failures = 0
            for arrived, event in seen:
                if not event["event_type"].startswith("instance.") or event["event_type"].endswith(
                        ".start"):
                    continue
                data = event["payload"]["nova_object.data"]
                failures += event["event_type"].endswith(".error")
                ms = (arrived - started) * 1000
                print(f"{ms:>7.1f}  {names.get(data['uuid'], data['uuid'][:8]):<8} "
                      f"{event['event_type']:<28} {str(data['power_state']):<12} "
                      f"{data['state']}")
            try:
                listing = client.call(HOST, "list_instances", {}, timeout=10)
            except RemoteError as exc:
                print(f"list_instances failed: {exc.message}")
                failures += 1
                listing = []
        elapsed = time.monotonic() - started
        print(f"\nlist_instances after the script: {[i['name'] for i in listing]}")
        print(f"{expected} verbs, {failures} failed, {elapsed:.2f}s")
        stop.set()
        service.stop(grace=5)
    holder.close()
    return 1 if failures else 0
