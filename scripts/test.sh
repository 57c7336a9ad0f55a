#!/usr/bin/env bash
# Set up and run the whole test suite (unit, integration over real sockets, CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
