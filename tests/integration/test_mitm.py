"""The mitmproxy addon in a real mitmdump, for what the front-end table does not cover:
forward-proxy (regular) mode, a policy that does not load, and the licence server's
paths, which the addon does not serve (docs/mitmproxy.md)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from gatekeeper.licensing.keys import Keyring
from gatekeeper.wiring import LICENCE_SERVER_PREFIX
from tests.integration.conftest import GPTBOT, Upstream
from tests.integration.test_frontends import (
    MITM_SCRIPT,
    ROOT,
    START_TIMEOUT,
    mitmdump_executable,
    spawn,
    wait_listening,
)
from tests.integration.test_nginx_forward_auth import free_port
from tests.support.raw_http import Reply, exchange, request

POLICY = """
version: 1
default: allow
rules:
  - {name: block-ai-training, match: {purposes: [ai-training]}, action: block}
"""
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 "
                         "Firefox/128.0", "Accept": "text/html", "Accept-Language": "en"}


@dataclass
class Mitmdump:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    async def send(self, method: str, target: str, headers: dict[str, str], *,
                   host: str) -> Reply:
        return await exchange(self.port, request(method, target, {
            **headers, "Connection": "close"}, host=host), source="127.0.0.1", timeout=10)


class Mitmdumps:
    """mitmdump processes with the addon, each in a directory of its own under `base`,
    stopped at teardown."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, mode: str = "", policy: str = POLICY,
              settings: str = "ranges_refresh_interval: 0\n",
              state: Path | None = None) -> tuple[subprocess.Popen[bytes], Path, int]:
        """Start one: `mode` ("" for mitmproxy's default, regular), the policy file's
        text, the settings file's text. Returns it (maybe not listening yet), its
        directory and the port it is told to listen on."""
        run = self.base / f"mitmdump-{len(self.procs)}"
        run.mkdir()
        (run / "policy.yaml").write_text(policy)
        (run / "settings.yaml").write_text(settings)
        port = free_port()
        args = [
            mitmdump_executable(), "-s", str(MITM_SCRIPT),
            *(["--mode", mode] if mode else []),
            "--listen-host", "127.0.0.1", "--listen-port", str(port),
            "--set", f"confdir={run / 'mitmproxy'}",
            "--set", f"gatekeeper_policy={run / 'policy.yaml'}",
            "--set", f"gatekeeper_config={run / 'settings.yaml'}",
            "--set", f"gatekeeper_state_dir={state or run / 'state'}",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
        env["GATEKEEPER_LOG_LEVEL"] = "warning"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
        proc = spawn(args, env, run, run / "output.log")
        self.procs.append(proc)
        return proc, run, port

    async def start(self, mode: str = "", policy: str = POLICY,
                    settings: str = "ranges_refresh_interval: 0\n",
                    state: Path | None = None) -> Mitmdump:
        """`spawn`, then wait until it listens."""
        proc, run, port = self.spawn(mode, policy, settings, state)
        await wait_listening(port, proc, run / "output.log")
        return Mitmdump(port, proc, run / "output.log")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def mitmdumps(tmp_path: Path) -> Iterator[Mitmdumps]:
    runner = Mitmdumps(tmp_path)
    yield runner
    runner.stop()


async def test_forward_proxy_mode_decides_every_request(
    mitmdumps: Mitmdumps, upstream: Upstream
) -> None:
    mitm = await mitmdumps.start()  # no --mode: mitmproxy's regular forward proxy
    authority = f"127.0.0.1:{upstream.port}"
    site = f"http://{authority}"
    allowed = await mitm.send("GET", site + "/articles/1?page=2", BROWSER, host=authority)
    assert allowed.status == 200
    # The origin's answer: the canonical target, with the gate's forwarded headers.
    seen = orjson.loads(allowed.responses[0].body)
    assert seen["raw_path"] == "/articles/1?page=2"
    assert dict(seen["headers"])["X-Forwarded-For"] == "127.0.0.1"
    assert allowed.responses[0].header("Content-Usage") == "train-ai=n, search=y"
    blocked = await mitm.send("GET", site + "/articles/2", {"User-Agent": GPTBOT},
                              host=authority)
    assert blocked.status == 403
    assert orjson.loads(blocked.responses[0].body) == {
        "error": "blocked", "rule": "block-ai-training", "status": 403}
    # No single origin: robots.txt holds the policy's groups, read from no upstream.
    robots = await mitm.send("GET", site + "/robots.txt", {"User-Agent": GPTBOT},
                             host=authority)
    assert robots.status == 200
    group = robots.responses[0].body.split(b"\nUser-agent: GPTBot\n")[1].split(b"\n\n")[0]
    assert b"\nDisallow: /\n" in group + b"\n"
    assert upstream.paths() == ["/articles/1?page=2"]
    assert upstream.robots_fetches == []


async def test_a_policy_that_does_not_load_stops_mitmdump_before_it_listens(
    mitmdumps: Mitmdumps, upstream: Upstream
) -> None:
    # docs/mitmproxy.md: a settings or policy error stops mitmproxy at start-up, so no
    # request is ever forwarded by an addon without its gate.
    broken = "version: 1\nrules:\n  - {name: r, match: {nope: 1}, action: block}\n"
    proc, run, port = mitmdumps.spawn(f"reverse:{upstream.url}", broken)
    code = await asyncio.to_thread(proc.wait, START_TIMEOUT)
    output = (run / "output.log").read_text(errors="replace")
    assert code != 0, output
    assert f"{run / 'policy.yaml'}:3: rules[0].match.nope: unknown key" in output
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    assert upstream.seen == []


async def test_licence_server_paths_are_answered_501_and_never_forwarded(
    mitmdumps: Mitmdumps, upstream: Upstream, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    Keyring.generate(state / "keys")
    mitm = await mitmdumps.start(f"reverse:{upstream.url}", state=state,
                                settings="ranges_refresh_interval: 0\n"
                                         "site_hosts: [site.example]\n")
    for path in ("/token", "/introspect"):
        started = time.monotonic()
        reply = await mitm.send("POST", LICENCE_SERVER_PREFIX + path,
                                {"Content-Type": "application/x-www-form-urlencoded",
                                 "User-Agent": "licence-client/1.0"}, host="site.example")
        assert reply.status == 501, path
        assert orjson.loads(reply.responses[0].body) == {
            "error": "licence_server_not_served_here", "status": 501}
        assert time.monotonic() - started < 5
    # The rest of the site is still gated and forwarded as usual.
    assert (await mitm.send("GET", "/articles/1", BROWSER, host="site.example")).status == 200
    assert upstream.paths() == ["/articles/1"]
