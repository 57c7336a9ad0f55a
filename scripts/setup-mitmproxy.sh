#!/usr/bin/env bash
# A second virtualenv, .venv-mitmproxy, with Gatekeeper and its mitmproxy extra, for the
# mitmproxy front end (gatekeeper/edge/mitm.py) and its test. mitmproxy 12 needs
# Python 3.12 or newer; the main .venv may be older, so this one uses the newest
# python3.13 or python3.12 found. Safe to run again: it installs only when pyproject.toml
# changed. Without such an interpreter it says so and exits 0: the front-end test then
# fails with a message naming what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

python=""
candidates=(python3.13 python3.12)
# pyenv installs versions that its shims only run when selected: ask for them by path.
if command -v pyenv >/dev/null 2>&1; then
    root="$(pyenv root)"
    for dir in "$root"/versions/3.13* "$root"/versions/3.12*; do
        [ -x "$dir/bin/python3" ] && candidates+=("$dir/bin/python3")
    done
fi
for candidate in "${candidates[@]}"; do
    if "$candidate" -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 12)' \
            >/dev/null 2>&1; then
        python="$candidate"
        break
    fi
done
if [ -z "$python" ]; then
    echo "setup-mitmproxy: no python3.12 or newer found; the mitmproxy front end cannot be tested" >&2
    exit 0
fi
if [ ! -x .venv-mitmproxy/bin/python ]; then
    "$python" -m venv .venv-mitmproxy
fi
stamp=".venv-mitmproxy/.gatekeeper-installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    .venv-mitmproxy/bin/python -m pip install -q --upgrade pip
    .venv-mitmproxy/bin/python -m pip install -q -e ".[mitmproxy,speed,redis]"
    rm -f .venv-mitmproxy/.gatekeeper-installed-*
    touch "$stamp"
fi
