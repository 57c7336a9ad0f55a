"""D3 and D4: bounded load on loopback.

D3: two gate processes sharing one Redis admit exactly the limit under a
concurrent burst from one client, round after round (an INCR-then-EXPIRE store, or
a read-modify-write one, over-admits here). D4: slow-client attacks from
slowhttptest while ordinary clients keep being served.

The overhead budget of the request path (D1) is a benchmark, not a test: see
bench/http_bench.py. Throughput here is only ever a fixed count of requests.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import aiohttp

from tests.adversarial.conftest import Origin, StartGate
from tests.integration.conftest import BROWSER_HEADERS
from tests.support.raw_http import PUBLIC, exchange, request
from tests.support.recording_upstream import Received, RecordingUpstream, respond
from tests.support.redis_server import RedisTestServer

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# slowhttptest picks its user agent at random, some of them crawler claims that the
# suite's policy refuses from 127.0.0.1 as spoofed: the attacks must be forwarded.
ALLOW_ALL = "version: 1\ndefault: allow\n"
ATTACK_SECONDS = 8
BIG_PAGE = 1024 * 1024
LIMIT = 50
ROUNDS = 5
BURST = 100
SHARED_LIMIT = f"""
version: 1
default: allow
rules:
  - name: shared-limit
    match: {{paths: ["/limited/**"]}}
    action:
      rate_limit: {{rate: 1/hour, burst: {LIMIT}, key: client_ip}}
"""


async def test_two_replicas_admit_exactly_the_shared_limit_under_a_concurrent_burst(
    own_origin: Origin, start_gate: StartGate
) -> None:
    with RedisTestServer() as redis:
        # The burst is one client's: only the shared limit may refuse it here.
        env = {"GATEKEEPER_STORE": "redis", "GATEKEEPER_REDIS_URL": redis.url,
               "GATEKEEPER_LOG_LEVEL": "warning", "GATEKEEPER_MAX_IN_FLIGHT_PER_CLIENT": "0"}
        replicas = [start_gate(own_origin.faults.url, SHARED_LIMIT, env) for _ in range(2)]
        for n in range(ROUNDS):
            client = f"127.0.2.{n + 1}"  # a fresh client, so a fresh bucket, each round
            data = request("GET", f"/limited/{n}", {"User-Agent": "burst/1.0",
                                                    "Connection": "close"})
            replies = await asyncio.gather(*(
                exchange(replicas[i % 2].port, data, source=client, timeout=10)
                for i in range(BURST)))
            statuses = Counter(r.status for r in replies)
            assert statuses == {200: LIMIT, 429: BURST - LIMIT}, (n, statuses)
            assert all(r.responses[0].header("Retry-After") for r in replies
                       if r.status == 429)
    forwarded = [r for r in own_origin.upstream.requests() if r.path.startswith("/limited/")]
    assert len(forwarded) == ROUNDS * LIMIT


async def _big_page(received: Received, writer: asyncio.StreamWriter,
                    upstream: RecordingUpstream) -> bool:
    await respond(writer, 200, b"p" * BIG_PAGE, [("Content-Type", "text/plain")])
    return True


def _attack_stats(csv: Path) -> list[dict[str, int]]:
    """slowhttptest's per-second counts: seconds, closed, pending, connected."""
    rows = []
    for line in csv.read_text().splitlines()[1:]:
        cells = line.split(",")
        rows.append({"seconds": int(cells[0]), "closed": int(cells[1]),
                     "pending": int(cells[2]), "connected": int(cells[3])})
    return rows


def _exit_status(output: Path) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", output.read_text(errors="replace"))
    found = re.findall(r"Exit status:\s*(.+)", text)
    return found[-1].strip() if found else ""


