"""The host's own payloads: nova's MetricsPayload (metrics.update) and our resource report.

Pure, as codec.payloads: plain values in, primitives out.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

NOVA = "nova"
OURS = "compute_worker"
#: nova 34's MetricsPayload and MetricPayload; HostResourcesPayload is ours.
VERSIONS = {"MetricsPayload": "1.0", "MetricPayload": "1.0", "HostResourcesPayload": "1.0"}
#: nova's metric source: CONF.compute_driver of a libvirt host.
SOURCE = "libvirt.LibvirtDriver"


def _versioned(name: str, data: dict[str, Any], namespace: str = NOVA) -> dict[str, Any]:
    return {"nova_object.name": name, "nova_object.namespace": namespace,
            "nova_object.version": VERSIONS[name], "nova_object.data": data}


def _iso(moment: datetime.datetime) -> str:
    """nova's DateTimeField on the wire: ``2012-10-29T13:42:11Z``."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def metrics(*, host: str, host_ip: str, nodename: str, values: Mapping[str, int],
            timestamp: datetime.datetime, source: str = SOURCE) -> dict[str, Any]:
    """MetricsPayload: one MetricPayload per metric (nova's cpu.* names), all of one sample."""
    return _versioned("MetricsPayload", {
        "host": host, "host_ip": host_ip, "nodename": nodename,
        "metrics": [_versioned("MetricPayload", {
            "name": name, "value": int(value), "numa_membw_values": None,
            "timestamp": _iso(timestamp), "source": source}) for name, value in values.items()],
    })


def host_resources(*, host: str, nodename: str, resources: dict[str, Any],
                   trigger: str) -> dict[str, Any]:
    """HostResourcesPayload (ours): get_available_resource's dict, and why it was sent."""
    return _versioned("HostResourcesPayload", {
        "host": host, "nodename": nodename, "trigger": trigger, "resources": resources,
    }, namespace=OURS)
