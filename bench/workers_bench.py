"""Throughput scaling from one worker to two (`gatekeeper run --workers N`).

Targets, all serving bench/origin.py's 10 KB nginx page as a browser, measured with
wrk in the same run, rounds alternating their order:

  pass-through         bench/passthrough.py (uvloop): the single-process baseline
  gatekeeper 1 worker  `gatekeeper run --workers 1`, store: redis
  gatekeeper 2 workers `gatekeeper run --workers 2`, store: redis
  1 worker, local windows   the same as 1 worker with behaviour_store: local

Both Gatekeeper targets use the Redis store (a real redis-server started here), as
several workers must for the default policy's rate limits; the embedded default
policy otherwise. The figure reported is 2 workers / 1 worker requests/s, per round,
median over rounds. On a 2-core machine wrk, nginx and redis-server share the cores
with the workers, so the ceiling is well under 2.

Usage: bench/run.sh runs it after the main benchmark; alone:
  .venv/bin/python bench/workers_bench.py [--duration S] [--rounds N] [--connections C]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from http_bench import (
    BENCH,
    BROWSER,
    PY,
    Target,
    WrkResult,
    ensure_wrk,
    free_port,
    probe,
    run_wrk,
    server,
)
from origin import apt_install, nginx_origin, stop_process, wait_for_port

PASS, ONE, TWO = "pass-through", "gatekeeper 1 worker", "gatekeeper 2 workers"
LOCAL = "1 worker, local windows"


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None and apt_install(["redis-server"]):
        binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is needed (Debian package redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gk-bench-redis-") as workdir:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port, proc)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop_process(proc)


def gatekeeper(upstream: str, port: int, workers: int, redis_url: str,
               ) -> tuple[list[str], dict[str, str]]:
    cmd = [PY, "-m", "gatekeeper", "run", "--upstream", upstream, "--listen",
           f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{free_port()}",
           "--workers", str(workers)]
    return cmd, {"GATEKEEPER_STORE": "redis", "GATEKEEPER_REDIS_URL": redis_url}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    wrk = ensure_wrk()
    rounds: dict[str, list[WrkResult]] = {PASS: [], ONE: [], TWO: [], LOCAL: []}
    with tempfile.TemporaryDirectory(prefix="gk-bench-") as tmpdir, \
            contextlib.ExitStack() as stack:
        origin_port = free_port()
        upstream = f"http://127.0.0.1:{origin_port}"
        stack.enter_context(nginx_origin(origin_port))
        redis_url = stack.enter_context(redis_server())
        pass_port, one_port, two_port = free_port(), free_port(), free_port()
        local_port = free_port()
        stack.enter_context(server(
            [PY, str(BENCH / "passthrough.py"), "--upstream", upstream, "--listen",
             f"127.0.0.1:{pass_port}", "--uvloop"], pass_port))
        for port, workers in ((one_port, 1), (two_port, 2)):
            cmd, env = gatekeeper(upstream, port, workers, redis_url)
            stack.enter_context(server(cmd, port, env))
        cmd, env = gatekeeper(upstream, local_port, 1, redis_url)
        stack.enter_context(server(cmd, local_port, {**env,
                                                     "GATEKEEPER_BEHAVIOUR_STORE": "local"}))
        targets = [Target(PASS, "uvloop", pass_port, BROWSER, 200),
                   Target(ONE, "uvloop", one_port, BROWSER, 200),
                   Target(TWO, "uvloop", two_port, BROWSER, 200),
                   Target(LOCAL, "uvloop", local_port, BROWSER, 200)]
        time.sleep(1.0)  # the second worker of the 2-worker target binds a moment later
        for t in targets:
            status, _ = probe(t)
            if status != 200:
                print(f"workers: {t.kind} answered {status}, not 200", file=sys.stderr)
                return 1
        scripts = Path(tmpdir) / "lua"
        scripts.mkdir()
        for t in targets:
            run_wrk(wrk, t, 2, args.connections, scripts)
        for r in range(args.rounds):
            for t in (targets if r % 2 == 0 else targets[::-1]):
                rounds[t.kind].append(run_wrk(wrk, t, args.duration, args.connections,
                                              scripts))
    ratios = [two.rps / one.rps for one, two in zip(rounds[ONE], rounds[TWO], strict=True)]
    cost = [one.rps / p.rps for one, p in zip(rounds[ONE], rounds[PASS], strict=True)]
    print(f"\nworkers benchmark: wrk -t1 -c{args.connections} -d{args.duration}s, "
          f"{args.rounds} rounds, store: redis")
    print(f"{'target':<22} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}   (medians)")
    for kind, results in rounds.items():
        print(f"{kind:<22} {statistics.median(r.rps for r in results):>9.0f} "
              f"{statistics.median(r.p50_ms for r in results):>8.2f} "
              f"{statistics.median(r.p99_ms for r in results):>8.2f}")
    print(f"2 workers / 1 worker req/s: {statistics.median(ratios):.2f} "
          f"[{min(ratios):.2f}..{max(ratios):.2f}]")
    print(f"1 worker (redis store) / pass-through req/s: {statistics.median(cost):.2f} "
          f"[{min(cost):.2f}..{max(cost):.2f}]")
    local = [lo.rps / p.rps for lo, p in zip(rounds[LOCAL], rounds[PASS], strict=True)]
    print(f"1 worker, behaviour_store: local / pass-through req/s: "
          f"{statistics.median(local):.2f} [{min(local):.2f}..{max(local):.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
