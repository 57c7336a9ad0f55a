#!/usr/bin/env bash
# Benchmarks: set up, then the HTTP benchmark with wrk (origin, bare pass-through proxy,
# Gatekeeper allow / block / no-classification) and the decision-core pytest-benchmark.
# Every figure is printed with its ratio to a baseline measured in the same run.
# Extra arguments go to bench/http_bench.py (--duration, --rounds, --connections, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh wrk nginx-light
.venv/bin/python bench/http_bench.py "$@"
echo
.venv/bin/python -m pytest bench/test_bench_core.py --benchmark-only -q -p no:cacheprovider \
    --benchmark-columns=min,median,mean,ops --benchmark-sort=name
