"""Listeners, signals and graceful shutdown for the proxy and admin listeners.

The main listener runs aiohttp's low-level server with `Proxy.handle` as its
only handler. There is no router, no middleware and no automatic
`100 Continue` between the wire and the gate: every request target, however
odd, reaches the proxy, and a client that expects 100-continue is invited to
send its body only once the gate has decided to forward it. Requests that
aiohttp's parser refuses get the same JSON answer and `bad_request`
observation as those the proxy refuses, instead of a traceback in the log.

`serve` runs until SIGTERM or SIGINT: the listeners stop accepting, in-flight
requests get up to `shutdown_timeout` to finish, WebSocket tunnels are closed
with 1001, then the upstream session closes. SIGHUP calls `on_reload`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

import aiohttp
from aiohttp import http_exceptions, http_parser, web
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from gatekeeper.edge import responses
from gatekeeper.edge.client_ip import TrustedProxies
from gatekeeper.edge.documents import Documents, Endpoints
from gatekeeper.edge.proxy import SKIP_AUTO_HEADERS, Proxy, Upstream
from gatekeeper.errors import SettingsError
from gatekeeper.gate import Gate
from gatekeeper.observe import logging as gk_logging
from gatekeeper.observe.record import Observer
from gatekeeper.settings import Settings, split_hostport

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ConnectionKey
    from aiohttp.tracing import Trace

T = TypeVar("T")

UPSTREAM_KEEPALIVE: Final = 30.0  # seconds an idle pooled upstream connection is kept
DNS_CACHE_TTL: Final = 60  # seconds
LINGERING_TIME: Final = 2.0  # seconds spent draining a body the gate will not forward

_log = gk_logging.get_logger("gatekeeper.server")


def require_c_parser() -> None:
    """Refuse to run on aiohttp's pure-Python HTTP parser: most of aiohttp's request
    smuggling advisories concerned that parser, and the two disagree on edge cases."""
    c_parser = getattr(http_parser, "HttpRequestParserC", None)
    if c_parser is None or http_parser.HttpRequestParser is not c_parser:
        raise SettingsError(
            "aiohttp's C HTTP parser is not in use (AIOHTTP_NO_EXTENSIONS is set, or aiohttp "
            "was installed without its compiled extensions). Unset AIOHTTP_NO_EXTENSIONS and "
            "reinstall aiohttp from a binary wheel: pip install --force-reinstall aiohttp"
        )


class _UpstreamConnector(aiohttp.TCPConnector):
    """The upstream pool, minus connections the upstream spoke on while idle.

    An HTTP/1.1 server only ever answers a request. Bytes that arrive on a pooled
    connection between requests are an unsolicited response (a desynchronised or
    hostile upstream); aiohttp parses them and hands them to the next request that
    reuses the connection, which may be another client's. aiohttp checks a pooled
    connection only for being open, so the check for such a response is made
    here, and the connection closed instead of reused.
    """

    async def _get(
        self, key: ConnectionKey, traces: list[Trace]
    ) -> aiohttp.connector.Connection | None:
        while True:
            conn = await super()._get(key, traces)
            if conn is None or conn.protocol is None or not conn.protocol.should_close:
                return conn
            conn.close()


def new_session(settings: Settings) -> aiohttp.ClientSession:
    """The one upstream client: a bounded keep-alive pool that adds nothing of its own."""
    connector = _UpstreamConnector(
        limit=settings.upstream_pool_size, limit_per_host=0, use_dns_cache=True,
        ttl_dns_cache=DNS_CACHE_TTL, keepalive_timeout=UPSTREAM_KEEPALIVE,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # One client session serves every visitor: it must never keep one's cookies.
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
        skip_auto_headers=SKIP_AUTO_HEADERS,
        read_bufsize=64 * 1024,
        raise_for_status=False,
        timeout=aiohttp.ClientTimeout(total=None),
    )


def handler_options(settings: Settings) -> dict[str, Any]:
    """aiohttp server settings for an edge listener, not for an origin behind a proxy.

    aiohttp's low-level server silently drops every option when one is unknown
    to its protocol class, so each name is checked against it here."""
    options: dict[str, Any] = {
        "auto_decompress": False,  # a gzip body is forwarded as gzip
        # Also the deadline for a request head: aiohttp closes a connection whose
        # head is still incomplete when it expires.
        "keepalive_timeout": settings.client_header_timeout,
        "max_line_size": settings.max_header_size,
        "max_field_size": settings.max_header_size,
        "max_headers": settings.max_headers,
        "access_log": None,  # the observer writes the one line per request
        # After an early answer (408, 413) aiohttp reads what is left of the body so
        # the client gets the answer and not a reset; its default of 10 s lets a
        # client trickling its body hold the connection on well past the timeout.
        "lingering_time": LINGERING_TIME,
    }
    accepted = inspect.signature(RequestHandler.__init__).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise SettingsError(
            f"this aiohttp ({aiohttp.__version__}) does not accept the server options "
            f"{', '.join(unknown)}; install the aiohttp version in pyproject.toml"
        )
    return options


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """A runner for an ordinary application (the admin listener)."""
    return web.AppRunner(
        app, handler_cancellation=True, shutdown_timeout=settings.shutdown_timeout,
        **handler_options(settings),
    )


# -- the proxy listener ---------------------------------------------------------------


class _GateProtocol(RequestHandler):
    """aiohttp's connection handler, with the gate's answer for unparseable requests
    and a count of request heads cut off at the header timeout."""

    __slots__ = ("_gk_observer", "_gk_partial_head", "_gk_peer")

    def __init__(self, manager: web.Server, *, observer: Observer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gk_observer = observer
        self._gk_peer: str | None = None
        # Bytes of a request head arrived while the connection waited for one, and
        # the head is not complete yet.
        self._gk_partial_head = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._gk_peer = str(peer[0]) if peer else ""

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) == queued:
            # Part of a request head, while the connection waits for one: counted if
            # the header timeout cuts it off (`_process_keepalive`).
            if data and self._waiter is not None:
                self._gk_partial_head = True
            return
        self._gk_partial_head = False
        # A parse error in a body being streamed (a malformed chunk) is queued by
        # aiohttp as if it were the next request, and the body is left waiting for
        # bytes that will never be parsed: the upstream request would hang, half
        # sent, until the body timeout. The error goes to the body instead, so the
        # proxy aborts the upstream request at once, never completed, and answers 400.
        request = self._current_request
        if request is None:
            return
        message = self._messages[-1][0]
        if isinstance(message, _ErrInfo) and not request.content.is_eof():
            request.content.set_exception(message.exc)
            request.content.feed_eof()  # and nothing is left to drain after the answer

    def _process_keepalive(self) -> None:
        # aiohttp's keep-alive timer is also the deadline for a request head (see
        # handler_options); it closes a slowloris connection silently. A connection
        # closed with part of a head received is counted and logged as a refused
        # request (status 0: nothing is answered); an idle keep-alive one is not.
        partial = self._gk_partial_head and not self._force_close
        super()._process_keepalive()
        if partial and self._force_close:
            self._gk_partial_head = False
            self._gk_observer.bad_request("header_timeout", self._gk_peer or "", "-", 0)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # 400 with a parser exception is the request head failing to parse; any
        # other error (and one after bytes were sent) stays aiohttp's to handle.
        if (
            status != 400
            or not isinstance(exc, http_exceptions.HttpProcessingError)
            or request.writer.output_size
        ):
            return super().handle_error(request, status, exc, message)
        reason, code = _parse_error(exc)
        peer = request.remote or "0.0.0.0"
        self._gk_observer.bad_request(reason, peer, "-", code)
        return responses.to_response(responses.error_answer(code, reason), close=True)


def _parse_error(exc: http_exceptions.HttpProcessingError) -> tuple[str, int]:
    """A bounded reason code and status for a request head aiohttp refused."""
    if isinstance(exc, http_exceptions.LineTooLong):
        # The parser names only the start of the line: a request target is the
        # line that starts like one.
        line = exc.args[0] if exc.args else b""
        if isinstance(line, bytes | bytearray) and (
            line[:1] in (b"/", b"*") or b"://" in line[:16]
        ):
            return "target_too_long", 414
        return "header_too_large", 431
    if isinstance(exc, http_exceptions.BadHttpMethod):
        return "bad_method", 400
    if isinstance(exc, http_exceptions.BadStatusLine):
        return "bad_request_line", 400
    if isinstance(exc, http_exceptions.InvalidHeader):
        return "bad_header", 400
    if isinstance(exc, http_exceptions.InvalidURLError):
        return "bad_target", 400
    # The first line says what is wrong; the rest quotes the offending input.
    text = str(exc.message).partition("\n")[0].lower()
    if "too many headers" in text:
        return "too_many_headers", 431
    if "transfer-encoding" in text or "content-length" in text:
        return "ambiguous_framing", 400
    if "header" in text:
        return "bad_header", 400
    return "malformed", 400


class ProxyServer(web.Server):
    """aiohttp's low-level server around `Proxy.handle`, with `_GateProtocol`."""

    def __init__(self, proxy: Proxy, observer: Observer, options: dict[str, Any]) -> None:
        super().__init__(proxy.handle, handler_cancellation=True, **options)
        self._gk_options = options
        self._gk_observer = observer
        self._gk_loop = asyncio.get_running_loop()

    def __call__(self) -> RequestHandler:
        return _GateProtocol(
            self, observer=self._gk_observer, loop=self._gk_loop, **self._gk_options
        )


