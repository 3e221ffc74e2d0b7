"""Print setup.cfg's install_requires with every floor pinned exactly (name==floor).

scripts/test-floors.sh installs these as pip constraints, so the floors tested are the
floors declared: nothing is copied by hand. A requirement without a ``>=`` floor is an
error, since nothing would then say which oldest release the tests pass at.
"""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

_FLOOR = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")


def pins(setup_cfg: Path) -> list[str]:
    """name==floor for each runtime requirement of setup_cfg."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg, encoding="utf-8")
    lines = parser["options"]["install_requires"].splitlines()
    out: list[str] = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = _FLOOR.match(line)
        floors = [s.strip()[2:].strip() for s in (match.group(2) if match else "").split(",")
                  if s.strip().startswith(">=")]
        if not match or len(floors) != 1:
            raise SystemExit(f"floors: {line!r} has no single >= floor")
        out.append(f"{match.group(1)}=={floors[0]}")
    return out


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    print("\n".join(pins(root / "setup.cfg")))
