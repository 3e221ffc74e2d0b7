"""The method table's type and oslo's lookup rule; the table itself is handed in (handlers/)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from worker.codec.envelope import Request
from worker.core.context import Context
from worker.errors import NoSuchMethod, UnsupportedVersion

Handler = Callable[[Context, dict[str, Any]], Any]


@dataclass(frozen=True)
class Answer:
    """A handler's result when a call's reply is not the instance state its event needs
    (attach_interface answers nova's VIF, its event says the instance's state)."""

    state: dict[str, Any]
    reply: Any


@dataclass(frozen=True)
class Method:
    """One RPC method: its handler and how the dispatcher treats it."""

    name: str
    handler: Handler
    #: nova's action name for instance.<action>.<phase> events; None: no events.
    action: str | None
    #: Changes state: journaled so a redelivery does not run it twice.
    mutating: bool = True
    #: vm_state its error event reports (a failed build leaves nothing usable: nova's ERROR).
    vm_state_on_error: str | None = None
    #: Waits in its instance's line. Queries, console reads and aborts do not: an answer
    #: must not wait behind a 60 s clean stop (or, later, a migration it would abort).
    ordered: bool = True
    #: Its result is the instance's state here now, for the state watch, though it has no
    #: events of its own (a live migration, whose events are its phases).
    tracks_state: bool = False

    @property
    def schema(self) -> str:
        """The file stem of its args schema in schemas/rpc/."""
        return self.name


def _parts(version: str) -> tuple[int, int, int]:
    numbers = [int(p) for p in version.split(".")] + [0]
    return numbers[0], numbers[1], numbers[2]


@dataclass(frozen=True)
class MethodTable:
    """The RPC API one dispatcher serves: a version and its methods by name."""

    version: str
    methods: Mapping[str, Method]

    def compatible(self, version: str) -> bool:
        """oslo's rule: same major; minor (then revision) not above ours."""
        major, minor, rev = _parts(version)
        our_major, our_minor, our_rev = _parts(self.version)
        return major == our_major and (minor, rev) <= (our_minor, our_rev)

    def lookup(self, req: Request) -> Method:
        """The entry for a request, checked in oslo's order.

        A namespace we do not serve, or an incompatible version, is
        UnsupportedVersion; only a compatible request for a method we lack is
        NoSuchMethod. Clients branch on these names.
        """
        if req.namespace is not None or not self.compatible(req.version):
            raise UnsupportedVersion(req.version, req.method)
        method = self.methods.get(req.method)
        if method is None:
            raise NoSuchMethod(req.method)
        return method