async def test_slow_clients_are_cut_off_while_ordinary_clients_are_served(
    own_origin: Origin, start_gate: StartGate
) -> None:
    slowhttptest = shutil.which("slowhttptest")
    assert slowhttptest, "slowhttptest is installed by scripts/test.sh"
    own_origin.upstream.routes["/public/big"] = _big_page
    gate = start_gate(own_origin.faults.url, ALLOW_ALL, env={
        "GATEKEEPER_CLIENT_HEADER_TIMEOUT": "2", "GATEKEEPER_CLIENT_BODY_TIMEOUT": "2",
        "GATEKEEPER_CLIENT_SEND_TIMEOUT": "2"})
    rss_before = gate.rss_kib()
    common = ["-l", str(ATTACK_SECONDS), "-g"]
    attacks = {
        # Slow headers: one more header line every second on each connection.
        "headers": ["-H", "-c", "150", "-r", "150", "-i", "1", "-u", gate.url + "/public/"],
        # Slow body: a declared 8 KiB body, a few bytes a second.
        "body": ["-B", "-c", "150", "-r", "150", "-i", "1", "-s", "8192",
                 "-u", gate.url + "/public/"],
        # Slow read: a tiny receive window, reading a 1 MiB page a few bytes at a time.
        "read": ["-X", "-c", "100", "-r", "100", "-w", "16", "-y", "32", "-n", "2",
                 "-z", "16", "-k", "2", "-u", gate.url + "/public/big"],
    }
    logs = {name: (gate.workdir / f"{name}.out").open("wb") for name in attacks}
    procs = {name: subprocess.Popen(  # noqa: ASYNC220 - waited for in a thread below
        [slowhttptest, *args, *common, "-o", str(gate.workdir / name)],
        stdout=logs[name], stderr=subprocess.STDOUT) for name, args in attacks.items()}
    latencies: list[float] = []
    errors: list[str] = []
    peak_rss = rss_before
    fds_before = gate.open_fds()
    try:
        await asyncio.sleep(1.0)  # let the attacks open their connections
        # slowhttptest cannot choose its source: the attacks come from 127.0.0.1.
        connector = aiohttp.TCPConnector(local_addr=(PUBLIC, 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            for i in range(40):
                started = time.monotonic()
                try:
                    async with session.get(f"{gate.url}/public/ok-{i}",
                                           headers=BROWSER_HEADERS) as r:
                        await r.read()
                        if r.status != 200:
                            errors.append(f"status {r.status}")
                except aiohttp.ClientError as exc:
                    errors.append(repr(exc))
                latencies.append(time.monotonic() - started)
                peak_rss = max(peak_rss, gate.rss_kib())
                await asyncio.sleep(0.1)
        fds_late = gate.open_fds()  # the attacks are still running
    finally:
        for name, proc in procs.items():
            await asyncio.to_thread(proc.wait, 60)
            logs[name].close()
    stats = {name: _attack_stats(gate.workdir / f"{name}.csv") for name in attacks}
    endings = {name: _exit_status(gate.workdir / f"{name}.out") for name in attacks}
    figures = {"latency_p50_s": sorted(latencies)[len(latencies) // 2],
               "latency_max_s": max(latencies), "rss_kib_before": rss_before,
               "rss_kib_peak": peak_rss, "fds_before": fds_before, "fds_late": fds_late,
               "attacks": {name: {**rows[-1], "exit": endings[name]}
                           for name, rows in stats.items()}}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "slow-clients.json").write_text(json.dumps(figures, indent=2))
    assert errors == []
    latencies.sort()
    assert latencies[int(len(latencies) * 0.99) - 1] < 1.0, figures
    # Slow headers and slow bodies are cut by the gate well before the attack ends.
    for name in ("headers", "body"):
        assert max(row["connected"] for row in stats[name]) > 0, (name, stats[name])
        # slowhttptest stops early once the gate has closed every connection.
        assert endings[name] == "No open connections left", figures
        assert stats[name][-1]["seconds"] < ATTACK_SECONDS - 1, figures
    # Slow readers are cut too. What the gate had already written stays in the
    # kernel's buffers, still trickling to them, so slowhttptest counts them as
    # connected to the end; the gate itself holds no socket for them any more.
    assert max(row["connected"] for row in stats["read"]) > 0, stats["read"]
    assert fds_late - fds_before < 10, figures
    assert peak_rss - rss_before < 32 * 1024, figures
    # One address cannot hold more than its share of the upstream pool ...
    refused = await gate.value("gatekeeper_bad_requests_total", reason="too_many_in_flight")
    assert refused > 0, json.dumps(figures)
    # ... and those it holds are cut by the timeouts and rate floors.
    cut = await gate.value("gatekeeper_client_faults_total", fault="client_timeout")
    assert cut > 0, json.dumps(figures)
