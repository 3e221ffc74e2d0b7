"""One builder per event payload: nova's versioned notification payloads, field for field.

nova's class names, versions (nova 34's, or a lower minor of the same major) and field
names, namespace ``nova``, so a consumer written for nova's versioned notifications reads
ours unchanged; tests/nova_judge.py holds every payload to nova's own field definitions.
Only ``RpcRejectPayload`` is ours (nova has no such event) and says so by its namespace.

Pure: plain values in, primitives out. ``instance`` is nova's Instance as the request
carried it (made plain), or what the worker knows of a domain it did not get one for.
"""

from __future__ import annotations

import datetime
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

from worker.errors import WorkerError

NOVA = "nova"
OURS = "compute_worker"
#: The version of each class we send: nova 34's.
VERSIONS = {
    "InstanceActionPayload": "1.9", "InstanceCreatePayload": "1.13",
    "InstanceUpdatePayload": "2.1", "InstanceStateUpdatePayload": "1.0",
    "AuditPeriodPayload": "1.0", "FlavorPayload": "1.4", "ExceptionPayload": "1.1",
    "ServiceStatusPayload": "1.1", "RpcRejectPayload": "1.0",
    "InstanceActionVolumePayload": "1.7", "InstanceActionSnapshotPayload": "1.10",
    "InstanceActionRescuePayload": "1.4",
}
#: Where compute-worker adds to a nova payload: beside nova_object.data, where nova's
#: deserializer never looks, so nova's class still accepts the payload as it is.
EXTRA_KEY = "compute_worker.details"
#: nova 34's compute service version (nova/objects/service.py), the API this worker serves.
SERVICE_VERSION = 74
_SERVICE_UUIDS = uuidlib.UUID("9b7e4bd2-34c5-4d1e-8d0a-6f0b1d2c3e4f")


@dataclass(frozen=True)
class Caller:
    """Who asked for the action: nova's request context as the message carried it."""

    request_id: str | None = None
    user_id: str | None = None
    project_id: str | None = None


def versioned(name: str, data: dict[str, Any], namespace: str = NOVA) -> dict[str, Any]:
    """A payload as nova's serializer writes it."""
    return {"nova_object.name": name, "nova_object.namespace": namespace,
            "nova_object.version": VERSIONS[name], "nova_object.data": data}


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def flavor(instance: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """FlavorPayload from the instance's Flavor, else from its own sizes and the domain's."""
    raw = instance.get("flavor")
    f: dict[str, Any] = raw if isinstance(raw, dict) else {}
    specs = f.get("extra_specs")
    return versioned("FlavorPayload", {
        "flavorid": _str(f.get("flavorid")),
        "memory_mb": _int(f.get("memory_mb", instance.get("memory_mb", live.get("memory_mb")))),
        "vcpus": _int(f.get("vcpus", instance.get("vcpus", live.get("vcpus")))),
        "root_gb": _int(f.get("root_gb", instance.get("root_gb"))),
        "ephemeral_gb": _int(f.get("ephemeral_gb", instance.get("ephemeral_gb"))),
        "name": _str(f.get("name")) or "",
        "swap": _int(f.get("swap")) or 0,
        "rxtx_factor": f.get("rxtx_factor") if isinstance(f.get("rxtx_factor"), float) else None,
        "vcpu_weight": _int(f.get("vcpu_weight")),
        "disabled": f.get("disabled") is True,
        "is_public": f.get("is_public") is not False,
        "extra_specs": ({str(k): str(v) for k, v in specs.items()}
                        if isinstance(specs, dict) else None),
        "projects": None,
        "description": _str(f.get("description")),
    })


def exception(error: BaseException, function_name: str) -> dict[str, Any]:
    """ExceptionPayload: the fault of an error event; never a traceback."""
    if isinstance(error, WorkerError):
        text, module = error.message, error.wire_module
    else:  # internal faults are named, not detailed: their text may hold paths or XML
        text, module = f"internal error ({type(error).__name__})", "builtins"
    return versioned("ExceptionPayload", {
        "module_name": module,
        "function_name": function_name,
        "exception": type(error).__name__,
        "exception_message": text[:1024],
        "traceback": "",
    })


def _instance(instance: dict[str, Any], live: dict[str, Any], host: str,
              caller: Caller, task_state: str | None) -> dict[str, Any]:
    """nova's InstancePayload fields, from the request's Instance and the domain now."""
    metadata = instance.get("metadata")
    return {
        "uuid": live.get("uuid") or instance.get("uuid"),
        "user_id": _str(instance.get("user_id")),
        "tenant_id": _str(instance.get("project_id")),
        "reservation_id": _str(instance.get("reservation_id")),
        "display_name": _str(instance.get("display_name")),
        "display_description": _str(instance.get("display_description")),
        "host_name": _str(instance.get("hostname")),
        "host": host,
        "node": _str(instance.get("node")) or host,
        "os_type": _str(instance.get("os_type")),
        "architecture": _str(instance.get("architecture")),
        "availability_zone": _str(instance.get("availability_zone")),
        "flavor": flavor(instance, live),
        "image_uuid": _str(instance.get("image_ref")) or None,
        "key_name": _str(instance.get("key_name")),
        "kernel_id": _str(instance.get("kernel_id")) or None,
        "ramdisk_id": _str(instance.get("ramdisk_id")) or None,
        "created_at": _str(instance.get("created_at")),
        "launched_at": _str(instance.get("launched_at")),
        "terminated_at": _str(instance.get("terminated_at")),
        "deleted_at": _str(instance.get("deleted_at")),
        "updated_at": _str(instance.get("updated_at")),
        "state": live.get("vm_state"),
        "power_state": live.get("power_state"),
        "task_state": task_state,
        "progress": None,
        "ip_addresses": [],
        "block_devices": [],
        "metadata": ({str(k): str(v) for k, v in metadata.items()}
                     if isinstance(metadata, dict) else {}),
        "locked": instance.get("locked") is True,
        "auto_disk_config": "AUTO" if instance.get("auto_disk_config") is True else "MANUAL",
        "request_id": caller.request_id,
        "action_initiator_user": caller.user_id,
        "action_initiator_project": caller.project_id,
        "locked_reason": None,
        "shares": [],
    }


def _text_arg(args: dict[str, Any], *path: str) -> str | None:
    value: Any = args
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, str) else None


