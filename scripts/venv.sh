#!/usr/bin/env bash
# Create .venv and install the project with its test tools (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
# libvirt-python builds against the system libvirt: it needs its headers.
for p in libvirt-dev pkg-config python3-venv gcc python3-dev; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="${missing:-} $p"
    fi
done
if [[ -n "${missing:-}" ]] && ! { command -v pkg-config >/dev/null && pkg-config --exists libvirt; }; then
    echo "venv: installing${missing}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ${missing}
fi
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
stamp=.venv/.installed-$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)
# The editable install must be this checkout's: a moved or copied checkout (or a
# .venv shared with another one) would otherwise import another tree, or none.
here=$(pwd -P)
if ! (cd / && "$here/.venv/bin/python" -c 'import sys, worker; sys.exit(not worker.__file__.startswith(sys.argv[1] + "/"))' "$here") 2>/dev/null; then
    rm -f .venv/.installed-*
fi
if [[ ! -f $stamp ]]; then
    .venv/bin/pip install -q --upgrade pip
    # --no-compile: byte-compiling all ~150 distributions (nova's among them) took 35 of the
    # install's 75 s here; Python compiles the modules the runs import, once, on first use.
    .venv/bin/pip install -q --no-compile -e ".[test,dev]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
