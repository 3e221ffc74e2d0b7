"""The storage tools the worker runs (qemu-img, mkfs, mkswap): found, timed out, and their
failure said in one line, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess

from worker.errors import ImageError

#: What the Debian package of each tool is, for the error that says it is missing.
_PACKAGES = {"qemu-img": "qemu-utils", "mkfs.ext4": "e2fsprogs", "mkfs.ext3": "e2fsprogs",
             "mkfs.ext2": "e2fsprogs", "mkfs.vfat": "dosfstools", "mkswap": "util-linux"}


def run_tool(tool: str, *args: str, timeout: float = 120.0) -> str:
    """Run a storage tool with a timeout; its stdout, or ImageError saying what went wrong."""
    found = shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}") if os.access(p, os.X_OK)), None)
    if found is None:
        raise ImageError(f"{tool} is not installed (Debian package {_PACKAGES.get(tool, tool)})")
    try:
        done = subprocess.run([found, *args], capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise ImageError(f"{tool} {args[0] if args else ''} took longer than {timeout:.0f}s") \
            from None
    if done.returncode != 0:
        raise ImageError(f"{tool} {args[0] if args else ''} failed: "
                         f"{(done.stderr or done.stdout).strip()[:300]}")
    return done.stdout
