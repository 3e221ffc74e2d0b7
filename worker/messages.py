"""The seam values both sides use: a delivery in, a message out, a held one.

Imports nothing of ours, so the AMQP side and the core can both stand on it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

Settlement = Literal["ack", "reject", "requeue"]
Settle = Callable[[Settlement], None]


@dataclass(frozen=True)
class Delivery:
    """Body, whether the broker has delivered it before, and how to settle it later."""

    body: bytes
    redelivered: bool
    #: Thread-safe: records the settlement; the consuming thread carries it out.
    settle: Settle
    headers: dict[str, Any] = field(default_factory=dict)
    #: Where it was published: a signature covers these.
    exchange: str = ""
    routing_key: str = ""


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: where it goes and its body."""

    exchange: str
    routing_key: str
    body: bytes
    #: Replies are mandatory: an unroutable reply is reported, not dropped silently.
    mandatory: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain data for the journal record."""
        return {"x": self.exchange, "rk": self.routing_key, "b": self.body.decode(),
                "m": self.mandatory}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outgoing:
        """Back from a journal record."""
        return cls(str(data["x"]), str(data["rk"]), str(data["b"]).encode(), bool(data["m"]))


@dataclass(eq=False)
class Held:
    """A message given to hold(): published at its deadline or at release(), whichever first."""

    out: Outgoing
    deadline: float
    future: Future[None] = field(default_factory=Future)
    released: bool = False
