"""Real parts on real sockets: a recording upstream and Gatekeeper's proxy app,
both aiohttp servers on 127.0.0.1 with ports chosen by the kernel."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gatekeeper import wiring
from gatekeeper.edge.server import Listeners, ProxyService
from gatekeeper.gate import Gate
from gatekeeper.observe import logging as gk_logging
from gatekeeper.observe.record import Observation, Observer
from gatekeeper.settings import Settings

MiB = 1024 * 1024
CHUNK = 64 * 1024


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body_sha256: str
    body_len: int


@dataclass
class Upstream:
    url: str
    port: int
    seen: list[Seen] = field(default_factory=list)
    # Gatekeeper's own fetches of /robots.txt (robots.txt compliance), kept apart so
    # `seen` holds exactly what clients' requests made the gate forward.
    robots_fetches: list[Seen] = field(default_factory=list)
    robots_txt: str = "User-agent: *\nDisallow: /private/\n"
    connections: set[tuple[str, int]] = field(default_factory=set)
    # Lock-step streaming: bytes the upstream has received of the request body
    # being streamed, and bytes the test client has received of the response.
    body_received: int = 0
    client_received: int = 0

    def paths(self) -> list[str]:
        return [s.raw_path for s in self.seen]


def _upstream_app(state: Upstream) -> web.Application:
    async def record(request: web.Request) -> Seen:
        digest = hashlib.sha256()
        n = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            n += len(chunk)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            state.connections.add((peer[0], peer[1]))
        seen = Seen(request.method, request.raw_path, list(request.headers.items()),
                    digest.hexdigest(), n)
        state.seen.append(seen)
        return seen

    async def echo(request: web.Request) -> web.Response:
        if request.headers.get("User-Agent") == "Gatekeeper-robots-check":
            state.robots_fetches.append(Seen(request.method, request.raw_path,
                                             list(request.headers.items()), "", 0))
            return web.Response(text=state.robots_txt)
        seen = await record(request)
        return web.json_response(dataclasses.asdict(seen))

    async def big(request: web.Request) -> web.StreamResponse:
        await record(request)
        size = int(request.query.get("mib", "50")) * MiB
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        block = bytes(range(256)) * 256  # 64 KiB, not compressible by accident
        sent = 0
        while sent < size:
            await resp.write(block)
            sent += len(block)
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await record(request)
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.Response(text="late")

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound("/elsewhere")

    async def set_cookie(request: web.Request) -> web.Response:
        await record(request)
        resp = web.Response(text="cookie set")
        resp.set_cookie("session", "client-a-secret")
        resp.headers.add("Set-Cookie", "second=2")
        return resp

    async def gzipped(request: web.Request) -> web.Response:
        await record(request)
        import gzip

        return web.Response(body=gzip.compress(b"hello " * 1000),
                            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    async def reset_mid_body(request: web.Request) -> web.StreamResponse:
        await record(request)
        resp = web.StreamResponse()
        resp.content_length = 10 * MiB
        await resp.prepare(request)
        await resp.write(b"x" * 65536)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def ws(request: web.Request) -> web.WebSocketResponse:
        await record(request)
        sock = web.WebSocketResponse(protocols=("chat",))
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == web.WSMsgType.TEXT and msg.data.startswith("close:"):
                await sock.close(code=int(msg.data[6:]), message=b"asked to")
            elif msg.type == web.WSMsgType.TEXT:
                await sock.send_str("echo:" + msg.data)
            elif msg.type == web.WSMsgType.BINARY:
                await sock.send_bytes(msg.data[::-1])
        return sock

    async def lockstep_up(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            state.body_received += len(chunk)
        return web.json_response({"body_sha256": digest.hexdigest()})

    async def lockstep_down(request: web.Request) -> web.StreamResponse:
        await record(request)
        resp = web.StreamResponse()  # no Content-Length: relayed chunked
        await resp.prepare(request)
        block = b"d" * CHUNK
        for i in range(int(request.query.get("n", "8"))):
            await resp.write(block)
            # The next block is written only once the client holds this one: a
            # proxy that collected the response before relaying it would stall.
            await wait_until(lambda i=i: state.client_received >= (i + 1) * CHUNK)
        await resp.write_eof()
        return resp

    async def chunked(request: web.Request) -> web.StreamResponse:
        await record(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for part in (b"one ", b"two ", b"three"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def status(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=int(request.match_info["code"]))

    app = web.Application(client_max_size=200 * MiB)
    app.router.add_route("*", "/lockstep-up", lockstep_up)
    app.router.add_get("/lockstep-down", lockstep_down)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/status/{code}", status)
    app.router.add_route("*", "/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/set-cookie", set_cookie)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/reset", reset_mid_body)
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream("", 0)
    # Handlers stop when the proxy hangs up on them, so a slow one (the /slow
    # route after a 504) does not hold the teardown.
    runner = web.AppRunner(_upstream_app(state), auto_decompress=False, access_log=None,
                           handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url, state.port = f"http://127.0.0.1:{port}", port
    yield state
    await runner.cleanup()


class CountingObserver:
    """The real recorder, plus a list of what the proxy reported to it."""

    def __init__(self, inner: Observer) -> None:
        self.inner = inner
        self.observed: list[Observation] = []
        self.refused: list[tuple[str, int]] = []

    def observe(self, obs: Observation) -> None:
        self.observed.append(obs)
        self.inner.observe(obs)

    def bad_request(self, reason: str, client_ip: str, method: str, status: int) -> None:
        self.refused.append((reason, status))
        self.inner.bad_request(reason, client_ip, method, status)


@dataclass
class Gatekeeper:
    url: str
    port: int
    components: wiring.Components
    observer: CountingObserver
    service: ProxyService


StartGate = Callable[..., Awaitable[Gatekeeper]]


@pytest.fixture
async def start_gatekeeper(tmp_path: Path) -> AsyncIterator[StartGate]:
    """Start Gatekeeper's proxy listener in-process on a kernel-chosen port, with
    the real catalog, policy, gate and recorder (`gate=` swaps the gate)."""
    listeners: list[Listeners] = []
    # Not cached: a logger first used here must follow a later test's configuration.
    gk_logging.configure("json", "warning", cache_loggers=False)

    async def start(
        upstream_url: str, policy: str | None = None, *, gate: Gate | None = None,
        **overrides: Any,
    ) -> Gatekeeper:
        policy_file = ""
        if policy is not None:
            path = tmp_path / f"policy-{len(listeners)}.yaml"
            path.write_text(policy)
            policy_file = str(path)
        settings = dataclasses.replace(
            Settings(), upstream=upstream_url, listen="127.0.0.1:0", policy=policy_file,
            **overrides,
        )
        c = wiring.build(settings, CollectorRegistry())
        observer = CountingObserver(c.recorder)
        service = wiring.proxy_app(c, gate, observer)
        lst = Listeners()
        port = await lst.start(service, "127.0.0.1:0", settings)
        listeners.append(lst)
        return Gatekeeper(f"http://127.0.0.1:{port}", port, c, observer, service)

    yield start
    for lst in listeners:
        await lst.stop()


@dataclass
class RawUpstream:
    """A scripted upstream on a plain socket, for responses no HTTP server would send."""

    url: str
    port: int
    requests: list[bytes] = field(default_factory=list)  # each request head received
    connections: int = 0


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, RawUpstream], Awaitable[None]]
StartRaw = Callable[[Script], Awaitable[RawUpstream]]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[StartRaw]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> RawUpstream:
        state = RawUpstream("", 0)

        async def on_connection(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
            state.connections += 1
            try:
                await script(reader, writer, state)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
        servers.append(server)
        state.port = server.sockets[0].getsockname()[1]
        state.url = f"http://127.0.0.1:{state.port}"
        return state

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader, state: RawUpstream) -> bytes:
    """One request head (a GET: no body follows), recorded in `state.requests`."""
    head = await reader.readuntil(b"\r\n\r\n")
    state.requests.append(head)
    return head


async def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    # Polled: the conditions span a server, a proxy and a client, none of which
    # has an event to wait on.
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def raw_request(port: int, data: bytes, timeout: float = 5.0,
                      source: str = "127.0.0.1") -> bytes:
    """Send bytes as they are (no client normalises anything) and read until close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(data)
    await writer.drain()
    chunks = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except TimeoutError:
        pass
    writer.close()
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


def statuses_of(responses: bytes) -> list[int]:
    """The status codes of several responses read from one connection."""
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", responses)]


BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
GPTBOT = ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; "
          "+https://openai.com/gptbot)")
# What a browser sends besides its user agent: without them behaviour scoring rightly
# takes a client sending bare page requests for an undeclared bot.
BROWSER_HEADERS = {
    "User-Agent": BROWSER,
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en-GB,en;q=0.5",
}
ASSISTANT = "Mozilla/5.0 (compatible; ChatGPT-User/1.0; +https://openai.com/bot)"
AHREFS = "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)"
