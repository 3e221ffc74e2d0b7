"""How a handler asks another host's worker something: the interface the service wires.

Live migration is a conversation between two workers (the destination asks
the source to check, the source asks the destination to prepare, take over
or roll back). Handlers talk through this interface and never import the
wire; ``worker.amqp.peers`` is the one implementation, sending nova's own
RPC messages to the other host's ``compute-alt.<host>`` queue, where they
are journaled and ordered like any other message.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol


class Peers(Protocol):
    """Calls and casts to the worker of another host."""

    def call(self, host: str, method: str, args: dict[str, Any], *, timeout: float,
             request_id: str | None = None) -> Any:
        """Send a call and wait for its result.

        PeerFailed carries the other worker's failure (under its class);
        PeerTimeout when no answer came within timeout; PeerError when the
        broker could not be reached.
        """

    def cast(self, host: str, method: str, args: dict[str, Any], *,
             request_id: str | None = None) -> None:
        """Send a cast (PeerError when the broker could not be reached)."""


class Arrivals:
    """Instances this host is taking in by live migration, between pre and post (or rollback).

    Meanwhile the domain appears here paused and then running as libvirt moves
    it: the state watch leaves such an instance alone, so consumers do not see
    a paused instance that was never paused. Thread-safe; kept in memory only.
    """

    def __init__(self) -> None:
        self._uuids: set[str] = set()
        self._lock = threading.Lock()

    def add(self, uuid: str) -> None:
        with self._lock:
            self._uuids.add(uuid)

    def discard(self, uuid: str) -> None:
        with self._lock:
            self._uuids.discard(uuid)

    def __contains__(self, uuid: object) -> bool:
        with self._lock:
            return uuid in self._uuids
