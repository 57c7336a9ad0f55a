"""HTTP benchmark on loopback with wrk: origin direct, a bare pass-through proxy
(the baseline), and Gatekeeper on an allowed path, a blocked path, and an allowed
path with user-agent classification switched off.

Every figure is printed with its ratio to the pass-through measured in the same
run; rounds alternate the order of the targets and the median is kept, because
these machines are noisy. The script always exits 0: it reports, it does not gate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv" / "bin" / "python")
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
GPTBOT = ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; "
          "+https://openai.com/gptbot)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port}")


@contextlib.contextmanager
def process(cmd: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    try:
        wait_port(port)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def nginx_origin(port: int, tmp: Path) -> Iterator[None]:
    (tmp / "www").mkdir()
    (tmp / "www" / "page.html").write_bytes(b"<p>" + b"x" * (10 * 1024 - 7) + b"</p>")
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; root {tmp}/www;
           location / {{ try_files /page.html =404; }} }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    with process([nginx, "-c", str(conf)], port):
        yield


def wrk(port: int, ua: str, path: str, duration: int, connections: int,
        tmp: Path) -> dict[str, float]:
    script = tmp / "ua.lua"
    script.write_text(f'wrk.headers["User-Agent"] = {json.dumps(ua)}\n')
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {m.group(1): _ms(m.group(2), m.group(3))
           for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50": lat.get("50", 0.0), "p99": lat.get("99", 0.0),
            "non2xx": float(non2xx.group(1)) if non2xx else 0.0}


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--json", help="write the medians to this file")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: run bench/run.sh, which installs it")

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        origin, passthrough, gk, gk_nocls = (free_port() for _ in range(4))
        admin, admin2 = free_port(), free_port()
        upstream = f"http://127.0.0.1:{origin}"

        def gatekeeper(port: int, admin_port: int) -> list[str]:
            return [PY, "-m", "gatekeeper", "run", "--upstream", upstream,
                    "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}"]

        targets = {
            "origin direct": (origin, BROWSER, "/page"),
            "pass-through": (passthrough, BROWSER, "/page"),
            "gatekeeper allow": (gk, BROWSER, "/page"),
            "gatekeeper block": (gk, GPTBOT, "/page"),
            "gatekeeper allow, no classification": (gk_nocls, BROWSER, "/page"),
        }
        results: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        with contextlib.ExitStack() as stack:
            stack.enter_context(nginx_origin(origin, tmp))
            stack.enter_context(process(
                [PY, str(ROOT / "bench" / "passthrough.py"), "--upstream", upstream,
                 "--listen", f"127.0.0.1:{passthrough}", "--uvloop"], passthrough))
            # The request log goes to /dev/null: it is still formatted and written.
            stack.enter_context(process(gatekeeper(gk, admin), gk))
            stack.enter_context(process(gatekeeper(gk_nocls, admin2), gk_nocls,
                                        {"GATEKEEPER_BENCH_NO_CLASSIFY": "1"}))
            for port, ua, path in targets.values():  # warm-up
                wrk(port, ua, path, 2, args.connections, tmp)
            names = list(targets)
            for r in range(args.rounds):
                order = names if r % 2 == 0 else list(reversed(names))
                for name in order:
                    port, ua, path = targets[name]
                    results[name].append(wrk(port, ua, path, args.duration, args.connections,
                                             tmp))
    med = {name: {k: statistics.median(run[k] for run in runs) for k in runs[0]}
           for name, runs in results.items()}
    report(med, args)
    if args.json:
        Path(args.json).write_text(json.dumps(med, indent=2))
    return 0


def report(med: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    base = med["pass-through"]
    print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, 10 KB page, nginx origin, "
          f"median of {args.rounds} rounds\n")
    print(f"{'target':40} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'rps/pass':>9}")
    for name, m in med.items():
        print(f"{name:40} {m['rps']:9.0f} {m['p50']:8.2f} {m['p99']:8.2f} "
              f"{m['rps'] / base['rps']:9.2f}")
    allow, block = med["gatekeeper allow"], med["gatekeeper block"]
    nocls = med["gatekeeper allow, no classification"]
    checks = [
        ("allow rps / pass-through rps", allow["rps"] / base["rps"], ">=", 0.85),
        ("allow p99 / pass-through p99", allow["p99"] / base["p99"], "<=", 1.3),
        ("block rps / allow rps", block["rps"] / allow["rps"], ">=", 1.5),
        ("classification cost (1 - allow / allow-no-classify)",
         1 - allow["rps"] / nocls["rps"], "<=", 0.03),
    ]
    print()
    for label, value, op, target in checks:
        ok = value >= target if op == ">=" else value <= target
        print(f"{label:55} {value:6.3f}  target {op} {target}  {'PASS' if ok else 'MISS'}")
    if block["non2xx"] == 0:
        print("warning: the block target answered no 403s; is GPTBot still blocked?")


if __name__ == "__main__":
    raise SystemExit(main())
