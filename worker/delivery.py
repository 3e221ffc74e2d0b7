"""A delivered message as the dispatcher sees it, apart from any broker library."""

from __future__ import annotations

from collections.abc import Callable
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
