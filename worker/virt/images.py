"""Disks for new instances: qcow2 files made by qemu-img, inside the instance's directory.

A root disk is either blank (a size) or a copy-on-write overlay on a base
image from ``images_path`` (the 2011 driver's ``_base`` cache, without the
image service: base images are put there by whoever runs the host). Base
images are only ever read; every file the worker writes is under
``instances_path/<uuid>/``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from worker import logs
from worker.errors import ImageError, UnsafePath
from worker.virt.paths import inside

log = logs.get(__name__)
# Formats qemu may read a base image as; anything else (vmdk, vdi, ...) is
# refused rather than probed, so a crafted file cannot choose how it is opened.
BASE_FORMATS = ("raw", "qcow2")
_TIMEOUT = 120.0


def _qemu_img(*args: str) -> str:
    tool = shutil.which("qemu-img")
    if tool is None:
        raise ImageError("qemu-img is not installed (Debian package qemu-utils)")
    try:
        done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=_TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired:
        raise ImageError(f"qemu-img {args[0]} took longer than {_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        raise ImageError(f"qemu-img {args[0]} failed: {done.stderr.strip()[:300]}")
    return done.stdout


def base_image(images_path: str, image_id: str) -> tuple[Path, str]:
    """The base image file for an id, and its format; ImageError when absent or unusable."""
    try:
        path = inside(Path(images_path).resolve(), image_id)
    except UnsafePath:
        raise ImageError(f"image id {image_id!r:.80} does not name a file in images_path") \
            from None
    if not path.is_file():
        raise ImageError(f"image {image_id} is not in {images_path}")
    info = json.loads(_qemu_img("info", "--output=json", str(path)))
    fmt = str(info.get("format"))
    if fmt not in BASE_FORMATS:
        raise ImageError(f"image {image_id} is {fmt}; base images must be raw or qcow2")
    if info.get("backing-filename"):
        # Its chain would reach files we never checked.
        raise ImageError(f"image {image_id} has a backing file of its own")
    return path, fmt


def create_root_disk(target: Path, size_gb: int, base: tuple[Path, str] | None) -> Path:
    """Make target as a qcow2 disk: an overlay on base, grown to size_gb when that is larger."""
    args = ["create", "-q", "-f", "qcow2"]
    if base is not None:
        args += ["-b", str(base[0]), "-F", base[1]]
    args.append(str(target))
    if size_gb > 0:
        args.append(f"{size_gb}G")
    elif base is None:
        raise ImageError("a root disk needs a base image or a size")
    if base is not None and size_gb > 0:
        virtual = json.loads(_qemu_img("info", "--output=json", str(base[0])))["virtual-size"]
        if size_gb * (1 << 30) < int(virtual):
            raise ImageError(f"root_gb {size_gb} is smaller than the image ({virtual} bytes)")
    _qemu_img(*args)
    log.info("root_disk_created", path=str(target), size_gb=size_gb,
             base=str(base[0]) if base else None)
    return target
