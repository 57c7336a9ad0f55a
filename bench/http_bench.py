"""HTTP benchmark on loopback with wrk.

Targets, all serving the same 10 KB page from nginx (bench/origin.py):

  origin direct        nginx alone: the ceiling
  pass-through         bench/passthrough.py, aiohttp with no policy: THE BASELINE
  gatekeeper allow     `gatekeeper run`, embedded default policy, as a browser
  gatekeeper block     the same process, as GPTBot: answered 403, nothing forwarded
  gatekeeper no-class  allow, in a second Gatekeeper started with
                       GATEKEEPER_BENCH_NO_CLASSIFY=1 (every user agent is `unknown`)
  gatekeeper lean      allow, in a Gatekeeper with behaviour scoring and robots.txt
                       compliance switched off (GATEKEEPER_BEHAVIOUR=false,
                       GATEKEEPER_ROBOTS_COMPLIANCE=false): what those two cost

Every figure is read as a ratio to another one measured in the same run, because
these machines are noisy: each round runs every target once, rounds alternate the
order, and ratios are taken within a round (neighbours in time) before the median
over rounds is kept. The script exits 0 whatever the targets say (it reports, it
does not gate); it exits 1 only when it could not measure at all.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from origin import PAGE_PATH, PAGE_SIZE, apt_install, nginx_origin, stop_process, wait_for_port

BENCH = Path(__file__).resolve().parent
PY = sys.executable  # run.sh starts this script with the project's virtualenv Python
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
# What a browser sends with every page request besides its user agent. Without them
# Gatekeeper's behaviour scoring rightly takes one client sending thousands of bare
# requests a second for an undeclared bot and rate-limits it; with them the allow path
# is measured as a browser meets it (the score stays under the threshold).
BROWSER_HEADERS = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en-GB,en;q=0.5",
}
GPTBOT = ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; "
          "+https://openai.com/gptbot)")
WARMUP_SECONDS = 2
# Gatekeeper picks uvloop whenever it can import it; this makes the import fail, so
# the same CLI runs on asyncio's own loop without any switch in the product.
_ASYNCIO_LAUNCHER = ("import sys; sys.modules['uvloop'] = None; "
                     "from gatekeeper.cli import main; sys.exit(main(sys.argv[1:]))")

# Target kinds; one target per kind and event loop, plus the origin.
ORIGIN, PASS, ALLOW, BLOCK, NOCLASS, LEAN = (
    "origin", "pass", "allow", "block", "noclass", "lean")
LABELS = {
    ORIGIN: "origin direct (nginx)",
    PASS: "pass-through (baseline)",
    ALLOW: "gatekeeper allow",
    BLOCK: "gatekeeper block (GPTBot)",
    NOCLASS: "gatekeeper allow, no classification",
    LEAN: "gatekeeper allow, no behaviour/robots",
}
# Real settings, not a benchmark switch: an operator can run Gatekeeper this way.
LEAN_ENV = {"GATEKEEPER_BEHAVIOUR": "false", "GATEKEEPER_ROBOTS_COMPLIANCE": "false"}


@dataclass(frozen=True)
class Target:
    kind: str
    loop: str  # "-" for the origin
    port: int
    user_agent: str
    expect_status: int

    @property
    def key(self) -> str:
        return self.kind if self.kind == ORIGIN else f"{self.kind}/{self.loop}"


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx_3xx: int
    socket_errors: int


@dataclass(frozen=True)
class Check:
    label: str
    numerator: str  # target kind
    denominator: str
    metric: str  # "rps" or "p99_ms"
    op: str  # ">=", "<=" or "<"
    target: float
    as_cost: bool = False  # shown as 1 - ratio, in percent

    def value(self, ratio: float) -> float:
        return 1.0 - ratio if self.as_cost else ratio

    def passed(self, value: float) -> bool:
        if self.op == ">=":
            return value >= self.target
        return value <= self.target if self.op == "<=" else value < self.target


CHECKS = (
    Check("allow req/s / pass-through req/s", ALLOW, PASS, "rps", ">=", 0.85),
    Check("allow p99 / pass-through p99", ALLOW, PASS, "p99_ms", "<=", 1.3),
    Check("block req/s / allow req/s", BLOCK, ALLOW, "rps", ">=", 1.5),
    Check("classification cost: 1 - allow / no-classification req/s", ALLOW, NOCLASS, "rps",
          "<", 0.03, as_cost=True),
)
# Printed for the record, with no target of their own: where the allow path's time goes.
INFO = (
    Check("allow without behaviour/robots req/s / pass-through req/s", LEAN, PASS, "rps",
          ">=", 0.85),
    Check("behaviour + robots.txt cost: 1 - allow / lean req/s", ALLOW, LEAN, "rps",
          "<", 1.0, as_cost=True),
)


# -- tools -------------------------------------------------------------------------------


def ensure_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None and apt_install(["wrk"]):
        wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed and could not be installed (apt-get install wrk)")
    return wrk


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LogTap:
    """Drains a child's stdout+stderr pipe in a thread: keeps the first lines (to show
    why a server did not start, and which event loop it reported) and counts the rest.
    A drained pipe costs the writer what a log shipper would; nothing goes to disk."""

    KEEP = 40

    def __init__(self, stream: IO[bytes]) -> None:
        self.head: list[str] = []
        self.lines = 0
        self.bytes = 0
        self._stream = stream
        self._partial = b""
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        fd = self._stream.fileno()
        while chunk := os.read(fd, 1 << 16):  # ends at EOF, when the child exits
            self.bytes += len(chunk)
            self.lines += chunk.count(b"\n")
            if len(self.head) < self.KEEP:
                *complete, partial = (self._partial + chunk).split(b"\n")
                self._partial = partial[:4096]
                room = self.KEEP - len(self.head)
                self.head.extend(x.decode(errors="replace") for x in complete[:room])

    def join(self) -> None:
        self._thread.join(5.0)

    def event_loop(self) -> str | None:
        """The loop Gatekeeper says it runs on, from its `event_loop` log line."""
        for line in self.head:
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict) and doc.get("event") == "event_loop":
                    return str(doc.get("loop", "?"))
        return None


def clean_environ() -> dict[str, str]:
    """This environment without GATEKEEPER_* settings: every run measures the same
    Gatekeeper (defaults, embedded policy), whatever the shell has set."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}


