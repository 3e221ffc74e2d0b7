"""One builder per event payload in schemas/events/: the nova_object.data each event carries.

Pure: values in, a dict out. The field names are the contract that event consumers read;
each builder's output is validated against its schema by the tests.
"""

from __future__ import annotations

from typing import Any

from worker.codec.notifications import fault


def instance_action(*, uuid: str | None, name: str | None, host: str, power_state: str | None,
                    vm_state: str | None, action: str, request_id: str | None,
                    error: BaseException | None = None) -> dict[str, Any]:
    """InstanceActionPayload: an instance around one verb (instance.<action>.<phase>)."""
    return {"uuid": uuid, "name": name, "host": host, "power_state": power_state,
            "vm_state": vm_state, "action": action, "request_id": request_id,
            "fault": fault(error) if error is not None else None}


def instance_update(*, uuid: str, name: str | None, host: str, power_state: str | None,
                    old_power_state: str | None, vm_state: str | None,
                    cause: str) -> dict[str, Any]:
    """InstanceUpdatePayload: a state change no verb of ours caused (instance.update)."""
    return {"uuid": uuid, "name": name, "host": host, "power_state": power_state,
            "old_power_state": old_power_state, "vm_state": vm_state, "cause": cause,
            "request_id": None}


def service_status(*, host: str, binary: str, topic: str, up: bool,
                   disabled_reason: str | None, version: str) -> dict[str, Any]:
    """ServiceStatusPayload: the host up or down, and why it is disabled if it is."""
    return {"host": host, "binary": binary, "topic": topic, "up": up,
            "disabled": disabled_reason is not None, "disabled_reason": disabled_reason,
            "version": version}


def rpc_reject(*, host: str, method: str | None, unique_id: str | None,
               request_id: str | None, instance_uuid: Any,
               error: BaseException) -> dict[str, Any]:
    """RpcRejectPayload: a cast that could not be served (ours; nova has no such class)."""
    return {"host": host, "method": method, "unique_id": unique_id, "request_id": request_id,
            "instance_uuid": instance_uuid if isinstance(instance_uuid, str) else None,
            "fault": fault(error)}
