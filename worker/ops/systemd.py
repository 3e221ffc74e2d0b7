"""systemd's notify protocol (sd_notify(3)), stdlib only, as oslo.service speaks it.

systemd hands a ``Type=notify`` service the address of a datagram socket in
``NOTIFY_SOCKET`` (a leading ``@`` means Linux's abstract namespace) and, with
``WatchdogSec=``, the watchdog period in ``WATCHDOG_USEC`` (for the process
``WATCHDOG_PID`` names, when set). Outside systemd there is no socket and every
call does nothing.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

from worker import logs

log = logs.get(__name__)
#: systemd cuts STATUS= text nowhere, but a journal line of a few hundred bytes is plenty.
STATUS_MAX = 400


def _address(name: str) -> str:
    # oslo.service's _abstractify: '@name' is the abstract socket '\0name'.
    return "\0" + name[1:] if name.startswith("@") else name


class Notifier:
    """Sends notify messages to systemd; silent when not run by it (no NOTIFY_SOCKET)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = watchdog_interval(env, os.getpid())
        self._failed = False

    @property
    def enabled(self) -> bool:
        """True when systemd listens."""
        return bool(self.address)

    def send(self, *fields: str) -> bool:
        """One datagram of KEY=VALUE lines; False when nobody listens or it failed."""
        if not self.address:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        # A socket a message, as oslo.service does: nothing to keep or reopen when
        # systemd re-executes itself.
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall(message)
        except OSError as exc:
            if not self._failed:  # said once: the next message will likely fail alike
                log.warning("systemd_notify_failed", error=str(exc)[:200])
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        """READY=1: started (systemctl start returns, the watchdog counts from here)."""
        return self.send("READY=1", _status(status))

    def status(self, status: str) -> bool:
        """STATUS=: the line systemctl status shows."""
        return self.send(_status(status))

    def watchdog(self) -> bool:
        """WATCHDOG=1: alive; systemd restarts the service when these stop."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str) -> bool:
        """STOPPING=1: going down on purpose."""
        return self.send("STOPPING=1", _status(status))


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())[:STATUS_MAX]


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings, half the watchdog period (sd_watchdog_enabled(3)).

    None when no watchdog was asked for, or it was asked of another process.
    """
    raw = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    try:
        usec = int(raw)
        if owner and int(owner) != pid:
            return None
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2e6


class Supervision:
    """The thread that keeps systemd told: READY once, STATUS on change, WATCHDOG while alive.

    state() says (ready, status): whether the worker consumes yet, and what it is
    doing. moved_at() is the monotonic time the least recent of the worker's loops
    last went round: a ping goes out only while that is fresh, so a loop that hangs
    stops the pings and systemd restarts the worker.
    """

    def __init__(self, notifier: Notifier, state: Callable[[], tuple[bool, str]],
                 moved_at: Callable[[], float], stale_after: float | None = None) -> None:
        """stale_after: seconds since moved_at that count as hung (default: a ping
        interval, and at least 2 s, since an idle loop goes round once a second)."""
        self.notifier = notifier
        self._state = state
        self._moved_at = moved_at
        self.interval = notifier.watchdog_interval
        self.stale_after = (max(self.interval or 0.0, 2.0) if stale_after is None
                            else stale_after)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="systemd", daemon=True)
        self.ready = False
        self.pings = 0
        self.withheld = 0
        self._stuck = False
        self._said = ""

    def start(self) -> None:
        """Start telling (nothing to do, and no thread, outside systemd)."""
        if self.notifier.enabled:
            self._thread.start()

    def stopping(self, status: str = "stopping: finishing verbs in flight") -> None:
        """STOPPING=1 now, and no more pings or status lines."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(2)
        self.notifier.stopping(status)

    def _run(self) -> None:
        # Several looks per ping interval, so a ping is never a whole tick late.
        tick = min(0.5, self.interval / 4) if self.interval else 0.5
        due = time.monotonic()
        while not self._stop.is_set():
            try:
                self._turn()
                # Pings only once READY: systemd arms the watchdog then, not before.
                now = time.monotonic()
                if self.ready and self.interval is not None and now >= due:
                    # On the beat, not a beat after this (late) look.
                    due = max(due + self.interval, now + self.interval / 2)
                    self._ping()
            except Exception:  # telling systemd must never end the worker
                log.exception("systemd_supervision_crashed")
            self._stop.wait(tick)

    def _turn(self) -> None:
        ready, status = self._state()
        if ready and not self.ready:
            self.ready = self.notifier.ready(status)
            self._said = status
            log.info("systemd_ready", status=status)
        elif status != self._said:
            self.notifier.status(status)
            self._said = status

    def _ping(self) -> None:
        age = time.monotonic() - self._moved_at()
        if age <= self.stale_after:
            if self._stuck:
                log.warning("watchdog_resumed")
                self._stuck = False
            self.notifier.watchdog()
            self.pings += 1
            return
        self.withheld += 1
        if not self._stuck:  # once a hang: systemd restarts the worker soon anyway
            log.error("watchdog_withheld_loop_stuck", stuck_s=round(age, 1))
            self._stuck = True
