"""Disk files for new instances, made by qemu-img, mkfs and mkswap inside the instance's dir.

Every file written here is under ``instances_path/<uuid>/`` (the caller passes
paths it built with ``InstancePaths``); base images are read, never written.
Formats are always named to qemu-img (``-f``/``-F``), never probed from a file
whose content a guest or an image owner controls.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from worker import logs
from worker.errors import FlavorDiskSmallerThanImage, ImageError, InsufficientStorage
from worker.virt import qemu_img as qemu_img_tool
from worker.virt.tools import run_tool

log = logs.get(__name__)
GIB = 1 << 30
MIB = 1 << 20
_TIMEOUT = 300.0
#: mkfs per ephemeral file system, with the option that sets the label.
MKFS = {"ext4": ("mkfs.ext4", "-L"), "ext3": ("mkfs.ext3", "-L"), "ext2": ("mkfs.ext2", "-L"),
        "vfat": ("mkfs.vfat", "-n")}


def qemu_img(*args: str) -> str:
    """qemu-img with args (a long timeout: copies of large images)."""
    return qemu_img_tool.run(*args, timeout=_TIMEOUT)


def info(path: Path, fmt: str | None = None, *, shared: bool = False) -> dict[str, Any]:
    """qemu-img info as JSON; fmt names the format instead of probing; shared (-U) reads a
    disk a running QEMU holds locked."""
    args = ["info", "--output=json"]
    if fmt is not None:
        args += ["-f", fmt]
    if shared:
        args.append("-U")
    found: dict[str, Any] = json.loads(qemu_img(*args, str(path)))
    return found


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still put in directory's file system."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def require_space(directory: Path, needed: int, what: str) -> None:
    """InsufficientStorage unless directory's file system has needed bytes free."""
    free = free_bytes(directory)
    if needed > free:
        raise InsufficientStorage(f"{what} needs {needed} bytes in {directory}, "
                                  f"{free} are free")


def root_disk(target: Path, size_gb: int, base: Path | None, base_fmt: str = "raw", *,
              cow: bool = True) -> Path:
    """target as a qcow2 root disk: an overlay on base (cow) or a full copy of it, or blank.

    Grown to size_gb when that is larger than the image; size_gb 0 keeps the
    image's size (nova's rule for root_gb 0). FlavorDiskSmallerThanImage when
    size_gb is smaller than the image.
    """
    if base is None:
        if size_gb <= 0:
            raise ImageError("a root disk needs a base image or a size")
        qemu_img("create", "-q", "-f", "qcow2", str(target), f"{size_gb}G")
        log.info("root_disk_created", path=str(target), size_gb=size_gb, base=None)
        return target
    virtual = int(info(base, base_fmt)["virtual-size"])
    if size_gb > 0 and size_gb * GIB < virtual:
        raise FlavorDiskSmallerThanImage(
            f"Flavor's disk is too small for requested image. Flavor disk is {size_gb * GIB} "
            f"bytes, image is {virtual} bytes.")  # nova's wording
    size = [f"{size_gb}G"] if size_gb * GIB > virtual else []
    if cow:
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", base_fmt, str(target),
                 *size)
    else:
        qemu_img("convert", "-q", "-f", base_fmt, "-O", "qcow2", str(base), str(target))
        if size:
            qemu_img("resize", "-q", "-f", "qcow2", str(target), *size)
    log.info("root_disk_created", path=str(target), size_gb=size_gb, base=str(base), cow=cow)
    return target


def _sparse_file(target: Path, size: int) -> None:
    # O_EXCL: a file already there was not made by this build, and is not ours to reuse.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def ephemeral_disk(target: Path, size_gb: int, fs_format: str) -> Path:
    """target as a raw disk of size_gb holding an empty fs_format file system labelled
    ephemeral0, as nova's ephemeral disks are."""
    tool, label_flag = MKFS[fs_format]
    _sparse_file(target, size_gb * GIB)
    force = ["-F", "-q"] if fs_format.startswith("ext") else []
    run_tool(tool, *force, label_flag, "ephemeral0", str(target))
    log.info("ephemeral_disk_created", path=str(target), size_gb=size_gb, fs=fs_format)
    return target


def swap_disk(target: Path, size_mb: int) -> Path:
    """target as a raw disk of size_mb MiB with a swap signature (mkswap)."""
    _sparse_file(target, size_mb * MIB)
    run_tool("mkswap", "-L", "swap0", str(target))
    log.info("swap_disk_created", path=str(target), size_mb=size_mb)
    return target
