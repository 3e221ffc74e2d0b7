"""What the dispatcher publishes through: the Outbox protocol (the Publisher implements it)."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol

from worker.messages import Held, Outgoing


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
