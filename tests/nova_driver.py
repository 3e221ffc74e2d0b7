"""nova's libvirt driver code as the judge of our host resources: its own methods, run on a
host whose capabilities XML a test hands it (no libvirt connection of nova's own)."""

from __future__ import annotations

import warnings
from typing import Any


def driver_view(caps_xml: str) -> Any:
    """nova's LibvirtDriver _get_cpu_info and _get_instance_capabilities for caps_xml."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nova's imports warn about eventlet and friends
        from nova.virt.libvirt import config as vconfig
        from nova.virt.libvirt import driver

    caps = vconfig.LibvirtConfigCaps()
    caps.parse_str(caps_xml)

    class Host:
        def get_capabilities(self) -> Any:
            return caps

    class View:
        _host = Host()
        cpu_info = driver.LibvirtDriver._get_cpu_info
        instance_caps = driver.LibvirtDriver._get_instance_capabilities

    return View()


def nova_cpu_info(caps_xml: str) -> dict[str, Any]:
    """nova's cpu_info dict (features sorted: nova has them as a set)."""
    info: dict[str, Any] = driver_view(caps_xml).cpu_info()
    return {**info, "features": sorted(info["features"])}


def nova_supported_instances(caps_xml: str) -> list[list[str]]:
    """nova's supported_instances, as the lists JSON makes of its tuples."""
    return [list(t) for t in driver_view(caps_xml).instance_caps()]
