"""End-to-end tools: verbs cast at tiny QEMU domains, with the checks of their events."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

# bench/ imports kvm_works from here; tests take it from tests.domains.
from tests.domains import Vm
from tests.domains import kvm_works as kvm_works
from tests.helpers import check_event
from tests.taps import Event, EventTap
from worker.amqp.client import RpcClient
from worker.config import Config

NAME_PREFIX = "cw-e2e-"


@dataclass(frozen=True)
class VerbRun:
    """What one cast produced: its start and end (or error) events and how long it took."""

    start: Event
    end: Event
    elapsed: float

    @property
    def before(self) -> dict[str, Any]:
        """Payload data of the start event."""
        data: dict[str, Any] = self.start["payload"]["nova_object.data"]
        return data

    @property
    def after(self) -> dict[str, Any]:
        """Payload data of the end (or error) event."""
        data: dict[str, Any] = self.end["payload"]["nova_object.data"]
        return data


def states(data: dict[str, Any]) -> tuple[Any, Any]:
    """(power_state, vm_state) of an event payload (nova's "state") or a query's result."""
    return data["power_state"], data["state"] if "state" in data else data["vm_state"]


def of_request(events: list[Event], request_id: str) -> list[Event]:
    """Events caused by one request, in arrival order."""
    return [e for e in events
            if e["payload"]["nova_object.data"].get("request_id") == request_id]


def check_all(tap: EventTap) -> None:
    """Validate every event the tap has seen (service.update included) against schemas/."""
    for event in tap.wait_for(lambda _: True):
        check_event(event)


class Verbs:
    """Casts verbs at Vms through the broker and checks the start and end events each causes."""

    def __init__(self, rpc: RpcClient, tap: EventTap, cfg: Config) -> None:
        self.rpc, self.tap, self.cfg = rpc, tap, cfg

    def cast(self, vm: Vm, method: str, **extra: Any) -> str:
        """Send one cast; its request_id (which every event it causes carries)."""
        sent = self.rpc.cast(self.cfg.host, method, {**vm.args, **extra})
        return str(sent["_context_request_id"])

    def wait(self, vm: Vm, request_id: str, action: str, *, phase: str = "end",
             timeout: float = 60.0) -> list[Event]:
        """The start and end (or error) events of one request, each checked."""
        finals = {f"instance.{action}.end", f"instance.{action}.error"}
        seen = self.tap.wait_for(lambda events: any(
            e["event_type"] in finals for e in of_request(events, request_id)), timeout)
        events = of_request(seen, request_id)
        assert [f"instance.{action}.start", f"instance.{action}.{phase}"] == [
            e["event_type"] for e in events], action
        for event in events:
            check_event(event)
            data = event["payload"]["nova_object.data"]
            assert (vm.uuid, self.cfg.host, action) == (data["uuid"], data["host"],
                                                        event["event_type"].split(".")[1])
            assert self.cfg.event_publisher_id == event["publisher_id"]
        start, end = events
        assert "INFO" == start["priority"]
        assert ("ERROR" if phase == "error" else "INFO") == end["priority"]
        assert None is start["payload"]["nova_object.data"]["fault"]
        if phase == "end":
            assert None is end["payload"]["nova_object.data"]["fault"]
        return events

    def __call__(self, vm: Vm, method: str, action: str, *, phase: str = "end",
                 timeout: float = 60.0, **extra: Any) -> VerbRun:
        """Cast method at vm, wait for its end (or error) event; the run, timed."""
        begun = time.monotonic()
        request_id = self.cast(vm, method, **extra)
        start, end = self.wait(vm, request_id, action, phase=phase, timeout=timeout)
        return VerbRun(start, end, time.monotonic() - begun)
