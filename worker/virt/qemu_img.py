"""qemu-img as a function: run it with a timeout, and read ``qemu-img info`` as JSON.

Errors come back as ImageError with qemu-img's own first lines, never a traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from worker.errors import ImageError


def run(*args: str, timeout: float = 120.0) -> str:
    """qemu-img with args; its stdout. ImageError when it is missing, fails or overruns."""
    tool = shutil.which("qemu-img")
    if tool is None:
        raise ImageError("qemu-img is not installed (Debian package qemu-utils)")
    try:
        done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise ImageError(f"qemu-img {args[0]} took longer than {timeout:.0f}s") from None
    if done.returncode != 0:
        raise ImageError(f"qemu-img {args[0]} failed: {done.stderr.strip()[:300]}")
    return done.stdout


def chain(path: Path, fmt: str) -> list[dict[str, Any]]:
    """``qemu-img info --backing-chain`` of a disk opened as fmt (never probed), top first.

    ``-U`` (force share): a running QEMU holds a write lock on its disk, and
    reading the headers beside it is safe.
    """
    found = json.loads(run("info", "--output=json", "--backing-chain", "-U", "-f", fmt,
                           str(path)))
    layers: list[dict[str, Any]] = found if isinstance(found, list) else [found]
    return layers
