"""Every front end answers tests/vectors/frontends.yaml the same way.

Each front end runs the same gate (the same policy and settings) in front of a
recording upstream, and the table is sent through it as raw HTTP/1.1. The test
checks each answer against the table, then compares the front end with the
reference, the aiohttp proxy, on the same table: the same status codes, the same
answers for what the gate answered itself, and the same requests at the upstream
(method, target, headers, body).

Front ends (`FRONT_ENDS`): the aiohttp proxy in-process (`start_gatekeeper`), and
`mitmdump -s gatekeeper/edge/mitm.py` in reverse mode as a subprocess. Another
front end (forward-auth behind nginx, say) is one more `Launch` in `FRONT_ENDS`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gatekeeper.settings import Settings
from tests.integration.conftest import StartGate, Upstream
from tests.support.dns_server import DnsTestServer
from tests.support.vector_dns import vector_zone

ROOT = Path(__file__).resolve().parents[2]
TABLE = yaml.safe_load((ROOT / "tests" / "vectors" / "frontends.yaml").read_text())
CASES: list[dict[str, Any]] = TABLE["cases"]
MITM_SCRIPT = ROOT / "gatekeeper" / "edge" / "mitm.py"
# Headers the HTTP stacks set on their own; they say nothing about the gate.
STACK_HEADERS = frozenset({"date", "server", "connection", "keep-alive"})
START_TIMEOUT = 60.0


@dataclass
class Setup:
    """What every front end is started with."""

    upstream: Upstream
    policy: Path
    settings: dict[str, Any]  # the table's settings, the DNS server's address and a cache dir
    state_dir: Path


# Starts a front end in front of `setup.upstream`; returns the port it listens on.
Launch = Callable[[Setup], Awaitable[int]]


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass
class Seen:
    """A request as the upstream received it, comparable across front ends."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body_sha256: str


@dataclass
class Exchange:
    answers: list[Answer] = field(default_factory=list)
    upstream: list[Seen] = field(default_factory=list)
    upstream_bodies: list[bytes] = field(default_factory=list)


# -- the front ends -----------------------------------------------------------------


def aiohttp_proxy(start_gatekeeper: StartGate) -> Launch:
    async def launch(setup: Setup) -> int:
        settings = Settings().with_overrides(
            {**setup.settings, "state_dir": str(setup.state_dir)}, "frontends.yaml")
        overrides = {name: getattr(settings, name) for name in
                     (*setup.settings, "state_dir")}
        gk = await start_gatekeeper(setup.upstream.url, setup.policy.read_text(), **overrides)
        return gk.port

    return launch


def mitmdump_executable() -> str:
    """mitmdump next to this interpreter (the project's venv), in .venv-mitmproxy
    (scripts/setup-mitmproxy.sh: mitmproxy needs Python 3.12+), or on PATH;
    GATEKEEPER_MITMDUMP names another one."""
    named = os.environ.get("GATEKEEPER_MITMDUMP")
    if named:
        return named
    found = shutil.which("mitmdump", path=str(Path(sys.executable).parent)) or \
        shutil.which("mitmdump", path=str(ROOT / ".venv-mitmproxy" / "bin")) or \
        shutil.which("mitmdump")
    if found is None:
        pytest.fail(
            "mitmdump is not installed: the mitmproxy front end cannot be tested. "
            "scripts/test.sh runs scripts/setup-mitmproxy.sh, which builds .venv-mitmproxy "
            "with the mitmproxy extra from a Python 3.12 or newer (mitmproxy>=12 needs it; "
            f"this is {sys.version.split()[0]}); it found none. Or name in "
            "GATEKEEPER_MITMDUMP an mitmdump whose Python can import gatekeeper.",
            pytrace=False)
    return found


