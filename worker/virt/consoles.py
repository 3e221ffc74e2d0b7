"""Consoles of an instance: its serial log read back, and a VNC console's connect info.

The log is ``instances_path/<uuid>/console.log``, written (and rotated to
``console.log.0``, ``.1``, ...) by virtlogd; the path is ours, never one a
message or a domain's XML names. Reads are bounded by nova's
``MAX_CONSOLE_BYTES`` whatever the file's size or the lines asked for.
"""

from __future__ import annotations

import errno
import os
import stat
import urllib.parse
import uuid as uuidlib
from pathlib import Path
from typing import Any

from worker import logs
from worker.errors import UnsafePath

log = logs.get(__name__)
#: The console log's file name in the instance's directory (nova's).
CONSOLE_LOG = "console.log"
#: nova's libvirt driver reads at most this much of a console log.
MAX_CONSOLE_BYTES = 100 * 1024


def _tail(path: Path, limit: int) -> bytes:
    """The last limit bytes of the regular file at path; b"" when there is none."""
    try:
        # O_NOFOLLOW: a link planted in place of the log is not followed; O_NONBLOCK: a FIFO
        # planted there does not hang the read (and is refused below).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{path.name} is a symbolic link") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(f"{path.name} is not a regular file")
        start = max(0, info.st_size - limit)
        # pread reads at most limit bytes even when the log grew since fstat.
        return os.pread(fd, limit, start)
    finally:
        os.close(fd)


def read_log(directory: Path, limit: int = MAX_CONSOLE_BYTES) -> bytes:
    """The last limit bytes the console logged in directory.

    When console.log holds fewer (virtlogd has just rotated it), the end of
    console.log.0 comes before it, so a rotation does not cut the tail short.
    """
    newest = _tail(directory / CONSOLE_LOG, limit)
    if len(newest) >= limit:
        return newest
    return _tail(directory / f"{CONSOLE_LOG}.0", limit - len(newest)) + newest


def tail_lines(output: bytes, tail_length: int | None) -> str:
    """nova's compute manager: the last tail_length lines (None: all), ASCII with
    replacement characters."""
    if tail_length is not None:
        output = b"" if tail_length == 0 else b"\n".join(output.split(b"\n")[-tail_length:])
    return output.decode("ascii", "replace")


def access_url(base: str, console_type: str, token: str) -> str | None:
    """nova's ConsoleAuthToken.access_url: base with the token (novnc: in the path query
    parameter, as noVNC 1.1+ reads it); None without a base."""
    if not base:
        return None
    if console_type != "novnc":
        return f"{base}?token={token}"
    parsed = urllib.parse.urlparse(base)
    params = urllib.parse.parse_qs(parsed.query)
    params["path"] = [f"{params.get('path', [''])[0]}?token={token}"]
    return parsed._replace(query=urllib.parse.urlencode(params, doseq=True)).geturl()


def connect_info(host: str, port: int, console_type: str, base_url: str) -> dict[str, Any]:
    """nova's connect info for a console: host, port, internal_access_path, token,
    access_url. The token is nova's shape (a random UUID); no proxy of ours checks it."""
    token = str(uuidlib.uuid4())
    return {"host": host, "port": port, "internal_access_path": None, "token": token,
            "access_url": access_url(base_url, console_type, token)}
