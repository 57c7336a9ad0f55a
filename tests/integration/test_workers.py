"""`gatekeeper run --workers N` as real processes: one port, a supervisor that merges
the workers' metrics, restarts a worker that dies, and stops them all on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Upstream
from tests.integration.test_process import free_port
from tests.support.redis_server import RedisTestServer


@pytest.fixture
def redis_server() -> Iterator[RedisTestServer]:
    with RedisTestServer() as server:
        yield server


def _start(upstream: str, tmp_path: Path, *settings: str) -> tuple[subprocess.Popen[bytes],
                                                                    int, int, Path]:
    port, admin = free_port(), free_port()
    log = tmp_path / "gk.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    env["GATEKEEPER_STATE_DIR"] = str(tmp_path / "state")
    for item in settings:
        name, _, value = item.partition("=")
        env[f"GATEKEEPER_{name.upper()}"] = value
    proc = subprocess.Popen(
        [sys.executable, "-m", "gatekeeper", "run", "--upstream", upstream,
         "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    return proc, port, admin, log


async def _ready(admin: int, proc: subprocess.Popen[bytes], log: Path,
                 timeout: float = 30.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(await asyncio.to_thread(log.read_text))
            try:
                async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                    body: dict[str, object] = await r.json()
                    if r.status == 200:
                        return body
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("not ready: " + await asyncio.to_thread(log.read_text))


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False)
    return [int(p) for p in out.stdout.split()]


async def test_two_workers_share_the_port_and_their_metrics_are_merged(
    upstream: Upstream, redis_server: RedisTestServer, tmp_path: Path
) -> None:
    # 120 requests at once from one address: more than one client may have in flight.
    proc, port, admin, log = _start(upstream.url, tmp_path, "workers=2", "store=redis",
                                    f"redis_url={redis_server.url}",
                                    "max_in_flight_per_client=0")
    try:
        assert (await _ready(admin, proc, log))["workers"] == {"0": True, "1": True}
        assert len(_children(proc.pid)) == 2

        async def one(n: int) -> int:
            # A connection each: the kernel spreads new connections over the workers.
            async with aiohttp.ClientSession() as s, s.get(
                    f"http://127.0.0.1:{port}/page/{n}") as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one(n) for n in range(120)))
        assert statuses == [200] * 120
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{admin}/metrics") as r:
            text = await r.text()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        served = sum(sample.value for sample in families["gatekeeper_requests"].samples
                     if sample.name == "gatekeeper_requests_total")
        assert served == 120
        count = [sample.value for sample in families["gatekeeper_request_duration_seconds"]
                 .samples if sample.name.endswith("_count")]
        assert sum(count) == 120

        # A worker that dies is replaced; the port keeps answering meanwhile.
        victim = _children(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/x") as r:
            assert r.status == 200
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            children = _children(proc.pid)
            if len(children) == 2 and victim not in children:
                break
            await asyncio.sleep(0.2)
        assert len(_children(proc.pid)) == 2
        assert (await _ready(admin, proc, log))["workers"] == {"0": True, "1": True}
    finally:
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    # SIGTERM reached every worker: none is left behind.
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(e.get("event") == "worker_died" for e in events)


def test_several_workers_with_the_memory_store_and_rate_limits_are_refused(
    upstream: Upstream, tmp_path: Path
) -> None:
    proc, _, _, log = _start(upstream.url, tmp_path, "workers=2")
    assert proc.wait(timeout=60) == 2
    text = log.read_text()
    assert "workers: 2 workers with store: memory would each keep their own count" in text
    assert "rate-limit-ai-assistants" in text
