"""Instance directories: every path built from a message is checked to stay inside."""

from __future__ import annotations

import os
import shutil
import uuid as uuidlib
from pathlib import Path

from worker.errors import UnsafePath


def canonical_uuid(value: str) -> str:
    """The lowercase hyphenated form of a UUID string; UnsafePath for anything else."""
    try:
        parsed = uuidlib.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise UnsafePath(f"not a UUID: {value!r:.80}") from None
    if str(parsed) != value.lower():
        # Accept only the canonical spelling so one instance has one directory.
        raise UnsafePath(f"not a canonical UUID: {value!r:.80}")
    return str(parsed)


def inside(root: Path, *parts: str) -> Path:
    """root/parts..., resolved; UnsafePath if it would leave root (or be root itself)."""
    candidate = Path(os.path.realpath(root.joinpath(*parts)))
    if candidate == root or root not in candidate.parents:
        raise UnsafePath(f"path {'/'.join(parts)!r:.120} leaves {root}")
    return candidate


class InstancePaths:
    """Owns ``instances_path``: where each instance's files live."""

    def __init__(self, root: str) -> None:
        self.root = Path(os.path.realpath(root))

    def inside(self, *parts: str) -> Path:
        """root/parts..., resolved; UnsafePath if it would leave the root."""
        return inside(self.root, *parts)

    def instance_dir(self, uuid: str) -> Path:
        """``instances_path/<uuid>``, for a canonical UUID only."""
        return self.inside(canonical_uuid(uuid))

    def remove_instance_dir(self, uuid: str) -> bool:
        """Delete ``instances_path/<uuid>/`` and nothing outside it; True if it existed."""
        # A canonical UUID has only hex digits and dashes, so this cannot climb out.
        target = self.root / canonical_uuid(uuid)
        if target.is_symlink():
            # A planted link is removed itself; what it points at is left alone.
            target.unlink()
            return True
        if not target.exists():
            return False
        # rmtree does not follow symlinks inside the tree either.
        shutil.rmtree(target)
        return True
