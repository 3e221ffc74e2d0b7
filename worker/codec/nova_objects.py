"""nova's versioned-object primitives, as nova's serializer puts them on the wire, made plain.

``{"nova_object.name": "Instance", "nova_object.namespace": "nova", "nova_object.version":
"2.8", "nova_object.data": {...}, "nova_object.changes": [...]}`` becomes its data, with
nested objects (an Instance's Flavor) made plain too, and an object list
(``BlockDeviceMappingList``) becomes the list of its ``objects``. The schemas have checked
the envelopes first; this only unwraps them, to a bounded depth.
"""

from __future__ import annotations

from typing import Any

from worker.errors import InvalidArguments

DATA = "nova_object.data"
NAME = "nova_object.name"
#: nova nests objects a few levels at most (a list of mappings, an instance's flavor).
MAX_DEPTH = 8


def is_primitive(value: Any) -> bool:
    """True for a nova object primitive (its envelope, not yet unwrapped)."""
    return isinstance(value, dict) and NAME in value and DATA in value


def plain(value: Any, depth: int = 0) -> Any:
    """value with every nova object primitive in it replaced by its plain data."""
    if depth > MAX_DEPTH:
        raise InvalidArguments(f"nova objects nested deeper than {MAX_DEPTH} levels")
    if is_primitive(value):
        data = value[DATA]
        if not isinstance(data, dict):
            raise InvalidArguments(f"{value.get(NAME)!s:.40}: nova_object.data is not an object")
        if str(value.get(NAME, "")).endswith("List") and isinstance(data.get("objects"), list):
            return [plain(item, depth + 1) for item in data["objects"]]
        return {key: plain(item, depth + 1) for key, item in data.items()}
    if isinstance(value, list) and any(is_primitive(item) for item in value):
        return [plain(item, depth + 1) for item in value]
    return value


def plain_args(args: dict[str, Any]) -> dict[str, Any]:
    """An RPC call's keyword arguments with nova's objects made plain (one level per kwarg)."""
    return {key: plain(value) for key, value in args.items()}


def instance_uuid(instance: Any) -> str | None:
    """The uuid of an ``instance`` argument, enveloped or plain, when it is a string."""
    if is_primitive(instance):
        instance = instance[DATA]
    if isinstance(instance, dict) and isinstance(instance.get("uuid"), str):
        return str(instance["uuid"])
    return None
