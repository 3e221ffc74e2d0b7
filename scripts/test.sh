#!/usr/bin/env bash
# The whole test suite: starts RabbitMQ and libvirtd (installing them when
# missing), installs the project in .venv, then runs every tier with pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x; without any, the unit
# tiers run once more at the dependency floors (scripts/test-floors.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/venv.sh
.venv/bin/ruff check worker handlers bench tests
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
# The whole run (no arguments, as CI runs it) also runs the unit tiers at the dependency
# floors of setup.cfg, in their own venv (about 40 s; a minute more the first time).
if [[ $# -eq 0 && -z ${SKIP_FLOORS:-} ]]; then
    bash scripts/test-floors.sh
fi