@pytest.fixture
def mitmdump(tmp_path: Path) -> Iterator[Launch]:
    """Starts `mitmdump -s gatekeeper/edge/mitm.py --mode reverse:<upstream>`; each in its
    own state directory, each killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    async def launch(setup: Setup) -> int:
        executable = mitmdump_executable()
        run = tmp_path / f"mitmdump-{len(procs)}"
        run.mkdir()
        settings = dict(setup.settings)
        trusted = settings.pop("trusted_proxies", [])
        config = run / "settings.yaml"
        config.write_text(yaml.safe_dump(settings))
        port = _free_port()
        args = [
            executable, "-s", str(MITM_SCRIPT),
            "--mode", f"reverse:{setup.upstream.url}",
            "--listen-host", "127.0.0.1", "--listen-port", str(port),
            "--set", f"confdir={run / 'mitmproxy'}",
            "--set", f"gatekeeper_policy={setup.policy}",
            "--set", f"gatekeeper_config={config}",
            *[arg for cidr in trusted for arg in ("--set", f"gatekeeper_trusted_proxies={cidr}")],
        ]
        env = {**os.environ, "GATEKEEPER_STATE_DIR": str(setup.state_dir),
               "GATEKEEPER_LOG_LEVEL": "warning"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
        log = run / "output.log"
        proc = _spawn(args, env, run, log)
        procs.append(proc)
        await _wait_listening(port, proc, log)
        return port

    yield launch
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _spawn(args: list[str], env: dict[str, str], cwd: Path,
           log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def _fail(message: str, log: Path) -> None:
    pytest.fail(f"{message}; its output:\n{log.read_text(errors='replace')}", pytrace=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            _fail(f"mitmdump exited with {proc.returncode}", log)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                _fail(f"mitmdump did not listen on {port}", log)
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return


@pytest.fixture
def front_ends(start_gatekeeper: StartGate, mitmdump: Launch) -> dict[str, Launch]:
    return {"aiohttp-proxy": aiohttp_proxy(start_gatekeeper), "mitmproxy": mitmdump}


FRONT_ENDS = ("aiohttp-proxy", "mitmproxy")
REFERENCE = "aiohttp-proxy"


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsTestServer]:
    with DnsTestServer(vector_zone()) as server:
        yield server


# -- the test -----------------------------------------------------------------------


@pytest.mark.parametrize("front_end", FRONT_ENDS)
async def test_front_end_answers_the_table(
    front_end: str, front_ends: dict[str, Launch], upstream: Upstream, dns: DnsTestServer,
    tmp_path: Path,
) -> None:
    host, port = dns.address
    settings = {**TABLE["settings"], "dns_servers": [f"{host}:{port}"],
                "ranges_cache_dir": str(tmp_path / "ranges-cache")}

    async def run(name: str) -> dict[str, Exchange]:
        setup = Setup(upstream, ROOT / TABLE["policy"], settings, tmp_path / f"state-{name}")
        listening = await front_ends[name](setup)
        return await run_table(listening, upstream)

    got = await run(front_end)
    for case in CASES:
        check_case(case, got[case["name"]])
    if front_end == REFERENCE:
        return
    upstream.seen.clear()
    upstream.robots_fetches.clear()
    reference = await run(REFERENCE)
    for case in CASES:
        name = case["name"]
        assert comparable(got[name]) == comparable(reference[name]), \
            f"{front_end} and {REFERENCE} differ on {name!r}"


async def run_table(port: int, upstream: Upstream) -> dict[str, Exchange]:
    out: dict[str, Exchange] = {}
    for case in CASES:
        exchange = Exchange()
        before = len(upstream.seen)
        for _ in range(case.get("repeat", 1)):
            exchange.answers.append(await send(port, case))
        for seen in upstream.seen[before:]:
            exchange.upstream.append(Seen(
                seen.method, seen.raw_path,
                sorted((k.lower(), v) for k, v in seen.headers), seen.body_sha256))
        out[case["name"]] = exchange
    return out


def check_case(case: dict[str, Any], got: Exchange) -> None:
    expect = case["expect"]
    name = case["name"]
    statuses = expect["status"] if isinstance(expect["status"], list) else [expect["status"]]
    assert [a.status for a in got.answers] == statuses, name
    assert [s.target for s in got.upstream] == expect.get("upstream", []), name
    last = got.answers[-1]
    if "json" in expect:
        body = orjson.loads(last.body)
        assert {k: body.get(k) for k in expect["json"]} == expect["json"], name
    if "body_contains" in expect:
        assert expect["body_contains"].encode() in last.body, name
    for header, value in expect.get("headers", {}).items():
        assert last.header(header) is not None, (name, header)
        if value is not None:
            assert last.header(header) == value, (name, header)
    for seen in got.upstream:
        headers = dict(seen.headers)
        for header, value in expect.get("upstream_headers", {}).items():
            assert headers.get(header.lower()) == value, (name, header)
        for header in expect.get("upstream_without", []):
            assert header.lower() not in headers, (name, header)
        if "upstream_body" in expect:
            assert seen.body_sha256 == hashlib.sha256(
                expect["upstream_body"].encode()).hexdigest(), name


def comparable(exchange: Exchange) -> tuple[object, ...]:
    """What must not differ between front ends: every status; the headers and body of
    what the gate answered itself (a forwarded answer is the upstream's echo of what it
    saw, compared as `upstream`); every request the upstream saw."""
    answers = []
    for answer in exchange.answers:
        own = not exchange.upstream
        headers = sorted((k.lower(), v) for k, v in answer.headers
                         if k.lower() not in STACK_HEADERS)
        answers.append((answer.status, headers if own else None, answer.body if own else None))
    return tuple(answers), tuple(dataclasses.astuple(s) for s in exchange.upstream)


async def send(port: int, case: dict[str, Any]) -> Answer:
    """One request as raw bytes (nothing normalises the target), read to the close."""
    body = case.get("body", "").encode()
    lines = [
        f"{case.get('method', 'GET')} {case['path']} HTTP/1.1",
        f"Host: {case.get('host', TABLE['host'])}",
        f"User-Agent: {case['ua']}",
        *([f"X-Forwarded-For: {case['ip']}"] if "ip" in case else []),
        *[f"{k}: {v}" for k, v in case.get("headers", {}).items()],
        *([f"Content-Length: {len(body)}"] if body else []),
        "Connection: close",
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        async with asyncio.timeout(15):
            raw = await reader.read()
    finally:
        writer.close()
    return parse(raw)


def parse(raw: bytes) -> Answer:
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip(), v.strip()) for k, _, v in (h.partition(":") for h in header_lines)]
    answer = Answer(int(status_line.split(" ", 2)[1]), headers, rest)
    if (answer.header("Transfer-Encoding") or "").lower() == "chunked":
        answer.body = dechunk(rest)
    return answer


def dechunk(data: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += data[:size]
        data = data[size + 2:]
