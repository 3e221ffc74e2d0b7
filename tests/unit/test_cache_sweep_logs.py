"""The cache sweep reads disks only: a console log the guest wrote never keeps a base."""

from __future__ import annotations

import subprocess
from pathlib import Path

from worker.virt.image_cache import ImageCache


def _img(*args: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", *args], check=True)


def test_a_qcow2_header_printed_on_the_console_does_not_make_a_base_in_use(
        tmp_path: Path) -> None:
    """console.log (and its rotations) and unrescue.xml are not probed; the disk is."""
    instances = tmp_path / "instances"
    base_dir, home = instances / "_base", instances / "11111111-2222-3333-4444-555555555555"
    base_dir.mkdir(parents=True)
    home.mkdir()
    used, planted = base_dir / ("a" * 40), base_dir / ("b" * 40)
    _img("-f", "raw", str(used), "1M")
    _img("-f", "raw", str(planted), "1M")
    _img("-f", "qcow2", "-b", str(used), "-F", "raw", str(home / "disk"))
    for name in ("console.log", "console.log.0", "unrescue.xml"):
        # What a guest could print on its serial port: a qcow2 header naming a base.
        _img("-f", "qcow2", "-b", str(planted), "-F", "raw", str(home / name))

    assert {used} == ImageCache(str(instances), str(tmp_path / "images")).in_use()
