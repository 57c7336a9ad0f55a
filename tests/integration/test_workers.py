"""`gatekeeper run --workers N` as real processes: one port, a supervisor that merges
the workers' metrics and status pages, restarts a worker that dies, stops them all on
SIGTERM, and leaves nothing behind when a worker cannot start."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import AHREFS, ASSISTANT, BROWSER_HEADERS, GPTBOT, Upstream
from tests.integration.test_process import free_port
from tests.support.redis_server import RedisTestServer

# A policy that needs nothing shared between workers: the memory store will do.
UNSHARED_POLICY = """
version: 1
default: allow
rules:
  - name: block-private
    match: {paths: ["/private/**"]}
    action: block
"""


@pytest.fixture
def redis_server() -> Iterator[RedisTestServer]:
    with RedisTestServer() as server:
        yield server


def _start(upstream: str, tmp_path: Path, *settings: str,
           port: int | None = None) -> tuple[subprocess.Popen[bytes], int, int, Path]:
    port, admin = port or free_port(), free_port()
    log = tmp_path / "gk.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    env["GATEKEEPER_STATE_DIR"] = str(tmp_path / "state")
    # The supervisor's scratch directory goes here, where the test can look for it.
    env["TMPDIR"] = str(_scratch_root(tmp_path))
    for item in settings:
        name, _, value = item.partition("=")
        env[f"GATEKEEPER_{name.upper()}"] = value
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gatekeeper", "run", "--upstream", upstream,
             "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    return proc, port, admin, log


async def _running(upstream: str, tmp_path: Path, *settings: str
                   ) -> tuple[subprocess.Popen[bytes], int, int, Path]:
    """`_start`, once every worker is up. The ports are picked before the workers bind
    them: when another process takes one in between, it starts again on fresh ones."""
    for _ in range(4):
        proc, port, admin, log = _start(upstream, tmp_path, *settings)
        try:
            body = await _ready(admin, proc, log)
        except AssertionError:
            if proc.poll() is None or "address already in use" not in log.read_text().lower():
                raise
            continue
        assert body["workers"] == {str(n): True for n in range(2)}
        return proc, port, admin, log
    raise AssertionError("ports taken four times: " + log.read_text())


def _scratch_root(tmp_path: Path) -> Path:
    root = tmp_path / "tmp"
    root.mkdir(exist_ok=True)
    return root


def _scratch_dirs(tmp_path: Path) -> list[Path]:
    return sorted(_scratch_root(tmp_path).glob("gatekeeper-workers-*"))


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


def _events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _get(url: str, headers: dict[str, str] | None = None) -> int:
    # A connection each: the kernel spreads new connections over the workers.
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as s, s.get(
            url, headers=headers) as r:
        await r.read()
        return r.status


@pytest.mark.parametrize("mode", ["proxy", "forward-auth"])
async def test_two_workers_share_the_port_and_their_metrics_are_merged(
    upstream: Upstream, redis_server: RedisTestServer, tmp_path: Path, mode: str
) -> None:
    # 120 requests at once from one address: more than one client may have in flight.
    # forward-auth answers the checks of a trusted front proxy only.
    proc, port, admin, log = await _running(upstream.url, tmp_path, "workers=2", "store=redis",
                                            f"redis_url={redis_server.url}",
                                            "max_in_flight_per_client=0", f"mode={mode}",
                                            "trusted_proxies=127.0.0.1/32")

    async def one(n: int) -> int:
        if mode == "proxy":
            return await _get(f"http://127.0.0.1:{port}/page/{n}")
        # A check the way nginx's auth_request asks it (docs/forward-auth.md).
        return await _get(f"http://127.0.0.1:{port}/auth", {
            "X-Original-URI": f"/page/{n}", "X-Original-Method": "GET",
            "X-Forwarded-Host": "www.example.com"})

    try:
        assert len(_children(proc.pid)) == 2
        assert len(_scratch_dirs(tmp_path)) == 1

        statuses = await asyncio.gather(*(one(n) for n in range(120)))
        assert statuses == [200] * 120, log.read_text()[-5000:]
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
        assert await one(120) == 200
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
    # SIGTERM reached every worker: none is left behind, nor the scratch directory.
    for pid in workers:
        assert not _alive(pid)
    assert _scratch_dirs(tmp_path) == []
    assert any(e.get("event") == "worker_died" for e in _events(log))


@pytest.mark.parametrize("fault", ["port-taken", "ledger-locked"])
async def test_a_worker_that_cannot_start_stops_the_others_and_leaves_nothing_behind(
    upstream: Upstream, tmp_path: Path, fault: str
) -> None:
    # port-taken: a plain socket (no SO_REUSEPORT) on the port, so no worker can bind it.
    # ledger-locked: another process writes worker 1's ledger, so worker 1 stops early
    # while worker 0 starts as usual and has to be stopped.
    policy = tmp_path / "policy.yaml"
    policy.write_text(UNSHARED_POLICY)
    state = tmp_path / "state"
    state.mkdir()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        held = int(squatter.getsockname()[1]) if fault == "port-taken" else None
        lock = os.open(state / "ledger-1.jsonl.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if fault == "ledger-locked":
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            proc, _, _, log = _start(upstream.url, tmp_path, "workers=2", f"policy={policy}",
                                     port=held)
            code = await asyncio.to_thread(proc.wait, 60)
        finally:
            os.close(lock)
    text = log.read_text()
    assert code == 2, text
    assert "while starting" in text
    assert ("address already in use" if fault == "port-taken" else "already open for writing"
            ) in text.lower()
    started = [e["pid"] for e in _events(log) if e.get("event") == "worker_started"]
    assert len(started) == 2
    assert [pid for pid in started if _alive(pid)] == []
    assert _scratch_dirs(tmp_path) == []


async def _json(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200, await r.text()
        doc: dict[str, Any] = await r.json()
        return doc


async def test_the_status_page_adds_up_every_workers_traffic(
    upstream: Upstream, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(UNSHARED_POLICY)
    proc, port, admin, log = await _running(upstream.url, tmp_path, "workers=2",
                                            f"policy={policy}", "ranges_refresh_interval=0")
    url = f"http://127.0.0.1:{port}"
    sent = {  # crawler: (user agent, paths), one connection each
        "GPTBot": (GPTBOT, ["/articles/1"] * 5 + ["/articles/2"] * 4 + ["/private/x"]),
        "ChatGPT-User": (ASSISTANT, ["/news"] * 6),
        "AhrefsBot": (AHREFS, ["/seo"] * 3),
    }
    try:
        # Browsers first: after a crawler's refusal, a browser from the same address is
        # a crawler switching user agents (docs/behaviour.md).
        assert await asyncio.gather(*(_get(url + "/", BROWSER_HEADERS) for _ in range(4))
                                    ) == [200] * 4
        statuses = await asyncio.gather(*(_get(url + path, {"User-Agent": ua})
                                          for ua, paths in sent.values() for path in paths))
        assert sorted(statuses) == [200] * 18 + [403], log.read_text()[-5000:]

        # A request is recorded once its answer is sent: wait for the last ones.
        deadline = time.monotonic() + 5
        while True:
            doc = await _json(f"http://127.0.0.1:{admin}/status.json")
            seen = sum(m["crawlers"] + m["browsers"] for m in doc["per_minute"])
            if seen >= 23 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        [scratch] = _scratch_dirs(tmp_path)
        workers = [await _json(f"http://127.0.0.1:{p.read_text()}/status.json")
                   for p in sorted(scratch.glob("worker-*.port"))]
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin}/status") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/html")
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
            page = await r.text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert "status.json" in page

    # Both workers served some of it, so the page is a sum, not one worker's copy.
    assert len(workers) == 2
    assert all(w["crawlers"] or w["browsers"]["requests"] for w in workers)
    assert doc["workers"] == {"0": True, "1": True}
    rows = {row["crawler"]: row for row in doc["crawlers"]}
    assert {name: row["requests"] for name, row in rows.items()} == {
        name: len(paths) for name, (_, paths) in sent.items()}
    assert [row["crawler"] for row in doc["crawlers"]] == ["GPTBot", "ChatGPT-User",
                                                           "AhrefsBot"]
    assert rows["GPTBot"]["reasons"] == {"allowed": 9, "blocked": 1}
    assert rows["GPTBot"]["refused"] == 1
    assert rows["ChatGPT-User"]["reasons"] == {"allowed": 6}
    assert rows["AhrefsBot"]["reasons"] == {"allowed": 3}
    for name, row in rows.items():
        assert sum(row["identities"].values()) == row["requests"]
        assert row["robots_violations"] == sum(r["robots_violations"] for w in workers
                                               for r in w["crawlers"] if r["crawler"] == name)
    assert rows["GPTBot"]["operator"] == "OpenAI"
    assert doc["browsers"] == {"requests": 4, "refused": 0}
    # Only AI crawlers' paths; ranked on the sums.
    assert [(p["path"], p["requests"], p["crawlers"]) for p in doc["top_paths"]] == [
        ("/news", 6, ["ChatGPT-User"]), ("/articles/1", 5, ["GPTBot"]),
        ("/articles/2", 4, ["GPTBot"]), ("/private/x", 1, ["GPTBot"])]
    assert doc["licences"] == []
    assert len(doc["per_minute"]) == doc["window_minutes"] == 60
    assert sum(m["crawlers"] for m in doc["per_minute"]) == 19
    assert sum(m["browsers"] for m in doc["per_minute"]) == 4
    assert sum(m["refused"] for m in doc["per_minute"]) == 1
    assert doc["policy"]["source"] == str(policy)
    assert doc["policy"]["rules"] == 1
    assert (doc["policy"]["workers_agree"], doc["policy"]["differences"]) == (True, {})
    assert doc["policy"]["serving_since"] == max(w["policy"]["serving_since"] for w in workers)


async def _every_worker_answers(url: str, headers: dict[str, str], status: int) -> None:
    """Until 20 requests in a row, each on a new connection (spread over the workers by
    the kernel), answer `status`; the workers read owners.json once a second."""
    deadline = time.monotonic() + 5
    while True:
        statuses = await asyncio.gather(*(_get(url, headers) for _ in range(20)))
        if statuses == [status] * 20:
            return
        assert time.monotonic() < deadline, statuses
        await asyncio.sleep(0.2)


async def test_the_owner_api_on_the_supervisors_admin_listener_reaches_every_worker(
    upstream: Upstream, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(UNSHARED_POLICY)
    proc, port, admin, log = await _running(upstream.url, tmp_path, "workers=2",
                                            f"policy={policy}", "ranges_refresh_interval=0",
                                            "behaviour=false")
    page = f"http://127.0.0.1:{port}/articles/alice/1"
    owners = f"http://127.0.0.1:{admin}/owners"
    gptbot = {"User-Agent": GPTBOT}
    try:
        await _every_worker_answers(page, gptbot, 200)
        async with aiohttp.ClientSession() as s:
            async with s.put(owners + "/alice", json={
                    "paths": ["/articles/alice/**"], "stance": "opt-out"}) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["stance"] == "opt-out"
            async with s.put(owners + "/bad", json={"paths": [], "stance": "maybe"}) as r:
                assert r.status == 400  # the worker's own validation, relayed
            async with s.get(owners) as r:
                assert [o["name"] for o in (await r.json())["owners"]] == ["alice"]
        await _every_worker_answers(page, gptbot, 403)
        async with aiohttp.ClientSession() as s, s.delete(owners + "/alice") as r:
            assert r.status == 200
        await _every_worker_answers(page, gptbot, 200)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]


def test_several_workers_with_the_memory_store_and_rate_limits_are_refused(
    upstream: Upstream, tmp_path: Path
) -> None:
    proc, _, _, log = _start(upstream.url, tmp_path, "workers=2")
    assert proc.wait(timeout=60) == 2
    text = log.read_text()
    assert "workers: 2 workers with store: memory would each keep their own count" in text
    assert "rate-limit-ai-assistants" in text
    # The default policy blocks spoofed crawlers: a replayed signature passed to another
    # worker would not be.
    assert "replay cache" in text
    assert "block-spoofed-crawlers" in text


async def test_a_reload_that_would_multiply_limits_is_refused_and_the_old_policy_kept(
    upstream: Upstream, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(UNSHARED_POLICY)
    proc, port, admin, log = await _running(upstream.url, tmp_path, "workers=2",
                                            f"policy={policy}", "ranges_refresh_interval=0",
                                            "behaviour=false", "policy_watch_interval=0")
    assistant = {"User-Agent": ASSISTANT}
    try:
        policy.write_text(UNSHARED_POLICY + """
  - name: slow-assistants
    match: {crawlers: [ChatGPT-User]}
    action: {rate_limit: {rate: 1/h, burst: 2}}
