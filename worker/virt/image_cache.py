"""nova's base-image cache: ``instances_path/_base/<sha1 of image id>``, filled once per image.

An image comes from the image store ``images_path/<image id>`` (raw or qcow2,
no backing file, no symlink out of the store). The cache holds it as raw, as
nova does by default (``force_raw_images``): a base is then always opened as
raw, never probed, and overlays name it with ``-F raw``.

One lock file per image (``flock``) makes concurrent builds of one new image
fill its entry once, and keeps the sweep from removing a base while a build
makes an overlay on it: a build holds the lock from the fill until its
overlay exists; the sweep takes it before looking whether the base is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from worker import logs
from worker.errors import (
    ImageError,
    ImageNotFound,
    ImageUnacceptable,
    UnsafePath,
)
from worker.virt import images
from worker.virt.paths import inside

log = logs.get(__name__)
BASE_DIR = "_base"
#: Formats a stored image may be in; anything else (vmdk, vdi, ...) is refused, not probed.
STORE_FORMATS = ("raw", "qcow2")
#: The format of every cache entry.
CACHE_FORMAT = "raw"


def cache_name(image_id: str) -> str:
    """The cache file name of an image: the SHA-1 of its id, as nova names it."""
    return hashlib.sha1(image_id.encode("utf-8")).hexdigest()


def _not_a_disk(name: str) -> bool:
    """Files of an instance that are no disk: its XML, and its console logs, whose every
    byte the guest wrote (a qcow2 header printed there must not name a base as in use)."""
    return name in ("libvirt.xml", "unrescue.xml") or name.startswith("console.log")


@dataclass(frozen=True)
class Base:
    """A cached base image: its path, its format, and its virtual size in bytes."""

    path: Path
    fmt: str
    virtual_size: int


@dataclass(frozen=True)
class SweepResult:
    """What one sweep of the cache did."""

    removed: tuple[str, ...]
    in_use: tuple[str, ...]
    too_young: tuple[str, ...]


class ImageCache:
    """Owns ``instances_path/_base``; reads ``images_path``."""

    def __init__(self, instances_path: str, images_path: str) -> None:
        self.root = Path(os.path.realpath(instances_path))
        self.base_dir = self.root / BASE_DIR
        self.store = Path(os.path.realpath(images_path))
        self.fills = 0  # entries this process filled (benchmarks and tests read it)

    # --- the image store ---------------------------------------------------------

    def source(self, image_id: str) -> tuple[Path, str]:
        """The stored image file for an id and its format, checked."""
        if not isinstance(image_id, str) or not image_id or "/" in image_id \
                or image_id in (".", ".."):
            raise ImageUnacceptable(f"Image {image_id!r:.80} is unacceptable: not one file "
                                    "name in images_path")
        given = self.store / image_id
        try:
            path = inside(self.store, image_id)
        except UnsafePath:
            raise ImageUnacceptable(f"Image {image_id} is unacceptable: it leads out of "
                                    f"{self.store}") from None
        if path != given and given.is_symlink():
            log.info("image_is_symlink_inside_store", image_id=image_id, target=str(path))
        if not path.is_file():
            raise ImageNotFound(f"Image {image_id} could not be found.")  # nova's wording
        found = images.info(path)
        fmt = str(found.get("format"))
        if fmt not in STORE_FORMATS:
            raise ImageUnacceptable(f"Image {image_id} is unacceptable: it is {fmt}; "
                                    "stored images must be raw or qcow2")
        if found.get("backing-filename") or found.get("full-backing-filename"):
            # Its chain would reach files nobody checked.
            raise ImageUnacceptable(f"Image {image_id} is unacceptable: it has a backing file")
        return path, fmt

    # --- the cache -------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[None]:
        """Hold the lock of one cache entry (between threads and processes alike)."""
        self.base_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.base_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def base(self, image_id: str) -> Iterator[Base]:
        """The cached base of image_id, filled now if absent; locked while the caller uses it.

        Make the overlay inside the block: the sweep cannot remove the base
        until the overlay names it.
        """
        name = cache_name(image_id)
        with self.locked(name):
            entry = self.base_dir / name
            if not entry.is_file():
                self._fill(image_id, entry)
            else:
                os.utime(entry)  # last used now: the sweep's age counts from here
            yield Base(entry, CACHE_FORMAT,
                       int(images.info(entry, CACHE_FORMAT)["virtual-size"]))

    def _fill(self, image_id: str, entry: Path) -> None:
        source, fmt = self.source(image_id)
        images.require_space(self.base_dir, source.stat().st_blocks * 512,
                             f"caching image {image_id}")
        partial = entry.with_name(f"{entry.name}.part-{uuidlib.uuid4().hex[:8]}")
        started = time.monotonic()
        try:
            # convert keeps holes (a raw base stays sparse) and reads the image as fmt only.
            images.qemu_img("convert", "-q", "-f", fmt, "-O", CACHE_FORMAT, str(source),
                            str(partial))
            with open(partial, "rb") as handle:
                os.fsync(handle.fileno())
            os.rename(partial, entry)  # readers see a whole base or none
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        self.fills += 1
        log.info("image_cached", image_id=image_id, entry=entry.name, source_format=fmt,
                 seconds=round(time.monotonic() - started, 3))

    # --- the sweep -------------------------------------------------------------------

    def entries(self) -> list[Path]:
        """Every base in the cache (not lock files or partial fills)."""
        if not self.base_dir.is_dir():
            return []
        return sorted(p for p in self.base_dir.iterdir()
                      if len(p.name) == 40 and p.is_file() and not p.is_symlink())

    def in_use(self) -> set[Path]:
        """Bases some instance's disk is an overlay on, read from the disks themselves."""
        used: set[Path] = set()
        for directory in self.root.iterdir():
            if directory.name == BASE_DIR or not directory.is_dir() or directory.is_symlink():
                continue
            for disk in directory.iterdir():
                if not disk.is_file() or disk.is_symlink() or _not_a_disk(disk.name):
                    continue
                try:
                    # -U: a running QEMU holds its disks locked; -f: never probe a guest's disk.
                    found = images.info(disk, "qcow2", shared=True)
                except ImageError:
                    continue  # raw disks (ephemeral, swap) have no backing file
                backing = found.get("full-backing-filename") or found.get("backing-filename")
                if backing:
                    used.add(Path(os.path.realpath(directory / str(backing))))
        return used

    def sweep(self, min_age: float, now: float | None = None) -> SweepResult:
        """Remove every base no instance uses that was last used more than min_age ago."""
        removed, in_use, young = [], [], []
        used = self.in_use()
        for entry in self.entries():
            if entry in used:
                in_use.append(entry.name)
                continue
            with self.locked(entry.name):
                # Again under the lock: a build may have made an overlay on it since.
                if not entry.exists():
                    continue
                age = (time.time() if now is None else now) - entry.stat().st_mtime
                if age < min_age:
                    young.append(entry.name)
                    continue
                if entry in self.in_use():
                    in_use.append(entry.name)
                    continue
                entry.unlink()
                removed.append(entry.name)
                log.info("base_image_removed", entry=entry.name, unused_for_s=round(age))
        return SweepResult(tuple(removed), tuple(in_use), tuple(young))
