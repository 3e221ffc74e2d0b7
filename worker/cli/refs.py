"""Write (or check) the files generated from the code: the message reference, the sample config.

    python -m worker.cli.refs           # rewrite docs/reference.md and the sample config
    python -m worker.cli.refs --check   # exit 1 naming each file that is stale

A developer's command, run in a checkout, so it is not a subcommand of the operator's
``compute-worker``; tests/unit/test_refs.py runs the check in the unit tier.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from worker.cli import ref_config, ref_messages

COMMAND = "python -m worker.cli.refs"
#: Each generated file, relative to the checkout, and what writes it.
OUTPUTS: dict[str, Callable[[], str]] = {
    "docs/reference.md": ref_messages.render,
    "systemd/compute-worker.conf.example": ref_config.render,
}


def checkout() -> Path:
    """The checkout this module lives in (where setup.cfg is)."""
    return Path(__file__).resolve().parents[2]


def stale(root: Path) -> list[str]:
    """The generated files under root whose text is not what the code makes now."""
    found = []
    for name, render in OUTPUTS.items():
        path = root / name
        if not path.is_file() or path.read_text(encoding="utf-8") != render():
            found.append(name)
    return found


def write(root: Path) -> list[str]:
    """Rewrite every generated file under root; the names of those that changed."""
    changed = []
    for name, render in OUTPUTS.items():
        path = root / name
        text = render()
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """The command."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a generated file is stale")
    parser.add_argument("--root", type=Path, default=checkout(),
                        help="the checkout to write into (default: the one holding this code)")
    opts = parser.parse_args(argv)
    if not (opts.root / "setup.cfg").is_file():
        print(f"refs: {opts.root} is not a checkout (no setup.cfg); give --root", file=sys.stderr)
        return 2
    if opts.check:
        old = stale(opts.root)
        for name in old:
            print(f"refs: {name} is stale; regenerate it with `{COMMAND}`", file=sys.stderr)
        return 1 if old else 0
    for name in write(opts.root):
        print(f"refs: wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
