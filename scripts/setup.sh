#!/usr/bin/env bash
# Set up everything Gatekeeper and its tests need on a fresh Debian/Ubuntu machine:
# the Debian packages (only those missing) and a virtualenv in .venv with the project
# installed editable. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${GATEKEEPER_EXTRAS:-dev,speed}"
debs=("$@")  # extra Debian packages a caller needs (e.g. wrk for benchmarks)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
for pkg in "${debs[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"setup: Gatekeeper needs Python 3.11 or newer, this is {sys.version.split()[0]}")
PY

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=".venv/.gatekeeper-installed-$(sha256sum pyproject.toml | cut -c1-16)-${extras//,/-}"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[${extras}]"
    rm -f .venv/.gatekeeper-installed-*
    touch "$stamp"
fi
