"""Named tenacity policies, declared once; tests pass their own sleep."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import tenacity

from worker import logs
from worker.errors import HypervisorUnavailable, JournalUnavailable

log = logs.get(__name__)
Sleep = Callable[[float], None]


def backoff(multiplier: float, cap: float, jitter: float) -> Callable[[tenacity.RetryCallState],
                                                                    float]:
    """Attempt n waits min(cap, multiplier * 2**(n-1) + uniform(0, jitter)) seconds.

    tenacity's wait_exponential_jitter computes the same, but its first argument was
    renamed (initial, then multiplier in 9.2, the old name warning): a wait of our own
    works at every tenacity from the declared floor on.
    """
    def wait(state: tenacity.RetryCallState) -> float:
        try:
            base = multiplier * 2.0 ** (state.attempt_number - 1)
        except OverflowError:
            return cap
        return max(0.0, min(cap, base + random.uniform(0, jitter)))
    return wait


def _log_before_sleep(event: str) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        # next_action, not upcoming_sleep: tenacity before 8.2.3 has only the former.
        upcoming = state.next_action.sleep if state.next_action else 0.0
        log.warning(event, attempt=state.attempt_number,
                    sleep_s=round(upcoming, 3), error=str(exc)[:200])
    return before_sleep


def libvirt_policy(stopping: Callable[[], bool], max_wait: float = 10.0,
                   sleep: Sleep = time.sleep) -> tenacity.Retrying:
    """Retry a verb while libvirt is unreachable, until it is back or stopping() says stop.

    A verb never gives up on its own: requeueing it would let the verbs
    queued behind it on the same instance run first. Backoff is exponential
    with jitter, each wait at most max_wait.
    """
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(HypervisorUnavailable),
        wait=backoff(0.2, max_wait, 0.5),
        stop=lambda _state: stopping(),
        before_sleep=_log_before_sleep("libvirt_retry"),
        sleep=sleep,
        reraise=True,
    )


def journal_policy(stopping: Callable[[], bool], sleep: Sleep = time.sleep) -> tenacity.Retrying:
    """Retry a journal read or write until it works (the disk has room again) or stopping().

    Like a verb waiting for libvirt, it never gives up on its own: a
    completion that is not on disk must not be acked, and its place in the
    instance's line is kept. Capped at 5 s: the host takes no work meanwhile.
    """
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(JournalUnavailable),
        wait=backoff(0.2, 5, 0.5),
        stop=lambda _state: stopping(),
        before_sleep=_log_before_sleep("journal_retry"),
        sleep=sleep,
        reraise=True,
    )


def libvirt_reconnect_policy(sleep: Sleep = time.sleep) -> tenacity.Retrying:
    """Reopen a lost libvirt connection forever: backoff with jitter, capped at 5 s."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(HypervisorUnavailable),
        # Capped low: while libvirt is away the host takes no work at all.
        wait=backoff(0.2, 5, 0.5),
        before_sleep=_log_before_sleep("libvirt_reconnect_wait"),
        sleep=sleep,
        reraise=True,
    )


def broker_policy(sleep: Sleep = time.sleep, *, event: str = "broker_reconnect_wait",
                  retry_on: tuple[type[BaseException], ...] = (Exception,),
                  stopping: Callable[[], bool] = lambda: False) -> tenacity.Retrying:
    """Reconnect to the broker until it works or stopping(): backoff with jitter, capped at 30 s.

    sleep should return early once stopping() is true, so that a stop is not
    kept waiting for the end of a 30 s backoff.
    """
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(retry_on),
        wait=backoff(0.5, 30, 1.0),
        stop=lambda _state: stopping(),
        before_sleep=_log_before_sleep(event),
        sleep=sleep,
        reraise=True,
    )


def reconnecting(connect: Callable[[], Any], serve: Callable[[Any], None], *, name: str,
                 stopping: Callable[[], bool], sleep: Sleep = time.sleep) -> None:
    """Open with backoff, serve until the connection is lost, and again, until stopping().

    Each outage gets a fresh policy, so the backoff starts small again: a
    worker that has lived through many outages still comes back at once.
    """
    def attempt() -> Any:
        # Not one more try (up to a connect timeout) once a stop has cut the wait short.
        if stopping():
            raise ConnectionAbortedError("stopping")
        return connect()

    while not stopping():
        try:
            conn = broker_policy(sleep, event=f"{name}_reconnect_wait", stopping=stopping)(attempt)
        except Exception:
            if stopping():
                return  # asked to stop while the broker was away
            raise
        began = time.monotonic()
        try:
            serve(conn)
        except Exception as exc:  # any loss of the connection: log it and connect again
            log.warning(f"{name}_connection_lost", error=f"{type(exc).__name__}: {exc}"[:300])
            if time.monotonic() - began < 1.0:
                # Lost at once (a refused declare, say): do not spin on it.
                sleep(1.0)
        finally:
            with contextlib.suppress(Exception):
                conn.release()
