"""Instance directories: only canonical UUIDs, nothing outside instances_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.support import UUID
from worker.errors import UnsafePath
from worker.virt.paths import InstancePaths, canonical_uuid

OTHER = "99999999-8888-7777-6666-555555555555"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An instances_path inside the test's private dir."""
    path = tmp_path / "instances"
    path.mkdir()
    return path


def test_instance_dir_is_root_slash_uuid(root: Path) -> None:
    """A canonical UUID gives instances_path/<uuid>."""
    assert root.resolve() / UUID == InstancePaths(str(root)).instance_dir(UUID)


def test_uppercase_uuid_is_the_same_instance(root: Path) -> None:
    """One instance has one directory whatever the case of its UUID."""
    paths = InstancePaths(str(root))

    assert paths.instance_dir(UUID) == paths.instance_dir(UUID.upper())
    assert UUID == canonical_uuid(UUID.upper())


@pytest.mark.parametrize("value", [
    "", "abc", "..", ".", "/", "../" + UUID, UUID + "/..", UUID + "/../" + OTHER,
    "./" + UUID, "/etc/passwd", "../../etc/passwd", UUID + "/", UUID + "\x00",
    "%2e%2e%2f" + UUID, UUID + "\n",
], ids=repr)
def test_instance_dir_rejects_non_uuids_and_path_tricks(root: Path, value: str) -> None:
    """Anything but a UUID, path tricks included, is UnsafePath."""
    with pytest.raises(UnsafePath):
        InstancePaths(str(root)).instance_dir(value)


@pytest.mark.parametrize("value", [
    "{" + UUID + "}", "urn:uuid:" + UUID, UUID.replace("-", ""),
    "1111-11112222-3333-4444-555555555555", " " + UUID,
], ids=repr)
def test_instance_dir_rejects_non_canonical_spellings(root: Path, value: str) -> None:
    """Braces, URNs, moved or missing hyphens are refused though uuid.UUID parses them."""
    with pytest.raises(UnsafePath):
        InstancePaths(str(root)).instance_dir(value)


def test_instance_dir_that_is_a_symlink_out_is_unsafe(root: Path, tmp_path: Path) -> None:
    """A planted instances_path/<uuid> link to elsewhere is refused, not followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / UUID).symlink_to(outside)

    with pytest.raises(UnsafePath):
        InstancePaths(str(root)).instance_dir(UUID)


def test_remove_instance_dir_removes_only_its_dir(root: Path) -> None:
    """Removing one instance's tree leaves its neighbours and the root."""
    (root / UUID / "sub").mkdir(parents=True)
    (root / UUID / "sub" / "disk").write_bytes(b"x")
    (root / OTHER).mkdir()
    (root / OTHER / "disk").write_bytes(b"keep")

    removed = InstancePaths(str(root)).remove_instance_dir(UUID)

    assert removed is True
    assert [OTHER] == os.listdir(root)
    assert b"keep" == (root / OTHER / "disk").read_bytes()


def test_remove_planted_symlink_leaves_its_target(root: Path, tmp_path: Path) -> None:
    """A symlink at instances_path/<uuid> is unlinked; the tree it points to is untouched."""
    target = tmp_path / "precious"
    target.mkdir()
    (target / "data").write_bytes(b"keep")
    (root / UUID).symlink_to(target)

    removed = InstancePaths(str(root)).remove_instance_dir(UUID)

    assert removed is True
    assert not os.path.lexists(root / UUID)
    assert b"keep" == (target / "data").read_bytes()


def test_remove_does_not_follow_symlinks_inside_the_dir(root: Path, tmp_path: Path) -> None:
    """A link inside the instance dir is removed as a link; what it points at stays."""
    precious = tmp_path / "precious.img"
    precious.write_bytes(b"keep")
    (root / UUID).mkdir()
    (root / UUID / "disk").symlink_to(precious)
    (root / UUID / "escape").symlink_to(tmp_path)

    assert InstancePaths(str(root)).remove_instance_dir(UUID) is True

    assert b"keep" == precious.read_bytes()
    assert root.exists()


def test_remove_absent_dir_returns_false(root: Path) -> None:
    """Removing what is not there is not an error, and says so."""
    assert InstancePaths(str(root)).remove_instance_dir(UUID) is False
    assert [] == os.listdir(root)


def test_remove_with_a_dangling_symlink_removes_the_link(root: Path, tmp_path: Path) -> None:
    """A link to nothing is still a planted link: removed, True."""
    (root / UUID).symlink_to(tmp_path / "gone")

    assert InstancePaths(str(root)).remove_instance_dir(UUID) is True
    assert not os.path.lexists(root / UUID)


@pytest.mark.parametrize("value", ["../instances-other", "..", "/tmp", "{" + UUID + "}"])
def test_remove_refuses_non_uuids(root: Path, value: str) -> None:
    """remove_instance_dir takes the same canonical UUIDs only."""
    with pytest.raises(UnsafePath):
        InstancePaths(str(root)).remove_instance_dir(value)


def test_inside_refuses_the_root_itself_and_escapes(root: Path) -> None:
    """inside() never returns the root or a path outside it."""
    paths = InstancePaths(str(root))

    assert root.resolve() / UUID / "disk" == paths.inside(UUID, "disk")
    for parts in [(), (".",), ("..",), (UUID, "..", ".."), ("/etc",)]:
        with pytest.raises(UnsafePath):
            paths.inside(*parts)