""")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while len([e for e in _events(log) if e.get("event") == "policy_reload_failed"]) < 2:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        # Both workers kept the policy they started with: no limit, counted or not.
        statuses = await asyncio.gather(*(_get(f"http://127.0.0.1:{port}/news", assistant)
                                          for _ in range(12)))
        assert statuses == [200] * 12
        doc = await _json(f"http://127.0.0.1:{admin}/status.json")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    failed = [e for e in _events(log) if e.get("event") == "policy_reload_failed"]
    assert all("would each keep their own count for slow-assistants" in p
               for e in failed for p in e["problems"]), failed
    assert doc["policy"]["last_reload"]["ok"] is False
    assert doc["policy"]["rules"] == 1


async def test_workers_scoring_undeclared_bots_alone_start_with_a_warning(
    upstream: Upstream, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(UNSHARED_POLICY + """
  - name: block-undeclared-bots
    match: {purposes: [undeclared-bot]}
    action: block
""")
    proc, port, _, log = await _running(upstream.url, tmp_path, "workers=2",
                                        f"policy={policy}", "ranges_refresh_interval=0")
    try:
        # It started: the warning refuses nothing.
        assert await _get(f"http://127.0.0.1:{port}/", BROWSER_HEADERS) == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    [warning] = [e for e in _events(log) if e.get("event") == "behaviour_windows_per_worker"]
    assert warning["level"] == "warning"
    assert "each keep their own behaviour windows" in warning["detail"]
    assert "block-undeclared-bots" in warning["detail"]
    assert "set store: redis (with behaviour_store: shared, the default)" in warning["detail"]
