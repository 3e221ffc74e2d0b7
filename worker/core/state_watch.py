"""State changes nobody asked for: lifecycle events and a periodic sync -> instance.update."""

from __future__ import annotations

import contextlib
import heapq
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from worker import logs
from worker.config import Config
from worker.core.answers import Answers
from worker.errors import InstanceNotFound, WorkerError
from worker.messages import Outgoing
from worker.virt import power_state
from worker.virt.hypervisor import Hypervisor
from worker.virt.lifecycle import LifecycleEvent

log = logs.get(__name__)

_GONE = "gone"  # known-state marker for a domain that no longer exists
# The state each event announces. When the state seen on looking differs, the
# domain moved on before we looked, and the event no longer explains it.
IMPLIED = {"undefined": _GONE, "started": "running", "resumed": "running",
           "suspended": "paused", "stopped": "shutdown", "shutdown": "shutdown",
           "crashed": "crashed", "pmsuspended": "suspended"}
# Events arriving within this window are looked at once, with the latest cause.
COALESCE = 0.05


class StateWatch:
    """Keeps the last known power state of every domain and reports changes no verb caused."""

    def __init__(self, cfg: Config, hypervisor: Hypervisor, answers: Answers,
                 publish: Callable[[Outgoing], object], busy: Callable[[str], bool],
                 *, debounce: float = 2.0, sync_interval: float = 60.0) -> None:
        self.cfg = cfg
        self.hypervisor = hypervisor
        self._answers = answers
        self._publish = publish
        self._busy = busy
        self.debounce = debounce
        self.sync_interval = sync_interval
        self._path = Path(cfg.state_dir) / "power_states.json"
        self._known: dict[str, str] = self._load()
        self._lock = threading.Condition()
        self._due: list[tuple[float, str, str]] = []
        self._next_sync = 0.0  # sync at once on start
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="state-watch", daemon=True)
        self.reported = 0

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self._path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _save(self) -> None:
        """Keep the known states for the next start; a full or read-only disk only costs that.

        They are a cache: without them the first sync after a restart reports
        what changed while the worker was down as changes, nothing worse.
        """
        tmp = self._path.with_suffix(".tmp")
        with self._lock:
            text = json.dumps(self._known)
        try:
            tmp.write_text(text)
            tmp.replace(self._path)
        except OSError as exc:
            log.warning("power_states_not_saved", path=str(self._path), error=str(exc)[:200])
            with contextlib.suppress(OSError):
                tmp.unlink()

    # --- fed from other threads ---------------------------------------------------

    def start(self) -> None:
        """Run the watch thread (it syncs once at start)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and keep the known states for the next start."""
        with self._lock:
            self._stop = True
            self._lock.notify()
        self._thread.join(5)
        self._save()

    def lifecycle(self, event: LifecycleEvent) -> None:
        """libvirt lifecycle callback (event thread): schedule a look, nothing more."""
        # A stop is often the first half of a reboot or of a verb: look again
        # after the debounce, and report only if the domain is still down.
        delay = self.debounce if event.may_be_half_of_something else COALESCE
        self.schedule(event.uuid, event.cause, delay)

    def schedule(self, uuid: str, cause: str, delay: float = 0.0) -> None:
        """Look at one domain after delay seconds."""
        with self._lock:
            heapq.heappush(self._due, (time.monotonic() + delay, uuid, cause))
            self._lock.notify()

    def sync_now(self) -> None:
        """Ask for a full sync as soon as possible (after a reconnect)."""
        with self._lock:
            self._next_sync = 0.0
            self._lock.notify()

    def observed(self, uuid: str, state: str | None) -> None:
        """A verb of ours ended with this state: it is known, not news."""
        with self._lock:
            self._known[uuid] = state if state is not None else _GONE

    def power_states(self) -> dict[str, int]:
        """How many known domains are in each power state (running, shutdown, ...)."""
        counts: dict[str, int] = {}
        with self._lock:
            for state in self._known.values():
                if state != _GONE:
                    counts[state] = counts.get(state, 0) + 1
        return counts

    # --- the watch thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stop:
                    return
                now = time.monotonic()
                wake = min([self._next_sync] + [d[0] for d in self._due[:1]])
                if wake > now:
                    self._lock.wait(min(wake - now, 5.0))
                    continue
                due: dict[str, str] = {}
                while self._due and self._due[0][0] <= now:
                    _, uuid, cause = heapq.heappop(self._due)
                    due.pop(uuid, None)
                    due[uuid] = cause  # the latest cause of a burst wins
                sync = self._next_sync <= now
                if sync:
                    self._next_sync = now + self.sync_interval
            try:
                for uuid, cause in due.items():
                    self._check(uuid, cause)
                if sync:
                    self._sync()
            except WorkerError as exc:
                # libvirt is away; the service's guard reconnects and asks for a sync.
                log.warning("state_watch_paused", error=exc.message)
            except Exception:  # a bug here must not end the watch for good
                log.exception("state_watch_crashed_continuing")

    def _check(self, uuid: str, cause: str) -> None:
        if self._busy(uuid):
            return  # a verb of ours is running: its end event tells the state
        try:
            now = self.hypervisor.guest(uuid).describe()
            name: str | None = now["name"]
            current: str = now["power_state"]
            vm_state: str | None = now["vm_state"]
        except InstanceNotFound:
            name, current, vm_state = None, _GONE, "deleted"
        self._compare(uuid, name, current, vm_state, cause)

    def _compare(self, uuid: str, name: str | None, current: str, vm_state: str | None,
                 cause: str) -> None:
        with self._lock:
            old = self._known.get(uuid)
            if old == current or (old is None and current == _GONE):
                return
            self._known[uuid] = current
        if IMPLIED.get(cause, current) != current:
            cause = "sync"
        self.reported += 1
        log.info("instance_state_changed", instance=uuid, old=old, new=current, cause=cause)
        live = {"uuid": uuid, "name": name, "vm_state": vm_state,
                "power_state": None if current == _GONE else current}
        was = None if old in (None, _GONE) else power_state.vm_state(old, False)
        self._publish(self._answers.instance_update(uuid, live, was))

    def _sync(self) -> None:
        seen = set()
        for guest in self.hypervisor.guests():
            seen.add(guest.uuid)
            self._check(guest.uuid, "sync")
        with self._lock:
            missing = [u for u, s in self._known.items() if s != _GONE and u not in seen]
        for uuid in missing:
            self._check(uuid, "sync")
        with self._lock:  # reported once; forgetting them keeps the map bounded
            self._known = {u: s for u, s in self._known.items() if s != _GONE}
        self._save()
