"""The host's periodic reports: host.resources.update (ours) and nova's metrics.update.

nova's resource tracker runs ``update_available_resource`` at start and every
``update_resources_interval`` (0: the default 60 s; below 0: never); it asks each monitor
of ``compute_monitors`` for metrics and publishes ``metrics.update``. This does the same on
its own thread, and also sends ``host.resources.update`` with the driver's resource dict
at start, every interval, and soon after a build or terminate made an instance come or go.
"""

from __future__ import annotations

import datetime
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

from worker import logs
from worker.codec import host_payloads
from worker.config import Config
from worker.core.answers import Answers
from worker.errors import WorkerError
from worker.messages import Outgoing
from worker.virt.host_info import HostInfo
from worker.virt.hypervisor import Hypervisor

log = logs.get(__name__)
#: nova's default periodic task spacing, what update_resources_interval 0 means.
DEFAULT_INTERVAL = 60.0
_TIMES = ("user", "kernel", "idle", "iowait")


def default_host_ip() -> str:
    """oslo's get_my_ipv4: the source address of the default route (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("8.8.8.8", 80))
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


class CpuMonitor:
    """nova's cpu.virt_driver monitor: node CPU times, and percentages of the change since the
    sample before (the first one: since boot, as nova's first is)."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def sample(self, stats: Mapping[str, int]) -> dict[str, int]:
        """nova's ten cpu.* metrics from libvirt's node CPU stats (ns) and frequency (MHz)."""
        now = {key: int(stats[key]) for key in _TIMES}
        now["total"] = sum(now.values())
        delta = {key: now[key] - self._last.get(key, 0) for key in now}
        self._last = now
        spent = float(delta["total"])

        def percent(value: int) -> int:
            # nova divides by zero here (and sends nothing); two samples in one tick say 0.
            return int(value / spent * 100) if spent > 0 else 0

        return {
            "cpu.frequency": int(stats["frequency"]),
            "cpu.user.time": now["user"], "cpu.kernel.time": now["kernel"],
            "cpu.idle.time": now["idle"], "cpu.iowait.time": now["iowait"],
            "cpu.user.percent": percent(delta["user"]),
            "cpu.kernel.percent": percent(delta["kernel"]),
            "cpu.idle.percent": percent(delta["idle"]),
            "cpu.iowait.percent": percent(delta["iowait"]),
            "cpu.percent": percent(delta["user"] + delta["kernel"] + delta["iowait"]),
        }


class HostReport:
    """Sends the host's reports from its own thread: start(), verb_ended(...), stop()."""

    def __init__(self, cfg: Config, hypervisor: Hypervisor, answers: Answers,
                 publish: Callable[[Outgoing], object]) -> None:
        self.cfg = cfg
        self._hypervisor = hypervisor
        self._info = HostInfo(hypervisor)
        self._answers = answers
        self._publish = publish
        configured = cfg.update_resources_interval
        self.interval: float | None = (None if configured < 0
                                       else float(configured or DEFAULT_INTERVAL))
        self._monitor = CpuMonitor() if cfg.cpu_monitor else None
        self._host_ip = cfg.my_ip or default_host_ip()
        self._nodename = cfg.host
        self._lock = threading.Lock()
        # Instances the last look saw: a verb end that adds or removes one is a change.
        self._known: set[str] | None = None
        self._poked = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="host-report", daemon=True)
        self.sent = 0

    def start(self) -> None:
        """Report now, then every interval."""
        self._thread.start()

    def stop(self) -> None:
        """No further reports."""
        self._stopping.set()
        self._poked.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def verb_ended(self, uuid: str, result: Any) -> None:
        """A verb on uuid ended: report soon if an instance came (a build) or went (terminate)."""
        if not isinstance(result, dict):
            return  # failed: a failed build rolls back, a failed terminate leaves it there
        with self._lock:
            if self._known is None:
                return  # the start report is still to come; it sees this
            if result.get("vm_state") == "deleted":
                self._known.discard(uuid)  # a terminate: always worth a report
            elif uuid not in self._known:
                self._known.add(uuid)
            else:
                return  # a verb on an instance already there
        self._poked.set()

    # --- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        self.report("start", metrics=True)
        while not self._stopping.is_set():
            poked = self._poked.wait(self.interval)
            if self._stopping.is_set():
                return
            if poked:
                self._poked.clear()
                self.report("instances_changed", metrics=False)
            else:
                self.report("periodic", metrics=True)

    def report(self, trigger: str, *, metrics: bool) -> None:
        """Gather and send host.resources.update (and metrics.update when asked and enabled).

        Never raises: a report that cannot be made now is logged and the next one tried.
        """
        try:
            if self._known is None:
                # Taken once: later reports must not learn of a domain whose build is still
                # running, or its end would not count as a change.
                uuids: set[str] | None = {guest.uuid for guest in self._hypervisor.guests()}
            else:
                uuids = None
            resources = self._info.resources(self.cfg.instances_path)
        except (WorkerError, OSError) as exc:
            log.warning("host_resources_unavailable", trigger=trigger,
                        error=getattr(exc, "message", None) or str(exc)[:200])
            return
        except Exception:  # a bug here must not end the reports (or the worker)
            log.exception("host_report_crashed")
            return
        if uuids is not None:
            with self._lock:
                self._known = uuids
        self._nodename = str(resources.get("hypervisor_hostname") or self.cfg.host)
        self._publish(self._answers.event("host.resources.update", host_payloads.host_resources(
            host=self.cfg.host, nodename=self._nodename, resources=resources, trigger=trigger)))
        self.sent += 1
        if metrics and self._monitor is not None:
            self._send_metrics()

    def _send_metrics(self) -> None:
        assert self._monitor is not None
        try:
            stats = self._info.cpu_stats()
        except WorkerError as exc:
            log.warning("host_metrics_unavailable", error=exc.message)
            return
        try:
            values = self._monitor.sample(stats)
        except KeyError as exc:  # nova: "Not all properties needed are implemented"
            log.warning("host_metrics_unavailable", error=f"no CPU time {exc}")
            return
        self._publish(self._answers.event("metrics.update", host_payloads.metrics(
            host=self.cfg.host, host_ip=self._host_ip, nodename=self._nodename,
            values=values, timestamp=datetime.datetime.now(datetime.UTC))))
