"""nova's own notification classes as the judge of our events (DESIGN.md's recipe).

Every field we send goes through ``cls.fields[name].from_primitive`` and ``coerce`` of the
class nova 34 registers under the payload's name, recursing into nested payloads; the
version must be one nova has for the class (same major, minor not higher).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any


@functools.cache
def _registry() -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nova's imports warn about eventlet and friends
        import nova.notifications.objects.exception  # noqa: F401
        import nova.notifications.objects.flavor  # noqa: F401
        import nova.notifications.objects.instance  # noqa: F401
        import nova.notifications.objects.metrics  # noqa: F401
        import nova.notifications.objects.service  # noqa: F401
        from nova.objects import base

        base.NovaObjectRegistry.register_notification_objects()
        classes = base.NovaObjectRegistry.obj_classes()
    return {name: versions[0] for name, versions in classes.items()}


def judge(payload: dict[str, Any]) -> None:
    """Raise (ValueError, KeyError, AssertionError) unless nova's class accepts payload."""
    name = payload["nova_object.name"]
    assert "nova" == payload["nova_object.namespace"], f"{name}: namespace is not nova"
    cls = _registry()[name]
    major, minor = (int(p) for p in payload["nova_object.version"].split("."))
    ours_major, ours_minor = (int(p) for p in cls.VERSION.split("."))
    assert major == ours_major and minor <= ours_minor, (
        f"{name} {payload['nova_object.version']}: nova 34 has {cls.VERSION}")
    obj = cls.__new__(cls)
    for field, value in payload["nova_object.data"].items():
        if field not in cls.fields:
            raise KeyError(f"{name} has no field {field!r}")
        spec = cls.fields[field]
        if isinstance(value, dict) and "nova_object.name" in value:
            judge(value)
            continue
        if isinstance(value, list) and value and isinstance(value[0], dict) \
                and "nova_object.name" in value[0]:
            for item in value:
                judge(item)
            continue
        spec.coerce(obj, field, spec.from_primitive(obj, field, value))


def missing(payload: dict[str, Any]) -> list[str]:
    """Fields nova's class has that the payload leaves out (a nova consumer expects them)."""
    cls = _registry()[payload["nova_object.name"]]
    return sorted(set(cls.fields) - set(payload["nova_object.data"]))
