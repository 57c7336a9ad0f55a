"""The baseline: a minimal aiohttp pass-through proxy with no policy at all.

Same server and client settings as Gatekeeper's proxy, so the ratio between the
two is the cost of the gate itself (classification, policy, metrics, logging).
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web
from yarl import URL

SKIP = frozenset({"User-Agent", "Accept-Encoding", "Accept", "Content-Type"})
HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer",
                 "proxy-connection", "host", "content-length"})


def build(upstream: str) -> web.Application:
    base = URL(upstream)
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[session_key] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=30),
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
            read_bufsize=64 * 1024, timeout=aiohttp.ClientTimeout(total=None),
        )
        yield
        await app[session_key].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        url = URL.build(scheme=base.scheme, host=base.host, port=base.port,
                        path=request.raw_path.partition("?")[0],
                        query_string=request.query_string, encoded=True)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        data = request.content if request.body_exists else None
        async with request.app[session_key].request(
            request.method, url, headers=headers, data=data, allow_redirects=False,
            skip_auto_headers=SKIP, auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60),
        ) as up:
            resp = web.StreamResponse(status=up.status, reason=up.reason, headers={
                k: v for k, v in up.headers.items() if k.lower() not in HOP - {"content-length"}
            })
            await resp.prepare(request)
            async for chunk in up.content.iter_chunked(64 * 1024):
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.cleanup_ctx.append(ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def serve(upstream: str, host: str, port: int) -> None:
    runner = web.AppRunner(build(upstream), auto_decompress=False, handler_cancellation=True,
                           access_log=None, keepalive_timeout=15)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True, backlog=1024).start()
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--upstream", required=True)
    p.add_argument("--listen", default="127.0.0.1:8090")
    p.add_argument("--uvloop", action="store_true")
    a = p.parse_args()
    host, _, port = a.listen.rpartition(":")
    if a.uvloop:
        import uvloop

        uvloop.run(serve(a.upstream, host, int(port)))
    else:
        asyncio.run(serve(a.upstream, host, int(port)))


if __name__ == "__main__":
    main()
