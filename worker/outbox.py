"""What the dispatcher publishes through: the Outbox protocol and a message's confirm count."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

from worker.journal import Outgoing
from worker.publisher import Held


class Outbox(Protocol):
    """Where the dispatcher hands messages to publish (the Publisher)."""

    def send(self, out: Outgoing) -> Future[None]:
        """Publish; the future resolves on the broker's confirm."""

    def hold(self, out: Outgoing, seconds: float) -> Held:
        """Publish within seconds, or at release(), whichever comes first."""

    def release(self, held: Held) -> Future[None]:
        """Queue a held message now."""

    def watch_call(self, reply_q: str, msg_id: str, interval: float) -> int:
        """Start call-monitor heartbeats."""

    def unwatch_call(self, handle: int) -> None:
        """Stop call-monitor heartbeats."""


class Confirms:
    """Counts one message's publisher confirms; calls back once, on the last or first failure."""

    def __init__(self, expected: int, then: Callable[[BaseException | None], None]) -> None:
        self._left = expected
        self._then = then
        self._lock = threading.Lock()
        if expected == 0:
            then(None)

    def done(self, future: Future[None]) -> None:
        """A done-callback for each publish's future."""
        error = future.exception()
        with self._lock:
            if self._left <= 0:
                return  # already settled by an earlier failure
            self._left = 0 if error is not None else self._left - 1
            finished = self._left == 0
        if finished:
            self._then(error)
