"""What the dispatcher tells whoever counts: each message's outcome, each verb's time.

The core imports no metrics library; the service hands the dispatcher an object with
these methods (worker/ops/metrics.py has one), or it gets NoMeter, which counts nothing.
"""

from __future__ import annotations

from typing import Literal, Protocol

#: How a message ended: its verb succeeded or failed, it was refused, or it was a repeat.
Outcome = Literal["ok", "error", "rejected", "duplicate"]


class Meter(Protocol):
    """Told on the verb threads (and the consumer thread for a repeat); must not block."""

    def message(self, method: str, outcome: Outcome, seconds: float | None = None) -> None:
        """One message ended so; seconds: how long its verb ran (ok and error only)."""

    def redelivery_absorbed(self) -> None:
        """A delivery the broker marked redelivered did not run its verb again."""


class NoMeter:
    """Counts nothing: for a dispatcher nobody watches."""

    def message(self, method: str, outcome: Outcome, seconds: float | None = None) -> None:
        """Nothing."""

    def redelivery_absorbed(self) -> None:
        """Nothing."""
