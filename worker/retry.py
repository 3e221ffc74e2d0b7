"""Named tenacity policies, declared once; tests pass their own sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import tenacity

from worker import logs
from worker.errors import HypervisorUnavailable

log = logs.get(__name__)
Sleep = Callable[[float], None]


def _log_before_sleep(event: str) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(event, attempt=state.attempt_number,
                    sleep_s=round(state.upcoming_sleep, 3), error=str(exc)[:200])
    return before_sleep


def libvirt_policy(max_delay: float, sleep: Sleep = time.sleep) -> tenacity.Retrying:
    """Retry while libvirt is unreachable: exponential backoff with jitter, up to max_delay."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(HypervisorUnavailable),
        wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=10, jitter=0.5),
        stop=tenacity.stop_after_delay(max_delay),
        before_sleep=_log_before_sleep("libvirt_retry"),
        sleep=sleep,
        reraise=True,
    )


def libvirt_reconnect_policy(sleep: Sleep = time.sleep) -> tenacity.Retrying:
    """Reopen a lost libvirt connection forever: backoff with jitter, capped at 30 s."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(HypervisorUnavailable),
        wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=30, jitter=0.5),
        before_sleep=_log_before_sleep("libvirt_reconnect_wait"),
        sleep=sleep,
        reraise=True,
    )


def broker_policy(sleep: Sleep = time.sleep, *, event: str = "broker_reconnect_wait",
                  retry_on: tuple[type[BaseException], ...] = (Exception,)) -> tenacity.Retrying:
    """Reconnect to the broker forever: exponential backoff with jitter, capped at 30 s."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(retry_on),
        wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=30, jitter=1.0),
        before_sleep=_log_before_sleep(event),
        sleep=sleep,
        reraise=True,
    )


def backoff_delays(policy: tenacity.Retrying, attempts: int) -> list[float]:
    """The waits a policy would take over attempts failures (for tests and docs)."""
    delays: list[float] = []
    state: Any = tenacity.RetryCallState(policy, fn=None, args=(), kwargs={})
    for number in range(1, attempts + 1):
        state.attempt_number = number
        delays.append(float(policy.wait(state)))
    return delays
