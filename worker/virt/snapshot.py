"""Snapshot images: a disk (read through its backing chain) exported as one standalone file.

The handler decides how a consistent copy of the root disk is taken (live
block copy, a short pause, or a stopped guest); this module does the file
work around it: what the disk is, whether the export fits, the qcow2 delta a
block copy writes into, the export by ``qemu-img convert``, its checksum, and
publishing it under its image id without ever replacing an image that is
already there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from worker import logs
from worker.errors import ImageError, InsufficientStorage
from worker.virt import qemu_img

log = logs.get(__name__)
#: Formats a snapshot may be written in (nova's snapshot_image_format choices).
FORMATS = ("raw", "qcow2", "vmdk", "vdi")
#: An export reads and writes the whole disk: far longer than qemu-img's other work.
EXPORT_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Disk:
    """A disk as qemu-img sees it: top file, its format, sizes, and its backing file."""

    path: Path
    fmt: str
    virtual_size: int
    #: Bytes allocated on the host over the whole chain (what a compact export may need).
    allocated: int
    backing: tuple[Path, str] | None


@dataclass(frozen=True)
class Image:
    """An exported image: what the end event says of it."""

    path: Path
    fmt: str
    size: int
    virtual_size: int
    sha256: str


def inspect(path: Path, fmt: str) -> Disk:
    """The disk at path, opened as fmt (the format libvirt opens it as, never probed)."""
    layers = qemu_img.chain(path, fmt)
    top = layers[0]
    backing = None
    if top.get("full-backing-filename") or top.get("backing-filename"):
        if len(layers) < 2:
            raise ImageError(f"{path} has a backing file qemu-img cannot open")
        backing = (Path(str(top.get("full-backing-filename") or top["backing-filename"])),
                   str(layers[1]["format"]))
    return Disk(path, fmt, int(top["virtual-size"]),
                sum(int(layer.get("actual-size") or 0) for layer in layers), backing)


def space_needed(disk: Disk, fmt: str) -> int:
    """Bytes an export of disk as fmt may take: raw is its full virtual size; the compact
    formats hold what the chain holds (at most the virtual size) plus their own tables."""
    if fmt == "raw":
        return disk.virtual_size
    return min(disk.allocated, disk.virtual_size) + disk.virtual_size // 512 + (1 << 20)


def check_space(directory: Path, needed: int) -> None:
    """InsufficientStorage, before anything is written, when directory has less free."""
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    if free < needed:
        raise InsufficientStorage(f"{directory} has {free} bytes free; the snapshot needs "
                                  f"up to {needed}", free=free, needed=needed)


def create_delta(target: Path, disk: Disk) -> None:
    """A qcow2 on disk's backing file (empty when it has none) for a shallow block copy."""
    args = ["create", "-q", "-f", "qcow2"]
    if disk.backing is not None:
        args += ["-b", str(disk.backing[0]), "-F", disk.backing[1]]
    qemu_img.run(*args, str(target), str(disk.virtual_size))


def copy_top(source: Path, target: Path) -> None:
    """A byte copy of the top file (its backing reference included), for a paused guest."""
    shutil.copyfile(source, target)


def _sha256(path: Path, *, fsync: bool = False) -> str:
    """SHA-256 of a file; with fsync, the file is flushed to disk meanwhile (both wait on
    I/O or run in C without the GIL, so side by side they take the longer one's time)."""
    with open(path, "rb") as handle:
        flushed: list[BaseException] = []
        flusher = None
        if fsync:
            def flush() -> None:
                try:
                    os.fsync(handle.fileno())
                except BaseException as exc:  # handed to the caller's thread below
                    flushed.append(exc)

            flusher = threading.Thread(target=flush, name="snapshot-fsync")
            flusher.start()
        try:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        finally:
            if flusher is not None:
                flusher.join()
        if flushed:
            raise flushed[0]
    return digest


def export(source: Path, source_fmt: str, fmt: str, target: Path) -> Image:
    """source (through its backing chain) converted to a standalone fmt image at target,
    checked and fsynced; the image with its size and SHA-256."""
    qemu_img.run("convert", "-f", source_fmt, "-O", fmt, str(source), str(target),
                 timeout=EXPORT_TIMEOUT)
    info = qemu_img.chain(target, fmt)
    if len(info) != 1 or info[0].get("backing-filename"):
        raise ImageError(f"the export of {source} is not standalone")
    digest = _sha256(target, fsync=True)
    return Image(target, fmt, target.stat().st_size, int(info[0]["virtual-size"]), digest)


def describe(path: Path) -> Image:
    """An image already published (by an earlier delivery): format, sizes, SHA-256.

    Its format is probed: the worker wrote this file itself.
    """
    info = json.loads(qemu_img.run("info", "--output=json", "-U", str(path)))
    return Image(path, str(info["format"]), path.stat().st_size, int(info["virtual-size"]),
                 _sha256(path))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staged: Path, final: Path) -> bool:
    """Give the finished staged file its final name; False (staged left) when one exists.

    A hard link, not a rename: link never replaces, so an image already
    published under this id (by an earlier delivery) stays exactly as it was.
    """
    try:
        os.link(staged, final)
    except FileExistsError:
        return False
    _fsync_dir(final.parent)
    return True


@contextlib.contextmanager
def staging(directory: Path, image_id: str) -> Iterator[Path]:
    """A fresh temporary name in directory for image_id; whatever is there is removed after.

    Leftovers of an earlier attempt at the same image (a worker killed mid-export) go
    first: their names say which image they were for.
    """
    for stale in directory.glob(f".{image_id}.*.part"):
        log.warning("snapshot_leftover_removed", path=str(stale))
        stale.unlink(missing_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{image_id}.", suffix=".part")
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def removed_after(path: Path) -> Iterator[Path]:
    """path, removed (if it is there) before the block starts and when it ends."""
    path.unlink(missing_ok=True)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
