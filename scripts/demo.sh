#!/usr/bin/env bash
# The embedded demo: no broker or libvirtd needed (in-memory transport and
# libvirt's test driver); installs the project in .venv first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
exec .venv/bin/compute-worker demo "$@"
