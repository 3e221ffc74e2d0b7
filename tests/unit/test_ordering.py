"""KeyedExecutor: one key's tasks serial and in order, different keys in parallel."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from worker.core.ordering import KeyedExecutor


@pytest.fixture
def executor() -> Iterator[KeyedExecutor]:
    """A four-thread executor, shut down after the test."""
    pool = KeyedExecutor(max_workers=4, name="test-verb")
    yield pool
    pool.shutdown()


class Trace:
    """Start and end marks of tasks, in the order they happened."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.marks: list[tuple[str, object]] = []

    def task(self, label: object, hold: float = 0.0) -> None:
        with self.lock:
            self.marks.append(("start", label))
        time.sleep(hold)  # widen the window in which an overlap would show
        with self.lock:
            self.marks.append(("end", label))


def test_same_key_runs_in_submit_order_one_at_a_time(executor: KeyedExecutor) -> None:
    """Twenty tasks of one key start in submit order and each ends before the next starts."""
    trace = Trace()
    for i in range(20):
        executor.submit("instance-a", functools.partial(trace.task, i, 0.001))

    assert executor.wait_idle(timeout=10)

    expected = [mark for i in range(20) for mark in (("start", i), ("end", i))]
    assert expected == trace.marks


def test_keys_interleaved_keep_their_own_order(executor: KeyedExecutor) -> None:
    """Tasks of several keys submitted interleaved keep per-key order and never overlap per key."""
    trace = Trace()
    keys = ["a", "b", "c"]
    for i in range(30):
        key = keys[i % 3]
        executor.submit(key, functools.partial(trace.task, (key, i), 0.0005))

    assert executor.wait_idle(timeout=10)

    for key in keys:
        mine = [(kind, label) for kind, label in trace.marks
                if isinstance(label, tuple) and label[0] == key]
        expected = [m for i in range(30) if keys[i % 3] == key
                    for m in (("start", (key, i)), ("end", (key, i)))]
        assert expected == mine


def test_different_keys_run_concurrently(executor: KeyedExecutor) -> None:
    """Two keys' tasks meet at a barrier, which only works if they run at the same time."""
    barrier = threading.Barrier(2, timeout=5)
    met: list[str] = []

    def meet(name: str) -> None:
        barrier.wait()
        met.append(name)

    executor.submit("instance-a", lambda: meet("a"))
    executor.submit("instance-b", lambda: meet("b"))

    assert executor.wait_idle(timeout=10)
    assert ["a", "b"] == sorted(met)
    assert barrier.broken is False


def test_same_key_never_meets_itself() -> None:
    """Two tasks of one key cannot both reach a barrier: the first times out alone."""
    pool = KeyedExecutor(max_workers=4)
    barrier = threading.Barrier(2, timeout=0.3)
    outcomes: list[str] = []

    def meet() -> None:
        try:
            barrier.wait()
            outcomes.append("met")
        except threading.BrokenBarrierError:
            outcomes.append("alone")

    try:
        pool.submit("instance-a", meet)
        pool.submit("instance-a", meet)
        assert pool.wait_idle(timeout=10)
    finally:
        pool.shutdown()

    assert ["alone", "alone"] == outcomes


def test_raising_task_does_not_stop_its_key(executor: KeyedExecutor) -> None:
    """After a task raises, later tasks of the same key still run, and the crash is logged."""
    ran: list[int] = []

    def boom() -> None:
        raise RuntimeError("handler bug")

    with capture_logs() as logs:
        executor.submit("k", lambda: ran.append(1))
        executor.submit("k", boom)
        executor.submit("k", lambda: ran.append(3))
        assert executor.wait_idle(timeout=10)

    assert [1, 3] == ran
    assert ["task_crashed"] == [e["event"] for e in logs]
    assert ("k", "error") == (logs[0]["key"], logs[0]["log_level"])
    assert 0 == executor.pending


def test_pending_counts_queued_and_running_tasks(executor: KeyedExecutor) -> None:
    """pending counts every unfinished task; wait_idle times out until they finish."""
    gate = threading.Event()

    def blocked() -> None:
        gate.wait(5)

    executor.submit("k", blocked)
    executor.submit("k", lambda: None)
    executor.submit("other", blocked)

    assert 3 == executor.pending
    assert executor.wait_idle(timeout=0.05) is False

    gate.set()

    assert executor.wait_idle(timeout=5) is True
    assert 0 == executor.pending


def test_running_and_waiting_split_pending_by_threads() -> None:
    """Two threads, three keys: two run; the third key and the tasks behind a key wait."""
    pool = KeyedExecutor(max_workers=2, name="test-verb")
    gate = threading.Event()
    try:
        for key in ("a", "a", "b", "c", "c"):
            pool.submit(key, lambda: gate.wait(5) and None)

        assert (2, 3, 5) == (pool.running, pool.waiting, pool.pending)
        gate.set()
        assert pool.wait_idle(timeout=5)
        assert (0, 0) == (pool.running, pool.waiting)
    finally:
        gate.set()
        pool.shutdown()


def test_wait_idle_on_a_fresh_executor_is_immediate(executor: KeyedExecutor) -> None:
    """With nothing submitted, wait_idle returns True at once."""
    assert executor.wait_idle(timeout=0) is True


def test_key_is_reusable_after_its_queue_drains(executor: KeyedExecutor) -> None:
    """A key whose tasks all finished takes new tasks as a fresh queue."""
    ran: list[str] = []
    executor.submit("k", lambda: ran.append("first"))
    assert executor.wait_idle(timeout=5)

    executor.submit("k", lambda: ran.append("second"))

    assert executor.wait_idle(timeout=5)
    assert ["first", "second"] == ran
