"""Forward-auth benchmark: nginx asking Gatekeeper, against nginx deciding alone.

All in one run, on loopback, wrk -t1 -c32 -d10s (the settings of bench/http_bench.py),
the same 10 KB page from the same origin nginx (bench/origin.py) behind a front nginx:

  map            the baseline: the front nginx blocks AI crawlers itself with a
                 `map $http_user_agent` of one case-insensitive regex per AI crawler
                 of Gatekeeper's catalog (about 150), and proxies the rest
  forward-auth   the front nginx runs deploy/nginx/gatekeeper-forward-auth.conf as
                 shipped (only addresses and the cache directory replaced), asking
                 Gatekeeper in forward-auth mode (embedded default policy)
  no cache       the same with `proxy_cache off` in the auth location: every
                 request is a round trip to Gatekeeper

Repeated-client traffic: one client address, one user agent, one path per target.
The headline is AhrefsBot (a crawler the default policy allows: a cacheable
decision); a browser (never cached while behaviour scoring counts its requests) and
GPTBot (refused, cacheable) are measured too. GPTBot gets its own Gatekeeper: a
browser arriving from the address a crawler was refused at looks like a crawler
switching its user agent (docs/behaviour.md). Each target's "decided" column is
how many requests Gatekeeper itself decided (its request log lines) during the
measurement.

    .venv/bin/python bench/forward_auth.py [--duration S] [--rounds N] [--json FILE]

Exits 0 whatever the ratio; 1 only if it could not measure. Needs wrk and nginx
(installed with apt-get when missing, as bench/run.sh does).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from http_bench import (
    BROWSER,
    GPTBOT,
    PY,
    WARMUP_SECONDS,
    LogTap,
    Target,
    WrkResult,
    ensure_wrk,
    environment,
    free_port,
    probe,
    run_wrk,
    server,
)
from origin import (
    PAGE_SIZE,
    ensure_nginx,
    nginx_main_conf,
    nginx_origin,
    nginx_running,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "deploy" / "nginx" / "gatekeeper-forward-auth.conf"
AHREFS = "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)"
AI_PURPOSES = ("ai-training", "ai-assistant", "ai-search", "ai-agent")
HEADLINE_TARGET = 0.5


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    front: str  # "map" (the baseline), "auth" (shipped config), "nocache"
    user_agent: str
    expect: int
    # Which Gatekeeper process: one per user agent, so that one client's behaviour
    # windows are not another's (a crawler's requests without Accept headers would
    # count against the browser that follows from the same address).
    gatekeeper: str = ""


CASES = (
    Case("map/ahrefs", "map, AhrefsBot (allowed)", "map", AHREFS, 200),
    Case("auth/ahrefs", "forward-auth, AhrefsBot (cached)", "auth", AHREFS, 200, "ahrefs"),
    Case("nocache/ahrefs", "forward-auth no cache, AhrefsBot", "nocache", AHREFS, 200,
         "ahrefs"),
    Case("map/browser", "map, browser", "map", BROWSER, 200),
    Case("auth/browser", "forward-auth, browser (never cached)", "auth", BROWSER, 200,
         "browser"),
    Case("map/gptbot", "map, GPTBot (403)", "map", GPTBOT, 403),
    Case("auth/gptbot", "forward-auth, GPTBot (403, cached)", "auth", GPTBOT, 403, "gptbot"),
)
# (label, numerator, denominator, target or None)
RATIOS = (
    ("forward-auth / map, AhrefsBot (target >= 0.5)", "auth/ahrefs", "map/ahrefs",
     HEADLINE_TARGET),
    ("forward-auth no cache / map, AhrefsBot", "nocache/ahrefs", "map/ahrefs", None),
    ("forward-auth / map, browser", "auth/browser", "map/browser", None),
    ("forward-auth / map, GPTBot", "auth/gptbot", "map/gptbot", None),
)


# -- configurations ------------------------------------------------------------------


def ai_crawler_map() -> tuple[str, int]:
    """`map $http_user_agent $gk_bench_ai_crawler`: one regex per AI crawler token."""
    from gatekeeper.catalog_loader import load_catalog

    tokens: list[str] = []
    for crawler in load_catalog():
        if str(crawler.purpose) in AI_PURPOSES:
            tokens.extend(t for t in crawler.ua_tokens if t not in tokens)
    lines = "".join(f'    "~*{re.escape(t)}" 1;\n' for t in tokens)
    return f"map $http_user_agent $gk_bench_ai_crawler {{\n    default 0;\n{lines}}}\n", \
        len(tokens)


def map_front(listen: int, origin: int) -> str:
    ai_map, _ = ai_crawler_map()
    return ai_map + f"""
