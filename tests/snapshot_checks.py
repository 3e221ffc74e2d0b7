"""Snapshot test tools: disks with recognisable bytes, and what an exported image must be."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.taps import Event


@dataclass(frozen=True)
class Pattern:
    """A byte repeated over a range of a disk, written and read back with qemu-io."""

    byte: int
    offset: str
    length: str = "64k"

    def _command(self, verb: str) -> str:
        return f"{verb} -q -P {self.byte:#x} {self.offset} {self.length}"

    def write(self, path: Path, fmt: str) -> None:
        """Write the pattern into the disk at path (not while QEMU holds it)."""
        subprocess.run(["qemu-io", "-f", fmt, "-c", self._command("write"), str(path)],
                       check=True, capture_output=True)

    def found_in(self, path: Path, fmt: str, *, shared: bool = False) -> bool:
        """True when the disk at path, read as fmt through its backing chain, holds it.

        shared: read beside a QEMU that has the disk open (qemu-io -U).
        """
        done = subprocess.run(["qemu-io", "-r", *(["-U"] if shared else []), "-f", fmt, "-c",
                               self._command("read"), str(path)],
                              capture_output=True, text=True, check=False)
        return done.returncode == 0 and "verification failed" not in done.stdout


#: In the base image (read through the instance's overlay), and in the overlay itself.
IN_BASE = Pattern(0xAB, "1M")
IN_OVERLAY = Pattern(0xCD, "3M")


def make_base_image(path: Path, size: str = "64M") -> Path:
    """A qcow2 base image at path carrying IN_BASE."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    IN_BASE.write(path, "qcow2")
    return path


def image_info(path: Path) -> dict[str, Any]:
    """``qemu-img info`` of an image, its format probed (which is what is being checked)."""
    done = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(path)],
                          capture_output=True, text=True, check=True)
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def sha256(path: Path) -> str:
    """SHA-256 of a file, hex."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def leftovers(*directories: Path) -> list[str]:
    """Temporaries a snapshot may make (staged .part files, deltas) still in directories."""
    return sorted(p.name for d in directories if d.exists() for p in d.iterdir()
                  if p.name.endswith(".part") or p.name.startswith("snapshot-"))


def details(event: Event) -> dict[str, Any]:
    """What the worker adds to an instance.snapshot.end event about the image it made."""
    found: dict[str, Any] = event["payload"]["compute_worker.details"]
    return found


def check_image(path: Path, fmt: str, event: Event) -> dict[str, Any]:
    """The image at path is standalone fmt and is what the end event says; its info."""
    info = image_info(path)
    assert fmt == info["format"]
    assert "backing-filename" not in info and "full-backing-filename" not in info
    said = details(event)
    assert (fmt, path.stat().st_size, sha256(path), info["virtual-size"]) == (
        said["format"], said["size"], said["sha256"], said["virtual_size"])
    return info
