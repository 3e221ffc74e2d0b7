"""``compute-worker run`` as a subprocess of a test, configured from a Config, with its log."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.brokers import wait_until
from tests.faults.support import read_log
from tests.helpers import WORKER_BIN, worker_env
from worker.config import Config


def argv_for(cfg: Config, **extra: Any) -> list[str]:
    """Flags that give a worker subprocess cfg's names and directories (and extra options)."""
    values: dict[str, Any] = {
        "host": cfg.host, "transport_url": cfg.transport_url,
        "control_exchange": cfg.control_exchange,
        "notification_topic": cfg.notifications.notification_topic,
        "virt_type": cfg.libvirt.virt_type, "instances_path": cfg.instances_path,
        "images_path": cfg.images_path, "state_dir": cfg.state_dir,
        "heartbeat": cfg.rabbit.heartbeat, "confirm_timeout": cfg.rabbit.confirm_timeout,
        "log_level": "info",
    }
    values.update(extra)
    return [item for name, value in values.items()
            for item in ("--" + name.replace("_", "-"), str(value))]


class RunningWorker:
    """One worker subprocess: its log file, its JSON records, a signal and the time it took."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([WORKER_BIN, "run", *argv], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         env={**worker_env(), **(env or {})},
                                         start_new_session=True)

    def records(self) -> list[dict[str, Any]]:
        """Its JSON log records so far."""
        return read_log(self.log)[0]

    def text(self) -> str:
        """Its whole log (JSON lines and anything else it printed)."""
        return self.log.read_text(errors="replace")

    def wait_logged(self, event: str, timeout: float = 30.0, count: int = 1) -> None:
        """Until its log has count records of event; AssertionError (with the log) if not."""
        def logged() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n"
                                     f"{self.text()[-3000:]}")
            return sum(r.get("event") == event for r in self.records()) >= count
        try:
            wait_until(logged, timeout, f"{event} in the worker's log", 0.05)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.text()[-3000:]}") from None

    def signal_and_time(self, sig: int, timeout: float = 30.0) -> tuple[int | None, float]:
        """Send sig; (exit status, seconds until it exited), status None if it did not."""
        began = time.monotonic()
        os.kill(self.proc.pid, sig)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - began

    def close(self) -> None:
        """Kill it if it still runs (cleanup path)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
