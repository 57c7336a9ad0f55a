"""`gatekeeper run` as a real process: start-up, admin endpoints, hot reload, SIGHUP
and SIGTERM draining in-flight requests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import GPTBOT, Upstream


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, admin: int, log: Path) -> None:
        self.proc, self.port, self.admin, self.log = proc, port, admin, log
        self.url = f"http://127.0.0.1:{port}"
        self.admin_url = f"http://127.0.0.1:{admin}"

    def log_events(self) -> list[dict[str, object]]:
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


@pytest.fixture
def run_gatekeeper(tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(upstream: str, *extra: str) -> Running:
        port, admin = free_port(), free_port()
        log = tmp_path / f"gk-{len(procs)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "gatekeeper", "run", "--upstream", upstream,
             "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}", *extra],
            stdout=log.open("wb"), stderr=subprocess.STDOUT,
            env={**os.environ, "GATEKEEPER_POLICY_WATCH_INTERVAL": "0.2",
                 # Keys, licensees and the ledger of this process only.
                 "GATEKEEPER_STATE_DIR": str(tmp_path / f"state-{len(procs)}")},
        )
        procs.append(proc)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", admin), 0.2).close()
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return Running(proc, port, admin, log)
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(log.read_text()) from None
                time.sleep(0.05)
        raise RuntimeError("gatekeeper did not start: " + log.read_text())

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _status(url: str, ua: str = "Mozilla/5.0") -> int:
    async with aiohttp.ClientSession() as s, s.get(url, headers={"User-Agent": ua}) as r:
        await r.read()
        return r.status


async def test_admin_endpoints_serve_health_readiness_and_metrics(
    upstream: Upstream, run_gatekeeper
) -> None:  # type: ignore[no-untyped-def]
    gk = run_gatekeeper(upstream.url)
    assert await _status(gk.url + "/a") == 200
    assert await _status(gk.url + "/a", GPTBOT) == 403
    async with aiohttp.ClientSession() as s:
        async with s.get(gk.admin_url + "/healthz") as r:
            assert r.status == 200
        async with s.get(gk.admin_url + "/readyz") as r:
            assert r.status == 200
            assert (await r.json())["checks"]["upstream_reachable"] is True
        async with s.get(gk.admin_url + "/metrics") as r:
            text = await r.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in text_string_to_metric_families(text) for s in m.samples
    }
    key = ("gatekeeper_requests_total", tuple(sorted({
        "crawler": "GPTBot", "purpose": "ai-training", "identity": "spoofed",
        "action": "block", "reason": "blocked"}.items())))
    assert samples[key] == 1.0
    # The main listener does not serve admin paths: they go to the upstream.
    await _status(gk.url + "/metrics")
    assert upstream.paths()[-1] == "/metrics"


async def test_readyz_fails_when_the_upstream_is_down(run_gatekeeper) -> None:  # type: ignore[no-untyped-def]
    gk = run_gatekeeper(f"http://127.0.0.1:{free_port()}")
    async with aiohttp.ClientSession() as s, s.get(gk.admin_url + "/readyz") as r:
        assert r.status == 503
        assert (await r.json())["checks"]["upstream_reachable"] is False


async def test_bad_policy_reload_keeps_the_last_good_policy(
    upstream: Upstream, run_gatekeeper, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - {match: {crawlers: [GPTBot]}, action: block}\n")
    gk = run_gatekeeper(upstream.url, "--policy", str(policy))
    assert await _status(gk.url + "/a", GPTBOT) == 403

    policy.write_text("version: 1\nrules:\n  - {match: {crawlers: [GPTBott]}, action: allow}\n")
    await _wait_for(lambda: _reload_count(gk, "failure") >= 1)
    assert await _status(gk.url + "/a", GPTBOT) == 403  # still the old policy
    failure = [e for e in gk.log_events() if e.get("event") == "policy_reload_failed"]
    assert "GPTBott" in json.dumps(failure[0]["problems"])
    assert ":3:" in json.dumps(failure[0]["problems"])

    policy.write_text("version: 1\nrules:\n  - {match: {crawlers: [GPTBot]}, action: allow}\n")
    await _wait_for(lambda: _reload_count(gk, "success") >= 2)
    assert await _status(gk.url + "/a", GPTBOT) == 200


async def test_sighup_reloads_the_policy(
    upstream: Upstream, run_gatekeeper, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules: []\n")
    gk = run_gatekeeper(upstream.url, "--policy", str(policy), "--config",
                        str(_settings(tmp_path, "policy_watch_interval: 0\n")))
    assert await _status(gk.url + "/a", GPTBOT) == 200
    policy.write_text("version: 1\nrules:\n  - {match: {crawlers: [GPTBot]}, action: block}\n")
    gk.proc.send_signal(signal.SIGHUP)
    await _wait_for(lambda: _reload_count(gk, "success") >= 2)
    assert await _status(gk.url + "/a", GPTBOT) == 403


async def test_sigterm_lets_in_flight_requests_finish_then_exits_zero(
    upstream: Upstream, run_gatekeeper
) -> None:  # type: ignore[no-untyped-def]
    gk = run_gatekeeper(upstream.url)
    async with aiohttp.ClientSession() as s:
        in_flight = asyncio.ensure_future(s.get(gk.url + "/slow?s=1"))
        await _wait_for(lambda: "/slow?s=1" in upstream.paths())
        gk.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", gk.port), 0.5).close()
        resp = await in_flight
        assert resp.status == 200
        assert await resp.text() == "late"
    assert await asyncio.to_thread(gk.proc.wait, 10) == 0


def test_invalid_policy_stops_start_up_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - action: blok\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "run", "--upstream", "http://127.0.0.1:1",
         "--policy", str(bad), "--listen", f"127.0.0.1:{free_port()}",
         "--admin-listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert f"{bad}:3: rules[0].action: unknown action 'blok'; did you mean 'block'?" in proc.stderr


def _settings(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return path


def _reload_count(gk: Running, result: str) -> int:
    return sum(1 for e in gk.log_events()
               if e.get("event") == ("policy_reloaded" if result == "success"
                                     else "policy_reload_failed"))


async def _wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def test_refuses_to_start_on_the_pure_python_http_parser() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "run", "--upstream", "http://127.0.0.1:1",
         "--listen", f"127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"},
    )
    assert proc.returncode == 2
    assert "C HTTP parser is not in use" in proc.stderr


async def test_licensed_requests_are_all_in_the_ledger_after_sigterm(  # type: ignore[no-untyped-def]
    run_gatekeeper, upstream, tmp_path: Path
) -> None:
    import base64

    from gatekeeper.ledger.file import read, verify
    from gatekeeper.licensing.keys import Keyring
    from gatekeeper.licensing.licensees import Licensees
    from tests.integration.test_licensing_e2e import OPENAI, POLICY

    state = tmp_path / "state-0"  # the first process's state directory (run_gatekeeper)
    Keyring.generate(state / "keys")
    secret = Licensees(state / "licensees.json").add(
        "acme", "Acme AI", "GPTBot", ["ai-train-standard"])
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    config = tmp_path / "settings.yaml"
    config.write_text(f"policy: {policy}\nsite_hosts: [127.0.0.1]\n"
                      "trusted_proxies: [127.0.0.0/8]\n")
    gk = run_gatekeeper(upstream.url, "--config", str(config))
    basic = base64.b64encode(f"acme:{secret}".encode()).decode()
    page = gk.url + "/articles/1"
    async with aiohttp.ClientSession() as s:
        async with s.post(gk.url + "/.well-known/gatekeeper/token",
                          data={"grant_type": "rsl", "license": "ai-train-standard",
                                "resource": page},
                          headers={"Authorization": f"Basic {basic}"}) as r:
            token = (await r.json())["access_token"]
        headers = {**OPENAI, "Authorization": f"License {token}",
                   "crawler-max-price": "USD 0.01"}

        async def fetch() -> int:
            async with s.get(page, headers=headers) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(fetch() for _ in range(25)))
    assert statuses == [200] * 25
    # Stopped at once, while the ledger's batch is still in memory: nothing is lost.
    gk.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(gk.proc.wait, 30) == 0
    ledger = state / "ledger.jsonl"
    assert verify(ledger).ok
    assert len(list(read(ledger))) == 25


async def test_sighup_loads_a_new_signing_key_without_a_restart(  # type: ignore[no-untyped-def]
    run_gatekeeper, upstream, tmp_path: Path
) -> None:
    from gatekeeper.licensing.keys import Keyring

    state = tmp_path / "state-0"
    first = Keyring.generate(state / "keys")
    config = tmp_path / "settings.yaml"
    config.write_text("site_hosts: [127.0.0.1]\n")
    gk = run_gatekeeper(upstream.url, "--config", str(config))

    async def kids() -> set[str]:
        async with aiohttp.ClientSession() as s, s.get(gk.url + "/.well-known/jwks.json") as r:
            return {k["kid"] for k in (await r.json())["keys"]}

    assert await kids() == {first}
    second = Keyring.generate(state / "keys")
    gk.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while await kids() != {first, second}:
        assert time.monotonic() < deadline, "the new key was not loaded"
        await asyncio.sleep(0.1)


async def test_forward_auth_mode_answers_checks_from_the_trusted_proxy(
    upstream: Upstream, run_gatekeeper
) -> None:  # type: ignore[no-untyped-def]
    gk = run_gatekeeper(upstream.url, "--mode", "forward-auth", "--trusted-proxy",
                        "127.0.0.1/32")
    async with aiohttp.ClientSession() as s:
        checks = [("Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0", 200), (GPTBOT, 403)]
        for ua, expected in checks:
            async with s.get(gk.url + "/auth", headers={
                    "User-Agent": ua, "X-Original-URI": "/articles/1",
                    "X-Forwarded-For": "192.0.2.7"}) as r:
                assert r.status == expected
                assert r.headers["X-Gatekeeper-Rule"]
    # Only decisions: nothing is forwarded to the upstream.
    assert upstream.paths() == []
    assert any(e.get("event") == "started" and e.get("mode") == "forward-auth"
               for e in gk.log_events())
