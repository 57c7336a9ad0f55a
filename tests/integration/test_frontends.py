"""Every front end answers tests/vectors/frontends.yaml the same way.

Each front end runs the same gate (the same policy and settings) in front of a
recording upstream, and the table is sent through it as raw HTTP/1.1. The test
checks each answer against the table (and the usage records a licensed case adds to
the front end's ledger, in its own state directory, which holds the signing key and
licensee the table's licence token is for), then compares the front end with the
reference, the aiohttp proxy, on the same table: the same status codes, the same
answers for what the gate answered itself, and the same requests at the upstream
(method, target, headers, body).

Front ends (`FRONT_ENDS`): the aiohttp proxy in-process (`start_gatekeeper`),
`mitmdump -s gatekeeper/edge/mitm.py` in reverse mode as a subprocess, and a real nginx
with the shipped deploy/nginx/gatekeeper-forward-auth.conf asking the forward-auth
endpoint (in-process). Another front end is one more `Launch` in `FRONT_ENDS`.

nginx answers a denial from headers and forwards to the origin itself, which changes some
answers by design (docs/forward-auth.md, deploy/nginx/README.md). It is compared with the
reference by `nginx_comparable`, on what must not change: every status, the decision's
headers, the gate's own bodies, and which requests reached the upstream. The cases it
answers otherwise by design have their own expectation in the table (`front_ends`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry

from gatekeeper import wiring
from gatekeeper.edge.forward_auth import forward_auth_app
from gatekeeper.edge.server import Listeners
from gatekeeper.edge.target import canonicalize
from gatekeeper.ledger.file import FileLedger, read
from gatekeeper.licensing.keys import Keyring
from gatekeeper.licensing.licensees import Licensees
from gatekeeper.licensing.tokens import LicenseClaims, issue_token
from gatekeeper.settings import Settings
from tests.integration.conftest import StartGate, Upstream
from tests.integration.test_nginx_forward_auth import (
    SHIPPED,
    find_nginx,
    free_port,
    main_conf,
    render,
    wait_for_port,
)
from tests.integration.test_nginx_forward_auth import (
    stop as stop_nginx,
)
from tests.support.dns_server import DnsTestServer
from tests.support.vector_dns import vector_zone

ROOT = Path(__file__).resolve().parents[2]
TABLE = yaml.safe_load((ROOT / "tests" / "vectors" / "frontends.yaml").read_text())
CASES: list[dict[str, Any]] = TABLE["cases"]
MITM_SCRIPT = ROOT / "gatekeeper" / "edge" / "mitm.py"
TOKEN_PLACEHOLDER = "{licence_token}"
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
    ledger: list[dict[str, Any]] = field(default_factory=list)  # the records it added


# -- the front ends -----------------------------------------------------------------


@pytest.fixture
async def aiohttp_proxy(start_gatekeeper: StartGate) -> AsyncIterator[Launch]:
    """The proxy in-process (`start_gatekeeper`), with its usage ledger open in its state
    directory, as `gatekeeper run` has it; the ledgers are closed at teardown."""
    ledgers: list[FileLedger] = []

    async def launch(setup: Setup) -> int:
        settings = Settings().with_overrides(
            {**setup.settings, "state_dir": str(setup.state_dir)}, "frontends.yaml")
        overrides = {name: getattr(settings, name) for name in
                     (*setup.settings, "state_dir")}
        gk = await start_gatekeeper(setup.upstream.url, setup.policy.read_text(), **overrides)
        ledgers.append(await wiring.open_ledger(gk.components))
        return gk.port

    yield launch
    for ledger in ledgers:
        await ledger.close()


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
    own state directory, each stopped at teardown."""
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
        proc = spawn(args, env, run, log)
        procs.append(proc)
        await wait_listening(port, proc, log)
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


