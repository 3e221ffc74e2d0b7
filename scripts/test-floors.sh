#!/usr/bin/env bash
# The unit tiers at the dependency floors: a separate venv (.venv-floors) holds the
# package with every install_requires floor of setup.cfg pinned exactly (scripts/floors.py
# derives the pins), then runs tests/unit and tests/core against it.
#
# The test tools (pytest, hypothesis, nova as the judge) are not at floors: they come
# from .venv (scripts/venv.sh makes it), placed after the floors venv's own packages on
# sys.path, so every runtime dependency is imported at its floor and nova's 400 MB is
# not installed twice. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
main=.venv
floors=${FLOORS_VENV:-.venv-floors}
if [[ ! -x $main/bin/python ]]; then
    echo "test-floors: $main is missing; run scripts/venv.sh first" >&2
    exit 2
fi
[[ -x $floors/bin/python ]] || python3 -m venv "$floors"
pins=$floors/floors.txt
"$main/bin/python" scripts/floors.py > "$pins.new"
# Reinstall only when the floors or the package changed: a rerun takes seconds.
stamp=$floors/.installed-$(cat "$pins.new" setup.cfg pyproject.toml | sha256sum | cut -c1-16)
mv "$pins.new" "$pins"
if [[ ! -f $stamp ]]; then
    echo "test-floors: installing the package at its floors:" $(cat "$pins")
    "$floors/bin/pip" install -q --disable-pip-version-check -c "$pins" .
    rm -f "$floors"/.installed-*
    touch "$stamp"
fi
# Every pinned distribution really is at its floor (pip could not have resolved otherwise,
# but this says so in the log).
"$floors/bin/python" - "$pins" <<'PY'
import sys
from importlib.metadata import version


def release(text):
    parts = [int(p) for p in text.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return parts


for line in open(sys.argv[1]):
    name, floor = line.strip().split("==")
    got = version(name)
    if release(got) != release(floor):
        sys.exit(f"test-floors: {name} is {got}, not its floor {floor}")
    print(f"test-floors: {name} {got}")
PY
main_site=$("$main/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
floors_site=$("$floors/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# A .pth line appends the directory after the floors venv's own: the floors win.
echo "$main_site" > "$floors_site/zz-test-tools-from-main-venv.pth"
"$floors/bin/python" -m pytest -q -p no:cacheprovider tests/unit tests/core "$@"
