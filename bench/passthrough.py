"""The baseline: a minimal aiohttp reverse proxy with no policy at all.

It forwards every request to the upstream and streams the answer back, with the
same aiohttp server and client settings as Gatekeeper: C parser, no automatic
decompression, no access log, handler cancellation, one `ClientSession` over a
100-connection keep-alive pool, a dummy cookie jar, no client-added headers, no
redirect following, bodies streamed both ways in 64 KiB chunks. What it does not
do is everything Gatekeeper adds: target canonicalisation, classification, policy,
forwarding headers, metrics and the request log. The ratio between the two is
therefore the cost of the gate; this is the "Python floor" for any aiohttp proxy.

`--server lowlevel` (the default) runs on aiohttp's low-level `web.Server`, as
Gatekeeper's proxy listener does; `--server app` runs a `web.Application` with one
catch-all route under an `AppRunner`, which adds aiohttp's router and middleware
machinery to every request.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

CHUNK: Final = 64 * 1024
# As Gatekeeper: the client must not add headers the visitor did not send.
SKIP_AUTO_HEADERS: Final = ("User-Agent", "Accept-Encoding", "Accept", "Content-Type")
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones the client recomputes.
_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authenticate", "proxy-authorization",
})
_REQUEST_DROP: Final = _HOP | {"host", "content-length"}
_SERVER_OPTIONS: Final[dict[str, Any]] = {
    "auto_decompress": False,
    "access_log": None,
    "keepalive_timeout": 15.0,
}

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def new_session(pool_size: int = 100) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=pool_size, limit_per_host=0, use_dns_cache=True, ttl_dns_cache=60,
        keepalive_timeout=30.0,
    )
    return aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
        trust_env=False, skip_auto_headers=SKIP_AUTO_HEADERS, read_bufsize=CHUNK,
        raise_for_status=False, timeout=aiohttp.ClientTimeout(total=None),
    )


def make_handler(upstream: str, session: aiohttp.ClientSession) -> Handler:
    base = URL(upstream)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=60.0)

    async def body(request: web.BaseRequest) -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_chunked(CHUNK):
            yield chunk

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        path, _, query = request.raw_path.partition("?")
        url = URL.build(scheme=base.scheme, host=base.host or "127.0.0.1", port=base.port,
                        path=path, query_string=query, encoded=True)
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _REQUEST_DROP
        )
        data = body(request) if request.body_exists else None
        async with session.request(request.method, url, headers=headers, data=data,
                                   allow_redirects=False, timeout=timeout) as upstream_resp:
            resp = web.StreamResponse(
                status=upstream_resp.status, reason=upstream_resp.reason,
                headers=CIMultiDict(
                    (k, v) for k, v in upstream_resp.headers.items() if k.lower() not in _HOP
                ),
            )
            try:
                await resp.prepare(request)
                async for chunk in upstream_resp.content.iter_chunked(CHUNK):
                    await resp.write(chunk)
                await resp.write_eof()
            except ConnectionResetError:
                pass  # the client left mid-response (wrk does when its time is up)
            return resp

    return handle


async def serve(upstream: str, host: str, port: int, server: str,
                stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (forever without one)."""
    session = new_session()
    handle = make_handler(upstream, session)
    runner: web.BaseRunner
    if server == "app":
        app = web.Application()

        async def route(request: web.Request) -> web.StreamResponse:
            return await handle(request)

        app.router.add_route("*", "/{tail:.*}", route)
        runner = web.AppRunner(app, handler_cancellation=True, **_SERVER_OPTIONS)
    else:
        runner = web.ServerRunner(
            web.Server(handle, handler_cancellation=True, **_SERVER_OPTIONS)
        )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True, backlog=1024).start()
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()
        await session.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8000")
    p.add_argument("--listen", default="127.0.0.1:8090", help="HOST:PORT")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio")
    p.add_argument("--server", choices=("lowlevel", "app"), default="lowlevel")
    a = p.parse_args()
    host, _, port = a.listen.rpartition(":")
    main_coro = serve(a.upstream, host or "127.0.0.1", int(port), a.server)
    try:
        if a.uvloop:
            import uvloop

            uvloop.run(main_coro)
        else:
            asyncio.run(main_coro)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
