#!/usr/bin/env bash
# Set up and run the whole test suite (unit, integration over real sockets, CLI).
# The Redis store is tested against a real redis-server: setup installs Debian's
# package, and the redis extra (redis-py) besides the usual dev and speed extras.
set -euo pipefail
cd "$(dirname "$0")/.."
GATEKEEPER_EXTRAS="${GATEKEEPER_EXTRAS:-dev,speed,redis}" scripts/setup.sh redis-server nginx prometheus
exec .venv/bin/python -m pytest "$@"
