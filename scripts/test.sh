#!/usr/bin/env bash
# The whole test suite: starts RabbitMQ and libvirtd (installing them when
# missing), installs the project in .venv, then runs every tier with pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/venv.sh
.venv/bin/ruff check worker handlers bench tests
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