def _action_class(action: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """nova's payload class for instance.<action>.*, and the fields it adds to an instance."""
    if action == "volume_attach":
        return "InstanceActionVolumePayload", {"volume_id": _text_arg(args, "bdm", "volume_id")}
    if action == "volume_detach":
        return "InstanceActionVolumePayload", {"volume_id": _text_arg(args, "volume_id")}
    if action == "snapshot":
        return "InstanceActionSnapshotPayload", {
            "snapshot_image_id": _text_arg(args, "image_id")}
    if action == "rescue":
        # As nova's manager sends it: the image the request named (null: the default one).
        return "InstanceActionRescuePayload", {
            "rescue_image_ref": _text_arg(args, "rescue_image_ref")}
    return "InstanceActionPayload", {}


def instance_action(*, instance: dict[str, Any], live: dict[str, Any], host: str,
                    caller: Caller, action: str, task_state: str | None = None,
                    error: BaseException | None = None, domain_name: str | None = None,
                    function_name: str | None = None,
                    args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The payload of instance.<action>.<phase>: nova's class for the action.

    live is the instance as the verb left it; its ``details`` (what a
    snapshot made, say) go under EXTRA_KEY.
    """
    data = _instance(instance, live, host, caller, task_state)
    # function_name: the RPC method that failed (stop_instance for action power_off).
    data["fault"] = (exception(error, function_name or action) if error is not None
                     else None)
    if action == "create":
        data.update(keypairs=[], tags=[], trusted_image_certificates=None,
                    instance_name=domain_name or live.get("name"))
        payload = versioned("InstanceCreatePayload", data)
    else:
        name, fields = _action_class(action, args or {})
        data.update(fields)
        payload = versioned(name, data)
    details = live.get("details")
    if isinstance(details, dict) and details:
        payload[EXTRA_KEY] = details
    return payload


def instance_update(*, instance: dict[str, Any], live: dict[str, Any], host: str,
                    old_state: str | None, audit_from: datetime.datetime,
                    now: datetime.datetime) -> dict[str, Any]:
    """InstanceUpdatePayload: a state change no verb of ours caused (instance.update)."""
    data = _instance(instance, live, host, Caller(), None)
    data.update(
        state_update=versioned("InstanceStateUpdatePayload", {
            "old_state": old_state, "state": live.get("vm_state"),
            "old_task_state": None, "new_task_state": None}),
        audit_period=versioned("AuditPeriodPayload", {
            "audit_period_beginning": _iso(audit_from), "audit_period_ending": _iso(now)}),
        old_display_name=None, tags=[])
    return versioned("InstanceUpdatePayload", data)


def service_status(*, host: str, binary: str, topic: str, report_count: int,
                   disabled_reason: str | None, last_seen_up: datetime.datetime,
                   broker: dict[str, str] | None = None) -> dict[str, Any]:
    """ServiceStatusPayload: this host's compute service, and why it is disabled if it is.

    broker (connection -> host:port of its node) goes under EXTRA_KEY: which cluster node
    the host is on is ours to say; nova's payload has no place for it.
    """
    payload = versioned("ServiceStatusPayload", {
        "host": host, "binary": binary, "topic": topic, "report_count": report_count,
        "disabled": disabled_reason is not None, "disabled_reason": disabled_reason,
        "availability_zone": None, "last_seen_up": _iso(last_seen_up), "forced_down": False,
        "version": SERVICE_VERSION,
        "uuid": str(uuidlib.uuid5(_SERVICE_UUIDS, f"{binary}/{host}")),
    })
    if broker:
        payload[EXTRA_KEY] = {"broker": dict(broker)}
    return payload


def rpc_reject(*, host: str, method: str | None, unique_id: str | None,
               request_id: str | None, instance_uuid: Any,
               error: BaseException) -> dict[str, Any]:
    """RpcRejectPayload: a cast that could not be served (ours; nova has no such class)."""
    text = (error.message if isinstance(error, WorkerError)
            else f"internal error ({type(error).__name__})")
    return versioned("RpcRejectPayload", {
        "host": host, "method": method, "unique_id": unique_id, "request_id": request_id,
        "instance_uuid": instance_uuid if isinstance(instance_uuid, str) else None,
        "fault": {"exception": type(error).__name__, "exception_message": text[:1024]},
    }, namespace=OURS)