def state_dir() -> str:
    """A state directory (keys, licensees, ledger) of one Gatekeeper process: each
    holds its ledger's lock, so no two may share one. Under the system's temporary
    directory, like the rest of a run's scratch files."""
    return tempfile.mkdtemp(prefix="gk-bench-state-")


@contextlib.contextmanager
def server(cmd: list[str], port: int, env: dict[str, str] | None = None,
           ) -> Iterator[LogTap]:
    """Start `cmd`, wait until it listens on `port`, stop it (SIGTERM) afterwards."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            env={**clean_environ(), "GATEKEEPER_STATE_DIR": state_dir(),
                                 **(env or {})})
    assert proc.stdout is not None
    tap = LogTap(proc.stdout)
    try:
        try:
            wait_for_port(port, proc)
        except RuntimeError as exc:
            stop_process(proc)
            tap.join()
            raise RuntimeError(f"{exc}\n  command: {' '.join(cmd[1:])}\n  output:\n    "
                               + "\n    ".join(tap.head[-15:])) from exc
        yield tap
    finally:
        stop_process(proc)
        tap.join()
        proc.stdout.close()


def request_headers(target: Target) -> dict[str, str]:
    """The headers every request to `target` carries (probe and wrk alike)."""
    extra = BROWSER_HEADERS if target.user_agent == BROWSER else {}
    return {"User-Agent": target.user_agent, **extra}


def probe(target: Target) -> tuple[int, int]:
    """(status, body length) of one request, as wrk will send it."""
    req = urllib.request.Request(f"http://127.0.0.1:{target.port}{PAGE_PATH}",
                                 headers=request_headers(target))
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status), len(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), len(exc.read())


# -- wrk -----------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)


def parse_wrk(out: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in ", out)
    if rps is None or total is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    latency = {m.group(1): float(m.group(2)) * _UNITS_MS[m.group(3)]
               for m in _LATENCY.finditer(out)}
    if set(latency) != {"50", "99"}:
        raise RuntimeError(f"wrk printed no latency distribution (needs --latency):\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        rps=float(rps.group(1)), p50_ms=latency["50"], p99_ms=latency["99"],
        requests=int(total.group(1)), non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
    )


def run_wrk(wrk: str, target: Target, seconds: int, connections: int, scripts: Path,
            ) -> WrkResult:
    script = scripts / f"ua-{target.kind}.lua"
    if not script.exists():
        # Headers are set once at start-up: wrk runs no Lua per request.
        script.write_text("".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n"
                                  for k, v in request_headers(target).items()),
                          encoding="utf-8")
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
           f"http://127.0.0.1:{target.port}{PAGE_PATH}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout)


# -- the run -------------------------------------------------------------------------------


@dataclass
class Run:
    config: dict[str, Any]
    environment: dict[str, Any]
    rounds: dict[str, list[WrkResult]] = field(default_factory=dict)
    loops_reported: dict[str, str] = field(default_factory=dict)
    log_lines: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def gatekeeper_cmd(loop: str, upstream: str, port: int, admin: int) -> list[str]:
    start = [PY, "-m", "gatekeeper"] if loop == "uvloop" else [PY, "-c", _ASYNCIO_LAUNCHER]
    return [*start, "run", "--upstream", upstream, "--listen", f"127.0.0.1:{port}",
            "--admin-listen", f"127.0.0.1:{admin}"]


def measure(args: argparse.Namespace, wrk: str, run: Run, progress: Callable[[str], None],
            ) -> None:
    loops = ["uvloop", "asyncio"] if args.loop == "both" else [args.loop]
    with tempfile.TemporaryDirectory(prefix="gk-bench-") as tmpdir, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmpdir)
        origin_port = free_port()
        upstream = f"http://127.0.0.1:{origin_port}"
        stack.enter_context(nginx_origin(origin_port))
        targets = [Target(ORIGIN, "-", origin_port, BROWSER, 200)]
        taps: dict[str, LogTap] = {}
        for loop in loops:
            pass_port, gk_port, nocls_port = free_port(), free_port(), free_port()
            block_port, lean_port = free_port(), free_port()
            cmd = [PY, str(BENCH / "passthrough.py"), "--upstream", upstream,
                   "--listen", f"127.0.0.1:{pass_port}", "--server", args.passthrough_server]
            if loop == "uvloop":
                cmd.append("--uvloop")
            stack.enter_context(server(cmd, pass_port))
            # Gatekeeper's request log (one JSON line per request, as in production)
            # goes to a pipe this script drains; see LogTap.
            taps[f"gatekeeper/{loop}"] = stack.enter_context(
                server(gatekeeper_cmd(loop, upstream, gk_port, free_port()), gk_port))
            taps[f"gatekeeper-no-classification/{loop}"] = stack.enter_context(server(
                gatekeeper_cmd(loop, upstream, nocls_port, free_port()), nocls_port,
                {"GATEKEEPER_BENCH_NO_CLASSIFY": "1"}))
            taps[f"gatekeeper-lean/{loop}"] = stack.enter_context(server(
                gatekeeper_cmd(loop, upstream, lean_port, free_port()), lean_port, LEAN_ENV))
            # GPTBot gets its own process: wrk connects from 127.0.0.1 for every target,
            # and a browser arriving from the address a crawler was just refused at is
            # what a crawler switching its user agent looks like (docs/behaviour.md).
            taps[f"gatekeeper-block/{loop}"] = stack.enter_context(
                server(gatekeeper_cmd(loop, upstream, block_port, free_port()), block_port))
            targets += [
                Target(PASS, loop, pass_port, BROWSER, 200),
                Target(ALLOW, loop, gk_port, BROWSER, 200),
                Target(NOCLASS, loop, nocls_port, BROWSER, 200),
                Target(BLOCK, loop, block_port, GPTBOT, 403),
                Target(LEAN, loop, lean_port, BROWSER, 200),
            ]
        sanity_checks(targets, upstream, run)
        for t in targets:
            run.rounds[t.key] = []
        scripts = tmp / "lua"
        scripts.mkdir()
        progress(f"warm-up: {WARMUP_SECONDS}s per target")
        for t in targets:
            run_wrk(wrk, t, WARMUP_SECONDS, args.connections, scripts)
        for r in range(args.rounds):
            order = targets if r % 2 == 0 else targets[::-1]
            progress(f"round {r + 1}/{args.rounds}: {len(order)} targets x {args.duration}s")
            for t in order:
                result = run_wrk(wrk, t, args.duration, args.connections, scripts)
                run.rounds[t.key].append(result)
                bad = result.requests - result.non_2xx_3xx if t.expect_status >= 300 \
                    else result.non_2xx_3xx
                if bad:
                    run.notes.append(f"{t.key} round {r + 1}: {bad} of {result.requests} "
                                     f"responses were not the expected {t.expect_status}")
                if result.socket_errors:
                    run.notes.append(f"{t.key} round {r + 1}: {result.socket_errors} "
                                     "wrk socket errors")
    for name, tap in taps.items():
        run.log_lines[name] = tap.lines
        run.loops_reported[name] = tap.event_loop() or "not reported"


def sanity_checks(targets: list[Target], upstream: str, run: Run) -> None:
    """Every target answers what it should before anything is timed; the
    no-classification switch is proven by GPTBot being let through."""
    for t in targets:
        status, size = probe(t)
        if status != t.expect_status or (status == 200 and size != PAGE_SIZE):
            raise RuntimeError(f"{t.key} answered {status} with {size} bytes, expected "
                               f"{t.expect_status}" + (f" with {PAGE_SIZE}" if status == 200
                                                       else ""))
    for t in targets:
        if t.kind == NOCLASS:
            status, _ = probe(Target(NOCLASS, t.loop, t.port, GPTBOT, 200))
            if status != 200:
                run.notes.append(
                    f"{t.key}: GPTBot got {status}, so GATEKEEPER_BENCH_NO_CLASSIFY=1 is "
                    "not honoured; the classification cost below is meaningless")


# -- report --------------------------------------------------------------------------------


def median_of(results: Sequence[WrkResult], metric: str) -> float:
    return statistics.median(float(getattr(r, metric)) for r in results)


def paired_ratios(run: Run, check: Check, loop: str) -> list[float]:
    """check.numerator / check.denominator, within each round."""
    num, den = run.rounds[f"{check.numerator}/{loop}"], run.rounds[f"{check.denominator}/{loop}"]
    return [getattr(a, check.metric) / getattr(b, check.metric)
            for a, b in zip(num, den, strict=True) if getattr(b, check.metric) > 0]


def report(run: Run, loops: Sequence[str]) -> dict[str, Any]:
    cfg = run.config
    env = run.environment
    print(f"\nHTTP benchmark: wrk -t1 -c{cfg['connections']} -d{cfg['duration']}s --latency, "
          f"{PAGE_SIZE}-byte page from nginx, loopback, median of {cfg['rounds']} rounds")
    print(f"{env['cpus']} CPUs, load average at start {env['load_at_start']}, "
          f"pass-through server: {cfg['passthrough_server']}")
    summary: dict[str, Any] = {"config": cfg, "environment": env, "loops": {}}
    origin = run.rounds[ORIGIN]
    for loop in loops:
        base = run.rounds[f"{PASS}/{loop}"]
        base_rps = median_of(base, "rps")
        print(f"\n[{loop}]  (Gatekeeper reported loop: "
              f"{run.loops_reported.get(f'gatekeeper/{loop}', '?')})")
        print(f"  {'target':38} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s vs pass':>14}")
        rows: dict[str, dict[str, float]] = {}
        for kind in (ORIGIN, PASS, ALLOW, BLOCK, NOCLASS, LEAN):
            results = origin if kind == ORIGIN else run.rounds[f"{kind}/{loop}"]
            row = {m: median_of(results, m) for m in ("rps", "p50_ms", "p99_ms")}
            rows[kind] = row
            print(f"  {LABELS[kind]:38} {row['rps']:8.0f} {row['p50_ms']:8.2f} "
                  f"{row['p99_ms']:8.2f} {row['rps'] / base_rps:13.2f}x")
        print(f"\n  {'ratio (median of the per-round ratios)':58} {'value':>7} "
              f"{'target':>9}  {'[min..max]':>18}")
        checks = []
        for check in CHECKS + INFO:
            ratios = paired_ratios(run, check, loop)
            values = sorted(check.value(x) for x in ratios)
            value = statistics.median(values)
            ok = check.passed(value)
            if check.as_cost:
                shown = f"{value:6.1%}"
                spread = f"[{values[0]:.1%}..{values[-1]:.1%}]"
                goal = f"{check.op} {check.target:.0%}"
            else:
                shown = f"{value:6.2f}"
                spread = f"[{values[0]:.2f}..{values[-1]:.2f}]"
                goal = f"{check.op} {check.target:g}"
            # When some rounds pass and others miss, the noise is larger than the
            # margin: the verdict is the median's, flagged as unsettled.
            unsettled = check.passed(values[0]) != check.passed(values[-1])
            verdict = ("PASS" if ok else "MISS") + (" (rounds disagree)" if unsettled else "")
            if check in INFO:
                goal, verdict = "", "(for the record)"
            print(f"  {check.label:58} {shown:>7} {goal:>9}  {spread:>18}  {verdict}")
            recorded = check not in INFO
            checks.append({"label": check.label, "value": value, "op": check.op,
                           "target": check.target if recorded else None,
                           "pass": ok if recorded else None, "unsettled": unsettled,
                           "per_round": ratios})
        summary["loops"][loop] = {"medians": rows, "checks": checks}
    if len(loops) == 2:
        ratio = (median_of(run.rounds[f"{PASS}/uvloop"], "rps")
                 / median_of(run.rounds[f"{PASS}/asyncio"], "rps"))
        print(f"\npass-through req/s, uvloop / asyncio: {ratio:.2f}")
    total = sum(run.log_lines.values())
    print(f"\nGatekeeper's log: {total} lines written to a drained pipe "
          "(one JSON line per request, as in production).")
    for note in run.notes:
        print(f"note: {note}")
    summary["rounds"] = {k: [asdict(r) for r in v] for k, v in run.rounds.items()}
    summary["gatekeeper_loops"] = run.loops_reported
    summary["notes"] = run.notes
    return summary


def classification_estimate(allow_rps: float) -> str:
    """In-process cost of one classification, as a share of one allowed request."""
    from gatekeeper.catalog_loader import load_catalog

    catalog = load_catalog()
    catalog.classify(BROWSER)
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        catalog.classify(BROWSER)
    cached = (time.perf_counter() - start) / n
    m = 2_000
    start = time.perf_counter()
    for i in range(m):
        catalog.classify(f"{BROWSER} bench/{i}")
    uncached = (time.perf_counter() - start) / m
    per_request = 1.0 / allow_rps
    return (f"classification in-process: {cached * 1e6:.2f} us cached (as wrk sends one UA), "
            f"{uncached * 1e6:.1f} us uncached = {cached / per_request:.2%} / "
            f"{uncached / per_request:.2%} of an allowed request at {allow_rps:.0f} req/s")


def environment() -> dict[str, Any]:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False) \
        if shutil.which("nginx") else None
    return {
        "cpus": os.cpu_count(),
        "load_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "aiohttp": version("aiohttp"),
        "uvloop": version("uvloop"),
        "nginx": nginx.stderr.strip() if nginx else "see bench/origin.py",
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measurement (10)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, median kept (3)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    ap.add_argument("--loop", choices=("uvloop", "asyncio", "both"), default="uvloop",
                    help="event loop of the pass-through and Gatekeeper (uvloop)")
    ap.add_argument("--passthrough-server", choices=("lowlevel", "app"), default="lowlevel",
                    help="aiohttp server of the pass-through; see passthrough.py (lowlevel)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    args = ap.parse_args(argv)
    # Killed with SIGTERM, unwind as with Ctrl-C: every server started here is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # in order with the progress lines
    if args.duration < 1 or args.rounds < 1 or args.connections < 1:
        ap.error("--duration, --rounds and --connections must be at least 1")
    loops = ["uvloop", "asyncio"] if args.loop == "both" else [args.loop]
    if "uvloop" in loops and importlib.util.find_spec("uvloop") is None:
        print("bench: uvloop is not installed (pip install -e '.[speed]'); "
              "measuring on asyncio", file=sys.stderr)
        args.loop, loops = "asyncio", ["asyncio"]

    def progress(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    ignored = sorted(k for k in os.environ if k.startswith("GATEKEEPER_"))
    if ignored:
        print(f"bench: not passed on to the servers: {', '.join(ignored)}", file=sys.stderr)
    run = Run(config={"duration": args.duration, "rounds": args.rounds,
                      "connections": args.connections, "loop": args.loop,
                      "passthrough_server": args.passthrough_server},
              environment=environment())
    try:
        wrk = ensure_wrk()
        measure(args, wrk, run, progress)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"bench: could not measure: {exc}", file=sys.stderr)
        return 1
    summary = report(run, loops)
    allow_rps = median_of(run.rounds[f"{ALLOW}/{loops[0]}"], "rps")
    estimate = classification_estimate(allow_rps)
    print(estimate)
    summary["classification_estimate"] = estimate
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
