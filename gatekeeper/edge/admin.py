"""The admin listener: /metrics, /healthz, /readyz. Loopback by default."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Readiness = Callable[[], Awaitable[dict[str, bool]]]


def build_admin_app(registry: CollectorRegistry, ready: Readiness) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        checks = await ready()
        ok = all(checks.values())
        body = json.dumps({"ready": ok, "checks": checks}, sort_keys=True) + "\n"
        return web.Response(status=200 if ok else 503, text=body,
                            content_type="application/json")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class UpstreamProbe:
    """Is the upstream accepting connections? A TCP connect, cached for a second so a
    busy health checker cannot turn into load on the origin."""

    def __init__(self, host: str, port: int, timeout: float = 1.0, ttl: float = 1.0) -> None:
        self._host, self._port, self._timeout, self._ttl = host, port, timeout, ttl
        self._checked = 0.0
        self._ok = False

    async def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._checked < self._ttl:
            return self._ok
        self._ok = await upstream_reachable(self._host, self._port, self._timeout)
        self._checked = time.monotonic()
        return self._ok


async def upstream_reachable(host: str, port: int, within: float) -> bool:
    try:
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
