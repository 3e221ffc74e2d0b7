"""qemu-img as a function: run it with a timeout, and read ``qemu-img info`` as JSON.

Errors come back as ImageError with qemu-img's own first lines, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worker.virt.tools import run_tool


def run(*args: str, timeout: float = 120.0) -> str:
    """qemu-img with args; its stdout. ImageError when it is missing, fails or overruns."""
    return run_tool("qemu-img", *args, timeout=timeout)


def chain(path: Path, fmt: str) -> list[dict[str, Any]]:
    """``qemu-img info --backing-chain`` of a disk opened as fmt (never probed), top first.

    ``-U`` (force share): a running QEMU holds a write lock on its disk, and
    reading the headers beside it is safe.
    """
    found = json.loads(run("info", "--output=json", "--backing-chain", "-U", "-f", fmt,
                           str(path)))
    layers: list[dict[str, Any]] = found if isinstance(found, list) else [found]
    return layers
