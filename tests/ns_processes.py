"""Processes by namespace: is one alive, end one, and kill all of a host's namespaces."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from tests.host_link import HostLink


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of pid, or None when there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]


def identity(pid: int) -> str | None:
    """"PID STARTTIME" of a live process: it names that process even after PIDs wrap."""
    found = _stat(pid)
    return None if found is None or found[0] == "Z" else f"{pid} {found[1]}"


def same_process(ident: str | None) -> int | None:
    """The PID of the process that identity() named, while it still runs."""
    if not ident:
        return None
    pid = int(ident.split()[0])
    return pid if identity(pid) == ident else None


def alive(pid: int) -> bool:
    """True while pid runs (a zombie left for init to reap counts as gone)."""
    found = _stat(pid)
    return found is not None and found[0] != "Z"


def end(pid: int, sig: int, timeout: float = 20.0) -> None:
    """Send sig to pid and wait until it is gone; SIGKILL after timeout.

    PIDs wrap around within minutes on this machine: the wait is for the process that
    had pid when asked (its start time), never for a newer one that got the number.
    """
    first = _stat(pid)
    if first is None or first[0] == "Z":
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while (now := _stat(pid)) is not None and now[0] != "Z" and now[1] == first[1]:
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

    A mount namespace's name is reused once it is gone: pass one only while a process
    known to be in it (the keeper) still runs. Refuses the namespaces this process is
    in: that would be every process of the machine.
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
