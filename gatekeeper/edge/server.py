"""Listeners, signals and graceful shutdown for the proxy and admin apps."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import http_parser, web

from gatekeeper.errors import SettingsError
from gatekeeper.settings import Settings, split_hostport

SESSION_KEY = web.AppKey("upstream_session", aiohttp.ClientSession)


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


def new_session(settings: Settings) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=settings.upstream_pool_size, limit_per_host=0, use_dns_cache=True,
        ttl_dns_cache=60, keepalive_timeout=30,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # One client session serves every visitor: it must never keep one's cookies.
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
        read_bufsize=64 * 1024,
        timeout=aiohttp.ClientTimeout(total=None),
    )


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    return web.AppRunner(
        app,
        auto_decompress=False,
        handler_cancellation=True,
        keepalive_timeout=settings.client_header_timeout,
        max_line_size=settings.max_header_size,
        max_field_size=settings.max_header_size,
        max_headers=settings.max_headers,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout,
    )


@dataclass
class Listeners:
    runners: list[web.AppRunner] = field(default_factory=list)
    addresses: list[tuple[str, int]] = field(default_factory=list)

    async def start(self, app: web.Application, listen: str, settings: Settings) -> int:
        host, port = split_hostport(listen)
        runner = make_runner(app, settings)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise SettingsError(f"cannot listen on {listen}: {exc.strerror}") from exc
        self.runners.append(runner)
        bound = _bound_port(runner) or port
        self.addresses.append((host, bound))
        return bound

    async def stop(self) -> None:
        # The proxy goes first (stop accepting, drain), then admin, so /healthz answers
        # for as long as requests are in flight.
        for runner in self.runners:
            await runner.cleanup()
        self.runners.clear()


def _bound_port(runner: web.AppRunner) -> int | None:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    return None


async def serve_until_signalled(
    start: Callable[[Listeners], asyncio.Future[None] | object],
    on_reload: Callable[[], None],
    ready: Callable[[Listeners], None] | None = None,
) -> None:
    """Start listeners with `start`, then wait for SIGTERM/SIGINT (drain and stop) while
    SIGHUP calls `on_reload`."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    listeners = Listeners()
    result = start(listeners)
    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
        await result
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    if ready is not None:
        ready(listeners)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await listeners.stop()