upstream gk_bench_origin {{
    server 127.0.0.1:{origin};
    keepalive 32;
}}
server {{
    listen 127.0.0.1:{listen} backlog=1024;
    location / {{
        if ($gk_bench_ai_crawler) {{
            return 403 '{{"error":"blocked","status":403}}\\n';
        }}
        proxy_pass http://gk_bench_origin;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
    }}
}}
"""


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise RuntimeError(f"{SHIPPED} changed: {old!r} is not there exactly once")
    return text.replace(old, new)


def auth_front(listen: int, gatekeeper: int, origin: int, cache: Path, *,
               cached: bool = True) -> str:
    conf = SHIPPED.read_text(encoding="utf-8")
    conf = _replace_once(conf, "server 127.0.0.1:8080;", f"server 127.0.0.1:{gatekeeper};")
    conf = _replace_once(conf, "server 127.0.0.1:8000;", f"server 127.0.0.1:{origin};")
    conf = _replace_once(conf, "listen 80;", f"listen 127.0.0.1:{listen} backlog=1024;")
    conf = _replace_once(conf, "listen [::]:80;", "")
    conf = _replace_once(conf, "/var/cache/nginx/gatekeeper-auth", str(cache))
    if not cached:
        conf = _replace_once(conf, "proxy_cache gatekeeper_auth;", "proxy_cache off;")
    return conf


def main_conf(workdir: Path, include: Path) -> str:
    """As the origin runs (bench/origin.py), with the forward-auth site included."""
    return nginx_main_conf(workdir, f"    include {include};\n")


@contextlib.contextmanager
def front_nginx(workdir: Path, port: int, http_conf: str) -> Iterator[None]:
    nginx = ensure_nginx()
    (workdir / "temp").mkdir(parents=True, exist_ok=True)
    include = workdir / "front.conf"
    include.write_text(http_conf, encoding="utf-8")
    conf = workdir / "nginx.conf"
    conf.write_text(main_conf(workdir, include), encoding="utf-8")
    with nginx_running(nginx, workdir, conf, port):
        yield


# -- Gatekeeper in forward-auth mode ---------------------------------------------------


def serve_gatekeeper(port: int, upstream: str, state: str) -> int:
    """Gatekeeper's forward-auth listener, as `gatekeeper run --mode forward-auth` would
    run it: embedded default policy, nginx on 127.0.0.1 trusted, one JSON log line per
    decision on standard output, uvloop when installed."""
    from gatekeeper import wiring
    from gatekeeper.edge import server as gk_server
    from gatekeeper.edge.forward_auth import forward_auth_app
    from gatekeeper.edge.server import Listeners
    from gatekeeper.observe import logging as gk_logging
    from gatekeeper.settings import Settings

    gk_logging.configure("json", "info")
    settings = dataclasses.replace(
        Settings(), upstream=upstream, listen=f"127.0.0.1:{port}", state_dir=state,
        trusted_proxies=("127.0.0.1/32",), ranges_refresh_interval=0,
    )
    c = wiring.build(settings)
    app = forward_auth_app(c)

    async def start(listeners: Listeners) -> None:
        await listeners.start(app, settings.listen, settings)

    gk_server.run(gk_server.serve_until_signalled(
        start, lambda: None, lambda _: wiring.freeze_long_lived()))
    return 0


def gatekeeper_cmd(port: int, upstream: str) -> list[str]:
    return [PY, str(Path(__file__).resolve()), "--serve-gatekeeper", str(port),
            "--upstream", upstream, "--state-dir", tempfile.mkdtemp(prefix="gk-bench-state-")]


# -- the run -------------------------------------------------------------------------


@dataclass
class Measured:
    rounds: dict[str, list[WrkResult]] = field(default_factory=dict)
    decided: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def measure(args: argparse.Namespace, wrk: str, out: Measured,
            progress: Callable[[str], None]) -> int:
    with tempfile.TemporaryDirectory(prefix="gk-bench-fa-") as tmpdir, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmpdir)
        tmp.chmod(0o755)  # nginx workers (not root) must reach their directories
        origin = free_port()
        stack.enter_context(nginx_origin(origin))
        upstream = f"http://127.0.0.1:{origin}"
        gk_ports = {case.gatekeeper: free_port() for case in CASES if case.gatekeeper}
        taps: dict[str, LogTap] = {}
        for name, port in gk_ports.items():
            taps[name] = stack.enter_context(server(gatekeeper_cmd(port, upstream), port))
        # One front nginx per (configuration, Gatekeeper).
        fronts: dict[tuple[str, str], int] = {}
        for case in CASES:
            where = (case.front, case.gatekeeper)
            if where in fronts:
                continue
            port = fronts[where] = free_port()
            workdir = tmp / "-".join(filter(None, where))
            if case.front == "map":
                conf = map_front(port, origin)
            else:
                conf = auth_front(port, gk_ports[case.gatekeeper], origin, workdir / "cache",
                                  cached=case.front != "nocache")
            stack.enter_context(front_nginx(workdir, port, conf))
        targets = {case.key: Target(case.key.replace("/", "-"), "uvloop",
                                    fronts[(case.front, case.gatekeeper)], case.user_agent,
                                    case.expect) for case in CASES}
        for case in CASES:
            status, size = probe(targets[case.key])
            if status != case.expect or (status == 200 and size != PAGE_SIZE):
                raise RuntimeError(f"{case.key} answered {status} with {size} bytes, "
                                   f"expected {case.expect}")
            out.rounds[case.key], out.decided[case.key] = [], []
        scripts = tmp / "lua"
        scripts.mkdir()
        progress(f"warm-up: {WARMUP_SECONDS}s per target")
        for case in CASES:
            run_wrk(wrk, targets[case.key], WARMUP_SECONDS, args.connections, scripts)
        for r in range(args.rounds):
            order = CASES if r % 2 == 0 else CASES[::-1]
            progress(f"round {r + 1}/{args.rounds}: {len(order)} targets x {args.duration}s")
            for case in order:
                tap = taps.get(case.gatekeeper)
                before = tap.lines if tap is not None else 0
                result = run_wrk(wrk, targets[case.key], args.duration, args.connections,
                                 scripts)
                out.rounds[case.key].append(result)
                out.decided[case.key].append((tap.lines - before) if tap is not None else 0)
                bad = result.requests - result.non_2xx_3xx if case.expect >= 300 \
                    else result.non_2xx_3xx
                if bad or result.socket_errors:
                    out.notes.append(f"{case.key} round {r + 1}: {bad} unexpected statuses, "
                                     f"{result.socket_errors} socket errors")
    return ai_crawler_map()[1]


def report(args: argparse.Namespace, out: Measured, map_entries: int) -> dict[str, Any]:
    print(f"\nForward-auth benchmark: wrk -t1 -c{args.connections} -d{args.duration}s "
          f"--latency, {PAGE_SIZE}-byte page, loopback, median of {args.rounds} round(s)")
    print(f"baseline map: {map_entries} case-insensitive regex entries; forward-auth: "
          f"{SHIPPED.relative_to(ROOT)} with nginx's auth cache; Gatekeeper's default policy")
    print(f"\n  {'target':40} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'decided':>9}")
    medians: dict[str, dict[str, float]] = {}
    for case in CASES:
        results = out.rounds[case.key]
        row = {m: statistics.median(float(getattr(r, m)) for r in results)
               for m in ("rps", "p50_ms", "p99_ms")}
        row["decided"] = statistics.median(out.decided[case.key])
        row["requests"] = statistics.median(r.requests for r in results)
        medians[case.key] = row
        decided = "-" if case.front == "map" else f"{row['decided']:.0f}"
        print(f"  {case.label:40} {row['rps']:8.0f} {row['p50_ms']:8.2f} "
              f"{row['p99_ms']:8.2f} {decided:>9}")
    print(f"\n  {'ratio of req/s (median of per-round ratios)':48} {'value':>6}  "
          f"{'[min..max]':>14}")
    ratios = []
    for label, num, den, target in RATIOS:
        per_round = sorted(a.rps / b.rps for a, b in
                           zip(out.rounds[num], out.rounds[den], strict=True) if b.rps > 0)
        value = statistics.median(per_round)
        verdict = "" if target is None else ("PASS" if value >= target else "MISS")
        print(f"  {label:48} {value:6.2f}  [{per_round[0]:.2f}..{per_round[-1]:.2f}]  "
              f"{verdict}")
        ratios.append({"label": label, "value": value, "per_round": per_round,
                       "target": target})
    for note in out.notes:
        print(f"note: {note}")
    return {"config": vars(args), "environment": environment(), "medians": medians,
            "ratios": ratios, "map_entries": map_entries, "notes": out.notes,
            "rounds": {k: [asdict(r) for r in v] for k, v in out.rounds.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measurement (10)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds, median kept (1)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    ap.add_argument("--serve-gatekeeper", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--upstream", help=argparse.SUPPRESS)
    ap.add_argument("--state-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_gatekeeper is not None:
        return serve_gatekeeper(args.serve_gatekeeper, args.upstream, args.state_dir)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    if args.duration < 1 or args.rounds < 1 or args.connections < 1:
        ap.error("--duration, --rounds and --connections must be at least 1")

    def progress(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    out = Measured()
    try:
        wrk = ensure_wrk()
        entries = measure(args, wrk, out, progress)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"bench: could not measure: {exc}", file=sys.stderr)
        return 1
    summary = report(args, out, entries)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
