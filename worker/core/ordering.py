"""Per-key serial execution on a bounded pool: one instance's verbs in arrival order."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor

from worker import logs

log = logs.get(__name__)
Task = Callable[[], None]


class KeyedExecutor:
    """Tasks with the same key run one at a time in submit order; others in parallel."""

    def __init__(self, max_workers: int, name: str = "verb") -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        # key -> tasks waiting behind the one running; a key is present while busy.
        self._queues: dict[Hashable, deque[Task]] = {}
        self._pending = 0

    def submit(self, key: Hashable, task: Task) -> None:
        """Queue task behind earlier ones of the same key."""
        with self._lock:
            self._pending += 1
            waiting = self._queues.get(key)
            if waiting is not None:
                waiting.append(task)
                return
            self._queues[key] = deque()
        self._pool.submit(self._run, key, task)

    def _run(self, key: Hashable, task: Task) -> None:
        while True:
            try:
                task()
            except BaseException:  # a task must not take the key's queue down with it
                log.exception("task_crashed", key=str(key))
            with self._lock:
                self._pending -= 1
                waiting = self._queues[key]
                if not waiting:
                    del self._queues[key]
                    self._idle.notify_all()
                    return
                task = waiting.popleft()
            # Run the next task of this key on the same thread: cheaper than a
            # resubmit, and the order cannot be overtaken.

    def busy(self, key: Hashable) -> bool:
        """True while a task of this key is queued or running."""
        with self._lock:
            return key in self._queues

    @property
    def pending(self) -> int:
        """Tasks submitted and not yet finished."""
        with self._lock:
            return self._pending

    @property
    def running(self) -> int:
        """Tasks running now: one per busy key, as many as the pool has threads."""
        with self._lock:
            return min(len(self._queues), self._max_workers)

    @property
    def waiting(self) -> int:
        """Tasks queued and not yet running: behind their key's earlier ones, or for a thread."""
        with self._lock:
            return self._pending - min(len(self._queues), self._max_workers)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no task is pending; False if the timeout passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the pool; with wait, after the running tasks finish."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
