"""Host network devices over netlink (pyroute2): the one owner of netlink in the worker.

Taps for ``tap``/``ethernet`` VIFs and bridges under ``manage_bridges``. Names come in
checked (vifs.check_ifname); each call opens its own netlink socket, so threads never
share one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from worker import logs
from worker.errors import HypervisorError

log = logs.get(__name__)
_EEXIST, _ENODEV = 17, 19

#: Held while a bridge is made or removed, and while a build records that it uses one,
#: so an emptied bridge is never removed under a build about to plug into it.
BRIDGES = threading.Lock()


@contextlib.contextmanager
def _netlink(what: str) -> Iterator[IPRoute]:
    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise HypervisorError(f"netlink: {what}: {exc.args[-1] if exc.args else exc}",
                              code=exc.code) from None


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def exists(name: str) -> bool:
    """True when a link of this name is in the worker's network namespace."""
    with _netlink(f"look up {name}") as ipr:
        return _index(ipr, name) is not None


def kind(name: str) -> str | None:
    """The link's kind (tun, bridge, ...), None when it is absent or has none."""
    with _netlink(f"look up {name}") as ipr:
        index = _index(ipr, name)
        if index is None:
            return None
        info = ipr.get_links(index)[0].get_attr("IFLA_LINKINFO")
        return None if info is None else info.get_attr("IFLA_INFO_KIND")


def _make_link(name: str, what: str, **kind: str) -> bool:
    """Create link name of kind and set it up; False when it was already there."""
    with _netlink(f"create {what} {name}") as ipr:
        # Looked up first: adding a tuntap that exists attaches to it rather than failing.
        made = _index(ipr, name) is None
        if made:
            try:
                ipr.link("add", ifname=name, **kind)
            except NetlinkError as exc:
                if exc.code != _EEXIST:
                    raise
                made = False  # made by someone else just now
        index = _index(ipr, name)
        if index is not None:
            ipr.link("set", index=index, state="up")
    return made


def make_tap(name: str) -> bool:
    """Create the persistent tap name and set it up; False when it was already there."""
    made = _make_link(name, "tap", kind="tuntap", mode="tap")
    if made:
        log.info("tap_created", devname=name)
    return made


def make_bridge(name: str) -> bool:
    """Create bridge name and set it up; False when it was already there."""
    made = _make_link(name, "bridge", kind="bridge")
    if made:
        log.info("bridge_created", bridge=name)
    return made


def ports(bridge: str) -> list[str]:
    """The names of the links enslaved to bridge (empty when it is absent)."""
    with _netlink(f"list ports of {bridge}") as ipr:
        index = _index(ipr, bridge)
        if index is None:
            return []
        return [str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()
                if link.get_attr("IFLA_MASTER") == index]


def remove(name: str) -> bool:
    """Delete the link name; False when it was not there."""
    with _netlink(f"remove {name}") as ipr:
        index = _index(ipr, name)
        if index is None:
            return False
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != _ENODEV:
                raise
            return False
    log.info("link_removed", devname=name)
    return True
