"""Processes by namespace: is one alive, end one, and kill all of a host's namespaces."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from tests.host_link import HostLink


def alive(pid: int) -> bool:
    """True while pid runs (a zombie left for init to reap counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def end(pid: int, sig: int, timeout: float = 20.0) -> None:
    """Send sig to pid and wait until it is gone; SIGKILL after timeout."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline += timeout
        time.sleep(0.02)


def mount_ns_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def net_ns_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def kill_namespace(mount_ns: str | None, link: HostLink | None) -> None:
    """SIGKILL every process in the mount namespace (as /proc/PID/ns/mnt names it) or in
    the link's network namespace; the mounts go with the last of them.

    Refuses the namespaces this process is in: that would be every process of the machine.
    """
    if mount_ns is not None and mount_ns in (mount_ns_of(os.getpid()), mount_ns_of(1)):
        raise RuntimeError(f"refusing to kill the root mount namespace {mount_ns}")
    shared_net = {net_ns_of(os.getpid()), net_ns_of(1)}
    victims = {p for p in link.pids() if net_ns_of(p) not in shared_net} if link else set()
    if mount_ns:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and mount_ns_of(int(entry.name)) == mount_ns:
                victims.add(int(entry.name))
    victims.discard(os.getpid())
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in victims:
        end(pid, signal.SIGKILL)