class _ProxyRunner(web.ServerRunner):
    def __init__(
        self, server: ProxyServer, on_shutdown: Callable[[], Awaitable[None]], timeout: float
    ) -> None:
        super().__init__(server, shutdown_timeout=timeout)
        self._on_shutdown = on_shutdown

    async def shutdown(self) -> None:
        # Called once the listener is closed and idle connections are gone,
        # before in-flight requests are waited for.
        await self._on_shutdown()


class ProxyService:
    """The main listener's parts: the upstream session, the `Proxy` and its server.

    Built outside the event loop, started by `Listeners.start` (which calls
    `setup` and, when the listener stops, `close`).
    """

    def __init__(
        self,
        gate: Gate,
        observer: Observer,
        settings: Settings,
        upstream: Upstream,
        trusted: TrustedProxies,
        *,
        on_session: Callable[[aiohttp.ClientSession], Awaitable[None] | None] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        documents: Documents | None = None,
        endpoints: Endpoints | None = None,
    ) -> None:
        self._gate = gate
        self._observer = observer
        self._settings = settings
        self._upstream = upstream
        self._trusted = trusted
        self._session: aiohttp.ClientSession | None = None
        # Parts that reach the upstream too (its robots.txt) share the pool: they are
        # given the session once it exists, and `on_close` runs before it closes.
        self._on_session = on_session
        self._on_close = on_close
        self._documents = documents
        self._endpoints = endpoints
        self.proxy: Proxy | None = None

    async def setup(self) -> web.BaseRunner:
        settings = self._settings
        options = handler_options(settings)
        self._session = new_session(settings)
        if self._on_session is not None:
            pending = self._on_session(self._session)
            if pending is not None:
                await pending
        proxy = Proxy(self._gate, self._observer, settings, self._upstream, self._trusted,
                      self._session, self._documents, self._endpoints)
        self.proxy = proxy
        runner = _ProxyRunner(ProxyServer(proxy, self._observer, options), proxy.shutdown,
                              settings.shutdown_timeout)
        await runner.setup()
        return runner

    async def close(self) -> None:
        if self._on_close is not None:
            await self._on_close()
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass
class Listeners:
    """Started listeners, stopped in the order they were started."""

    runners: list[web.BaseRunner] = field(default_factory=list)
    addresses: list[tuple[str, int]] = field(default_factory=list)
    _closers: list[Callable[[], Awaitable[None]] | None] = field(default_factory=list)

    async def start(
        self, target: web.Application | ProxyService, listen: str, settings: Settings,
        *, shared: bool = False,
    ) -> int:
        """Listen on `listen` (HOST:PORT; port 0 picks one) and return the bound port.

        `shared`: other processes listen on the same port (SO_REUSEPORT), as the workers
        of one `gatekeeper run --workers N` do on the main listener."""
        host, port = split_hostport(listen)
        if isinstance(target, ProxyService):
            runner, closer = await target.setup(), target.close
        else:
            runner, closer = make_runner(target, settings), None
            await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024,
                           reuse_port=shared or None)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if closer is not None:
                await closer()
            raise SettingsError(f"cannot listen on {listen}: {exc.strerror}") from exc
        self.runners.append(runner)
        self._closers.append(closer)
        bound = _bound_port(runner) or port
        self.addresses.append((host, bound))
        return bound

    async def stop(self) -> None:
        # The proxy goes first (stop accepting, drain), then admin, so /healthz
        # answers for as long as requests are in flight.
        for runner, closer in zip(self.runners, self._closers, strict=True):
            await runner.cleanup()
            if closer is not None:
                await closer()
        self.runners.clear()
        self._closers.clear()


