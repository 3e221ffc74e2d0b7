"""The snapshot file work on real files with the real qemu-img: inspect, size, stage, export,
publish; and the snapshot event and schema as nova sends and reads them."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.nova_judge import judge
from tests.snapshot_checks import IN_BASE, IN_OVERLAY, image_info, make_base_image, sha256
from worker.codec import payloads
from worker.codec.nova_objects import plain_args
from worker.core import schemas
from worker.errors import InsufficientStorage, InvalidArguments
from worker.virt import snapshot

SAMPLES = json.loads((Path(__file__).parents[1] / "nova-wire-samples.json").read_text())


def _overlay(tmp_path: Path) -> Path:
    base = make_base_image(tmp_path / "base")
    disk = tmp_path / "disk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                    str(disk), "64M"], check=True)
    IN_OVERLAY.write(disk, "qcow2")
    return disk


def test_inspect_reads_the_overlay_its_backing_and_sizes(tmp_path: Path) -> None:
    """A qcow2 overlay: its virtual size, its backing file and format, what the chain holds."""
    disk = snapshot.inspect(_overlay(tmp_path), "qcow2")

    assert (64 << 20, (tmp_path / "base", "qcow2")) == (disk.virtual_size, disk.backing)
    assert 0 < disk.allocated < disk.virtual_size


def test_raw_needs_the_virtual_size_and_compact_formats_what_the_chain_holds(
        tmp_path: Path) -> None:
    """Free space wanted: raw, the whole disk; qcow2, vmdk, vdi far less for a sparse one."""
    disk = snapshot.inspect(_overlay(tmp_path), "qcow2")

    assert disk.virtual_size == snapshot.space_needed(disk, "raw")
    for fmt in ("qcow2", "vmdk", "vdi"):
        assert disk.allocated <= snapshot.space_needed(disk, fmt) < disk.virtual_size // 10


def test_check_space_refuses_more_than_is_free(tmp_path: Path) -> None:
    """InsufficientStorage names what is free and what was needed."""
    snapshot.check_space(tmp_path, 1)
    with pytest.raises(InsufficientStorage) as caught:
        snapshot.check_space(tmp_path, 1 << 62)
    assert 1 << 62 == caught.value.kwargs["needed"]


@pytest.mark.parametrize("fmt", snapshot.FORMATS)
def test_export_is_standalone_in_its_format_and_reports_its_checksum(
        tmp_path: Path, fmt: str) -> None:
    """qemu-img convert through the backing chain: one file, both layers' bytes, its SHA-256."""
    target = tmp_path / "out"

    image = snapshot.export(_overlay(tmp_path), "qcow2", fmt, target)

    info = image_info(target)
    assert (fmt, None) == (info["format"], info.get("backing-filename"))
    assert (sha256(target), target.stat().st_size, 64 << 20) == (
        image.sha256, image.size, image.virtual_size)
    assert IN_BASE.found_in(target, fmt) and IN_OVERLAY.found_in(target, fmt)


def test_a_delta_shares_the_disk_s_backing_file(tmp_path: Path) -> None:
    """The block copy's destination: empty qcow2 on the same base, so a shallow copy suffices."""
    disk = snapshot.inspect(_overlay(tmp_path), "qcow2")
    delta = tmp_path / "delta"

    snapshot.create_delta(delta, disk)

    info = image_info(delta)
    assert (str(tmp_path / "base"), 64 << 20) == (info["backing-filename"], info["virtual-size"])
    assert IN_BASE.found_in(delta, "qcow2") and not IN_OVERLAY.found_in(delta, "qcow2")


def test_publish_never_replaces_an_image(tmp_path: Path) -> None:
    """An image already under the id stays exactly as it was; the staged file is not used."""
    final, staged = tmp_path / "image", tmp_path / ".image.x.part"
    final.write_bytes(b"first")
    staged.write_bytes(b"second")

    assert not snapshot.publish(staged, final)
    assert b"first" == final.read_bytes()
    staged.unlink()
    final.unlink()
    staged.write_bytes(b"second")
    assert snapshot.publish(staged, final)
    assert b"second" == final.read_bytes()


def test_staging_removes_its_file_and_leftovers_of_the_same_image_only(tmp_path: Path) -> None:
    """A killed attempt's .part of this image goes; another image's stays; so does nothing of
    this attempt, even when it fails."""
    image_id, other = str(uuid.uuid4()), str(uuid.uuid4())
    (tmp_path / f".{image_id}.old.part").write_bytes(b"x")
    (tmp_path / f".{other}.old.part").write_bytes(b"x")

    with pytest.raises(RuntimeError), snapshot.staging(tmp_path, image_id) as staged:
        assert staged.parent == tmp_path
        staged.write_bytes(b"half")
        raise RuntimeError("export failed")

    assert [f".{other}.old.part"] == sorted(p.name for p in tmp_path.iterdir())


def _snapshot_sample() -> dict[str, object]:
    message = next(m["message"] for m in SAMPLES["messages"]
                   if m["message"]["method"] == "snapshot_instance")
    args: dict[str, object] = message["args"]
    return args


def test_nova_s_snapshot_cast_fits_the_schema_and_a_path_does_not() -> None:
    """image_id is a UUID (it becomes a file name); nova's own sample passes."""
    args = _snapshot_sample()
    schemas.check_args("snapshot_instance", args)
    for bad in ("../x", "x", "", None):
        with pytest.raises(InvalidArguments):
            schemas.check_args("snapshot_instance", {**args, "image_id": bad})


def test_the_snapshot_end_payload_is_nova_s_with_the_image_details_beside_it() -> None:
    """InstanceActionSnapshotPayload (nova judges it) with snapshot_image_id; details outside
    nova_object.data, where nova's deserializer does not look."""
    args = plain_args(schemas.check_args("snapshot_instance", _snapshot_sample()))
    said = {"format": "qcow2", "size": 1, "virtual_size": 2, "sha256": "0" * 64,
            "method": "live"}
    live = {"uuid": args["instance"]["uuid"], "name": "instance-x", "power_state": "running",
            "vm_state": "active", "details": said}

    payload = payloads.instance_action(instance=args["instance"], live=live, host="compute-01",
                                       caller=payloads.Caller("req-1"), action="snapshot",
                                       args=args)

    judge(payload)
    assert "InstanceActionSnapshotPayload" == payload["nova_object.name"]
    assert args["image_id"] == payload["nova_object.data"]["snapshot_image_id"]
    assert said == payload[payloads.EXTRA_KEY]