def spawn(args: list[str], env: dict[str, str], cwd: Path,
          log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def fail_with_log(message: str, log: Path) -> None:
    pytest.fail(f"{message}; its output:\n{log.read_text(errors='replace')}", pytrace=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until something listens on `port`; fails with the process's output if it exits
    or does not listen within START_TIMEOUT."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            fail_with_log(f"mitmdump exited with {proc.returncode}", log)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                fail_with_log(f"mitmdump did not listen on {port}", log)
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return


@pytest.fixture
async def nginx(tmp_path: Path) -> AsyncIterator[Launch]:
    """Starts a real nginx with the shipped deploy/nginx/gatekeeper-forward-auth.conf
    (rendered by test_nginx_forward_auth's `render`: only its addresses and cache
    directory replaced) in front of `setup.upstream`, asking Gatekeeper's forward-auth
    endpoint, started in-process with the table's settings and policy. Both are stopped
    at teardown."""
    started: list[tuple[asyncio.subprocess.Process, Listeners, FileLedger]] = []

    async def launch(setup: Setup) -> int:
        executable = find_nginx()
        settings = Settings().with_overrides(
            {**setup.settings, "state_dir": str(setup.state_dir), "upstream": setup.upstream.url,
             "policy": str(setup.policy), "listen": "127.0.0.1:0"}, "frontends.yaml")
        # nginx connects from 127.0.0.1: Gatekeeper must trust it to ask.
        assert any(ipaddress.ip_address("127.0.0.1") in ipaddress.ip_network(cidr)
                   for cidr in settings.trusted_proxies), settings.trusted_proxies
        c = wiring.build(settings, CollectorRegistry())
        ledger = await wiring.open_ledger(c)  # as `gatekeeper run --mode forward-auth`
        listeners = Listeners()
        gk_port = await listeners.start(forward_auth_app(c), "127.0.0.1:0", settings)
        workdir = tmp_path / f"nginx-{len(started)}"
        (workdir / "temp").mkdir(parents=True)
        port = free_port()
        shipped = workdir / "gatekeeper-forward-auth.conf"
        shipped.write_text(render(SHIPPED.read_text(), listen=port, gatekeeper=gk_port,
                                  origin=setup.upstream.port, cache=workdir / "cache"))
        # The table's clients are sent from 127.0.0.1 with X-Forwarded-For, 127.0.0.1
        # being a trusted proxy (`trusted_proxies`). nginx is the edge here, so it is
        # nginx that must trust it, with its realip module: $remote_addr becomes the
        # table's `ip`, which the shipped config sends Gatekeeper and the upstream in
        # X-Forwarded-For. Outside the shipped file, as the deployment's http context.
        site = workdir / "site.conf"
        site.write_text("".join(f"set_real_ip_from {cidr};\n"
                                for cidr in setup.settings["trusted_proxies"])
                        + f"real_ip_header X-Forwarded-For;\ninclude {shipped};\n")
        conf = workdir / "nginx.conf"
        conf.write_text(main_conf(workdir, site))
        proc = await asyncio.create_subprocess_exec(
            executable, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf),
            "-g", "daemon off;",
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append((proc, listeners, ledger))
        await wait_for_port(port, proc, workdir)
        return port

    yield launch
    for proc, listeners, ledger in started:
        await stop_nginx(proc)
        await listeners.stop()
        await ledger.close()


@pytest.fixture
def front_ends(aiohttp_proxy: Launch, mitmdump: Launch, nginx: Launch) -> dict[str, Launch]:
    return {"aiohttp-proxy": aiohttp_proxy, "mitmproxy": mitmdump, "nginx": nginx}


FRONT_ENDS = ("aiohttp-proxy", "mitmproxy", "nginx")
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
    licensing = tmp_path / "licensing"
    cases = with_token(CASES, licensing_state(licensing))
    policy = table_policy(tmp_path / "policy.yaml")

    async def run(name: str) -> dict[str, Exchange]:
        state = tmp_path / f"state-{name}"
        shutil.copytree(licensing, state)  # the same key and licensee for every front end
        setup = Setup(upstream, policy, settings, state)
        listening = await front_ends[name](setup)
        exchanges = await run_table(listening, upstream, cases)
        await read_ledger(state, cases, exchanges, front_end)
        return exchanges

    got = await run(front_end)
    for case in cases:
        check_case(case, got[case["name"]], front_end)
    if front_end == REFERENCE:
        return
    upstream.seen.clear()
    upstream.robots_fetches.clear()
    reference = await run(REFERENCE)
    compare = COMPARABLE.get(front_end, unchanged)
    for case in cases:
        name = case["name"]
        if front_end in case.get("front_ends", {}):
            continue  # answered otherwise by design: checked against its own expectation
        assert compare(got[name], False) == compare(reference[name], True), \
            f"{front_end} and {REFERENCE} differ on {name!r}"


def table_policy(path: Path) -> Path:
    """The table's policy file with the table's `declarations:` added, written to `path`."""
    text = (ROOT / TABLE["policy"]).read_text()
    declarations = yaml.safe_dump({"declarations": TABLE["declarations"]},
                                  default_flow_style=None)
    path.write_text(text.rstrip("\n") + "\n" + declarations)
    return path


def licensing_state(directory: Path) -> str:
    """A state directory's licensing part: a signing key and licensee `acme` (GPTBot,
    ai-train-standard), as `gatekeeper keys generate` and `licensee add` make them; and
    a token for `acme`, as `gatekeeper token issue` would issue it."""
    Keyring.generate(directory / "keys")
    Licensees(directory / "licensees.json").add("acme", "Acme", "GPTBot", ["ai-train-standard"])
    now = time.time()
    host = TABLE["host"]
    return issue_token(LicenseClaims(
        issuer=f"https://{host}", audience=(host,), subject="acme", crawler="GPTBot",
        crawler_key=None, license="ai-train-standard", usages=("ai-train",), paths=(),
        not_before=now - 60, expires=now + 3600, token_id="frontends-token",
    ), Keyring.load(directory / "keys").active_signing_key())


def with_token(cases: list[dict[str, Any]], token: str) -> list[dict[str, Any]]:
    """The table with the licence token in place of `{licence_token}`."""
    return [{**case, "headers": {k: v.replace(TOKEN_PLACEHOLDER, token)
                                 for k, v in case["headers"].items()}}
            if "headers" in case else case for case in cases]


def expectation(case: dict[str, Any], front_end: str) -> dict[str, Any]:
    expect: dict[str, Any] = case.get("front_ends", {}).get(front_end, case["expect"])
    return expect


async def read_ledger(state: Path, cases: list[dict[str, Any]],
                      exchanges: dict[str, Exchange], front_end: str) -> None:
    """Each case's records from the front end's ledger file: the table's expectations
    in order, waited for while the ledger's writer flushes (every 0.5 s)."""
    wanted = [case["name"] for case in cases
              for _ in expectation(case, front_end).get("ledger", [])]
    path = state / "ledger.jsonl"
    deadline = time.monotonic() + 10
    records = []
    while time.monotonic() < deadline:
        records = list(read(path)) if path.exists() else []
        if len(records) >= len(wanted):
            break
        await asyncio.sleep(0.1)
    for name, record in zip(wanted, records, strict=False):
        exchanges[name].ledger.append(dataclasses.asdict(record))
    # Nothing else is licensed in the table: no record may go unaccounted for.
    assert len(records) <= len(wanted), (front_end, records[len(wanted):])


async def run_table(port: int, upstream: Upstream,
                    cases: list[dict[str, Any]]) -> dict[str, Exchange]:
    out: dict[str, Exchange] = {}
    for case in cases:
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


def check_case(case: dict[str, Any], got: Exchange, front_end: str) -> None:
    expect = expectation(case, front_end)
    name = case["name"]
    statuses = expect["status"] if isinstance(expect["status"], list) else [expect["status"]]
    assert [a.status for a in got.answers] == statuses, name
    targets = [s.target for s in got.upstream]
    if front_end == "nginx":
        targets = nginx_forwarded_targets(case, targets)
    assert targets == expect.get("upstream", []), name
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
    for header in expect.get("headers_absent", []):
        assert last.header(header) is None, (name, header)
    sent = dict((k.lower(), v) for k, v in request_headers(case))
    for seen in got.upstream:
        headers = dict(seen.headers)
        for header, value in expect.get("upstream_headers", {}).items():
            if front_end == "nginx" and not nginx_sets(header):
                value = nginx_passes_on(header, sent)
            assert headers.get(header.lower()) == value, (name, header)
        for header in expect.get("upstream_without", []):
            value = None
            if front_end == "nginx" and not nginx_sets(header):
                value = nginx_passes_on(header, sent)
            assert headers.get(header.lower()) == value, (name, header)
        if "upstream_body" in expect:
            assert seen.body_sha256 == hashlib.sha256(
                expect["upstream_body"].encode()).hexdigest(), name
        if front_end == "nginx":
            # What Gatekeeper decided reaches the origin, set by nginx.
            assert {"x-gatekeeper-action", "x-gatekeeper-rule"} <= headers.keys(), name
    records = expect.get("ledger", [])
    assert len(got.ledger) == len(records), name
    for record, fields in zip(got.ledger, records, strict=True):
        assert {k: record[k] for k in fields} == fields, name


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


# -- what nginx changes by design (docs/forward-auth.md, deploy/nginx/README.md) ------

# The headers the shipped config sets (or clears, with "") on the request to the origin:
# the `proxy_set_header` lines of its `location /`. Read from the file, so that a header
# the config comes to set is held to the table's expectation again.
_LOCATION = re.search(r"\n    location / \{\n(.*?)\n    \}\n", SHIPPED.read_text(), re.S)
assert _LOCATION is not None, "the shipped config has no `location /` block"
NGINX_ORIGIN_HEADERS = frozenset(
    name.lower() for name in re.findall(r"^\s*proxy_set_header\s+(\S+)\s", _LOCATION[1], re.M))
# The headers a decision answer is made of, compared on every answer: the ones the
# shipped config relays from Gatekeeper's denial (`@gatekeeper_denied`) or adds to an
# allowed response, and the origin's Content-Type on a forwarded one. The rest differs
# by design: nginx adds X-Gatekeeper-Status (checked against the status instead) and its
# own Server; a policy's own block headers and the proxy's Cache-Control on its 400s are
# not relayed (nginx can only add headers it names); Content-Length follows the body.
DECISION_HEADERS = frozenset({"content-type", "retry-after", "www-authenticate", "link",
                              "content-usage", "tdm-reservation", "tdm-policy"})


def nginx_sets(header: str) -> bool:
    return header.lower() in NGINX_ORIGIN_HEADERS


def nginx_passes_on(header: str, sent: dict[str, str]) -> str | None:
    """What the origin gets, through nginx, for a header the shipped config does not
    set: nothing for a name with "_" (nginx drops those: `ignore_invalid_headers`), else
    the client's own value, as sent. The config sets X-Forwarded-For, X-Forwarded-Proto,
    X-Forwarded-Host, X-Real-IP and Forwarded from what nginx saw, clears
    True-Client-IP, CF-Connecting-IP, X-Original-URL, X-Rewrite-URL and X-Original-URI,
    and sets the seven X-Gatekeeper-* decision headers and Authorization (no licence
    token); `nginx_sets` reads that list from the file and holds those headers to the
    table. What is left to pass on is the client's other headers, among them an
    X-Gatekeeper-* name it invented: nginx cannot drop names by prefix
    (docs/forward-auth.md)."""
    return None if "_" in header else sent.get(header.lower())


def nginx_forwarded_targets(case: dict[str, Any], targets: list[str]) -> list[str]:
    """nginx forwards the target as the client sent it (`proxy_pass` without a URI),
    where the proxy forwards the canonical target Gatekeeper decided on (it asked about
    $request_uri). Each forwarded target must be exactly the client's; what it is
    compared as is its canonical form, Gatekeeper's own reading of it."""
    for target in targets:
        assert target == case["path"], (case["name"], target)
    return [canonical(case.get("method", "GET"), target) for target in targets]


def canonical(method: str, raw: str) -> str:
    target = canonicalize(method, raw)
    return target.path + (f"?{target.query}" if target.query else "")


def nginx_body(body: bytes) -> bytes:
    """A denial body as nginx answers it: it travels in one header line (a trailing
    newline dropped, line breaks and control characters made spaces) and nginx's
    `return` ends it with one newline."""
    return re.sub(rb"[\x00-\x1f\x7f]", b" ", body.removesuffix(b"\n")) + b"\n"


def nginx_comparable(exchange: Exchange, reference: bool) -> tuple[object, ...]:
    """`comparable`, on what nginx must keep: every status; the decision headers of
    every answer; the body of what the gate answered itself (JSON parsed, other bodies
    in nginx's spelling); and of every request the upstream saw, the method, the target
    (canonical, see `nginx_forwarded_targets`), the body's digest and the client the gate
    decided on (X-Forwarded-For: both set it). Other headers at the upstream differ by
    design (`nginx_passes_on`); check_case holds them to the table."""
    answers = []
    for answer in exchange.answers:
        own = not exchange.upstream
        headers = combined((k, v) for k, v in answer.headers
                           if k.lower() in DECISION_HEADERS or k.lower().startswith("crawler-"))
        body: object = None
        if own and not reference:
            # nginx answers the status Gatekeeper put in X-Gatekeeper-Status.
            assert answer.header("X-Gatekeeper-Status") == str(answer.status), answer
        if own and answer.body:
            if (answer.header("Content-Type") or "").startswith("application/json"):
                body = orjson.loads(answer.body)
            else:
                body = nginx_body(answer.body) if reference else answer.body
        answers.append((answer.status, headers, body))
    upstream = tuple(
        (s.method, canonical(s.method, s.target), s.body_sha256,
         dict(s.headers).get("x-forwarded-for")) for s in exchange.upstream)
    return tuple(answers), upstream


def combined(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Header lines as one line per name, values joined by ", " in order: the same
    field however it was split (nginx's `add_header` of a decision's two `Link` values
    sends one line; the proxy, two), RFC 9110 section 5.3."""
    joined: dict[str, list[str]] = {}
    for name, value in headers:
        joined.setdefault(name.lower(), []).append(value)
    return sorted((name, ", ".join(values)) for name, values in joined.items())


def unchanged(exchange: Exchange, reference: bool) -> tuple[object, ...]:
    return comparable(exchange)


# How a front end's exchange and the reference's are made comparable, for front ends that
# differ from the reference by design; `unchanged` (`comparable`) for the others. The
# second argument says which of the two the exchange is.
COMPARABLE: dict[str, Callable[[Exchange, bool], tuple[object, ...]]] = {
    "nginx": nginx_comparable,
}


def request_headers(case: dict[str, Any]) -> list[tuple[str, str]]:
    """The header lines `send` writes for `case`."""
    body = case.get("body", "").encode()
    return [
        ("Host", case.get("host", TABLE["host"])),
        ("User-Agent", case["ua"]),
        *([("X-Forwarded-For", case["ip"])] if "ip" in case else []),
        *case.get("headers", {}).items(),
        *([("Content-Length", str(len(body)))] if body else []),
        ("Connection", "close"),
    ]


async def send(port: int, case: dict[str, Any]) -> Answer:
    """One request as raw bytes (nothing normalises the target), read to the close."""
    body = case.get("body", "").encode()
    lines = [f"{case.get('method', 'GET')} {case['path']} HTTP/1.1",
             *[f"{k}: {v}" for k, v in request_headers(case)]]
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
