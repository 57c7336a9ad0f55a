#!/usr/bin/env bash
# The benchmarks, in one command (about 3 minutes with the defaults; --loop both about 5):
#   1. the HTTP benchmark (bench/http_bench.py): wrk against nginx direct, the bare
#      aiohttp pass-through (the baseline) and Gatekeeper allowing, blocking, and
#      allowing with classification switched off;
#   2. the decision-core benchmark (bench/test_bench_core.py, pytest-benchmark);
#   3. throughput from one worker to two (bench/workers_bench.py, Redis store);
#   4. nginx + forward-auth against nginx with a user-agent map (bench/forward_auth.py).
# Every figure is printed next to a baseline measured in the same run. Arguments go
# to http_bench.py: --duration S --rounds N --connections C --loop uvloop|asyncio|both
# --json FILE. Exits 0 whatever the targets say; non-zero only if it could not run.
#
# Sets up what is missing: the virtualenv (.venv, with the dev and speed extras), and
# wrk and nginx from the Debian archive (as root, or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

apt_updated=0
apt_install() {  # apt_install PACKAGE...: the first one apt has a candidate for
    local pkg
    for _ in 1 2; do
        for pkg in "$@"; do
            if apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
                echo "bench: apt-get install $pkg"
                as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
                return 0
            fi
        done
        if [ "$apt_updated" -eq 0 ]; then
            as_root apt-get update -qq
            apt_updated=1
        fi
    done
    echo "bench: none of $* can be installed with apt-get" >&2
    return 1
}

command -v wrk >/dev/null || apt_install wrk
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx-light nginx
command -v redis-server >/dev/null || apt_install redis-server

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv 2>/dev/null || { apt_install python3-venv && python3 -m venv .venv; }
    .venv/bin/python -m pip install -q -e '.[dev,speed,redis]'
fi
# uvloop (the speed extra) is what the targets are stated with; pytest-benchmark is in dev.
if ! .venv/bin/python -c 'import uvloop, pytest_benchmark, redis' 2>/dev/null; then
    .venv/bin/python -m pip install -q -e '.[dev,speed,redis]'
fi

.venv/bin/python bench/http_bench.py "$@"
echo
# bench/ is outside the test suite's testpaths: only this line runs it.
.venv/bin/python -m pytest bench/test_bench_core.py bench/test_bench_behaviour.py \
    bench/test_bench_tokens.py --benchmark-only -q -p no:cacheprovider \
    --benchmark-columns=min,median,mean,rounds --benchmark-sort=name
echo
# Scaling from one worker to two (Redis store): bench/workers_bench.py.
(cd bench && ../.venv/bin/python workers_bench.py)
echo
# nginx asking Gatekeeper (forward-auth) against nginx deciding alone: bench/forward_auth.py.
.venv/bin/python bench/forward_auth.py
