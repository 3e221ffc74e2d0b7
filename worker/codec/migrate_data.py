"""nova's LibvirtLiveMigrateData: what the hosts of a live migration tell each other.

The conductor passes it from the destination's check to the source's, then to
the source's live_migration, which passes it to the destination's
pre_live_migration and rollback; nova's client deserializes every one of them
with nova's own class. So the worker answers with that class's primitive,
holding only fields nova declares, each of the type nova coerces it to.
"""

from __future__ import annotations

from typing import Any

#: nova 34's version of LibvirtLiveMigrateData.
VERSION = "1.14"
NAME = "LibvirtLiveMigrateData"
#: The fields the worker reads or writes, with their type as nova declares them.
FIELDS: dict[str, tuple[type, ...]] = {
    "filename": (str,),
    "image_type": (str,),
    "block_migration": (bool,),
    "disk_over_commit": (bool,),
    "disk_available_mb": (int, type(None)),
    "is_shared_instance_path": (bool,),
    "is_shared_block_storage": (bool,),
    "is_volume_backed": (bool,),
    "instance_relative_path": (str,),
    "graphics_listen_addr_vnc": (str, type(None)),
    "serial_listen_addr": (str, type(None)),
    "serial_listen_ports": (list,),
    "target_connect_addr": (str, type(None)),
    "supported_perf_events": (list,),
    "wait_for_vif_plugged": (bool,),
    # nova's VIFMigrateData list; the source's VIFs for a destination without its record.
    "vifs": (list,),
}


def fields(given: Any) -> dict[str, Any]:
    """The known fields of a plain (unwrapped) migrate data; the schema checked their types."""
    if not isinstance(given, dict):
        return {}
    return {key: value for key, value in given.items() if key in FIELDS
            and isinstance(value, FIELDS[key]) and not (FIELDS[key] == (int, type(None))
                                                         and isinstance(value, bool))}


def primitive(data: dict[str, Any]) -> dict[str, Any]:
    """nova's LibvirtLiveMigrateData primitive of the known fields in data."""
    known = fields(data)
    # nova's serializer lists the fields set; its deserializer reads only what is there.
    return {"nova_object.name": NAME, "nova_object.namespace": "nova",
            "nova_object.version": VERSION, "nova_object.data": known,
            "nova_object.changes": sorted(known)}