def _bound_port(runner: web.BaseRunner) -> int | None:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    return None


# -- running until told to stop -----------------------------------------------------------


async def serve_until_signalled(
    start: Callable[[Listeners], Awaitable[None] | object],
    on_reload: Callable[[], object],
    ready: Callable[[Listeners], object] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Start listeners with `start`, then run until SIGTERM or SIGINT (or `stop` is
    set); SIGHUP calls `on_reload`. Then drain and stop the listeners."""
    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    listeners = Listeners()
    try:
        result = start(listeners)
        if inspect.isawaitable(result):
            await result
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, on_reload)
        if ready is not None:
            ready(listeners)
        await stop.wait()
    finally:
        # A second signal while draining gets the default action: a hard stop.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await listeners.stop()


async def serve(
    proxy: ProxyService | web.Application,
    settings: Settings,
    *,
    admin: web.Application | None = None,
    on_reload: Callable[[], object] | None = None,
    on_started: Callable[[Listeners], object] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """The proxy (or the forward-auth application) on `settings.listen` and, if
    given, `admin` on `settings.admin_listen`, until a signal (or `stop`); see the
    module docstring."""
    require_c_parser()

    async def start(listeners: Listeners) -> None:
        # Workers of one `gatekeeper run --workers N` share the main listener's port,
        # whatever serves it; each has an admin listener of its own.
        await listeners.start(proxy, settings.listen, settings, shared=settings.reuse_port)
        if admin is not None:
            await listeners.start(admin, settings.admin_listen, settings)

    await serve_until_signalled(start, on_reload or _no_reload, on_started, stop)


def _no_reload() -> None:
    _log.info("reload_ignored", reason="nothing to reload")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on uvloop when it is installed (the `speed` extra),
    on asyncio's own loop otherwise, and log which."""
    try:
        import uvloop
    except ImportError:
        _log.info("event_loop", loop="asyncio")
        return asyncio.run(main)
    _log.info("event_loop", loop="uvloop")
    result: T = uvloop.run(main)
    return result
