"""The method table: RPC method name -> handler, event action, schema (rpc/<name>.json)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from handlers import lifecycle, power, queries
from worker.context import Context

Handler = Callable[[Context, dict[str, Any]], Any]

#: The RPC API version this table serves (oslo rules: same major, minor not higher).
API_VERSION = "1.0"


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

    @property
    def schema(self) -> str:
        """The file stem of its args schema in schemas/rpc/."""
        return self.name


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("build_and_run_instance", lifecycle.build_and_run_instance, "create",
           vm_state_on_error="error"),
    Method("pause_instance", power.pause_instance, "pause"),
    Method("unpause_instance", power.unpause_instance, "unpause"),
    Method("suspend_instance", power.suspend_instance, "suspend"),
    Method("resume_instance", power.resume_instance, "resume"),
    Method("reboot_instance", lifecycle.reboot_instance, "reboot"),
    Method("stop_instance", lifecycle.stop_instance, "power_off"),
    Method("start_instance", lifecycle.start_instance, "power_on"),
    Method("terminate_instance", lifecycle.terminate_instance, "delete"),
    Method("get_instance_info", queries.get_instance_info, None, mutating=False),
    Method("list_instances", queries.list_instances, None, mutating=False),
)}
