#!/usr/bin/env bash
# Set up and run the whole test suite (unit, integration over real sockets, CLI).
# Real parts the tests use: redis-server, nginx, prometheus, chromium, systemd's
# systemd-analyze and slowhttptest (Debian packages, installed when missing), and
# mitmdump (scripts/setup-mitmproxy.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
GATEKEEPER_EXTRAS="${GATEKEEPER_EXTRAS:-dev,speed,redis}" scripts/setup.sh redis-server nginx prometheus chromium systemd slowhttptest
# The mitmproxy front end needs Python 3.12+ (mitmproxy 12): a venv of its own.
scripts/setup-mitmproxy.sh
exec .venv/bin/python -m pytest "$@"
