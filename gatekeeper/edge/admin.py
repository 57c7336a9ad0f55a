"""The admin listener: /metrics, /healthz, /readyz. Loopback by default.

Kept apart from the main listener so that proxied traffic can never reach it,
and so that a scrape or a probe never competes with the policy for a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gatekeeper.licensing.owners_registry import OwnerRegistry, OwnersError

# What the readiness callback returns: (ready, details). `details` names each check
# with its result and is sent as the body. A plain mapping of check name to bool is
# accepted too, and is ready when every check is true.
ReadyResult = tuple[bool, Mapping[str, object]] | Mapping[str, bool]
Readiness = Callable[[], Awaitable[ReadyResult]]

_NO_STORE = {"Cache-Control": "no-store"}


def build_admin_app(
    registry: CollectorRegistry, ready: Readiness, flush: Callable[[], None] | None = None,
    *, owners: OwnerRegistry | None = None,
    status: Callable[[], Mapping[str, object]] | None = None,
) -> web.Application:
    """The admin application: metrics from `registry`, readiness from `ready`.

    `flush` runs on the event loop before each scrape renders: it moves the request
    counts kept in plain numbers on the hot path into the registry."""

    async def metrics(request: web.Request) -> web.Response:
        if flush is not None:
            flush()
        # Rendering a few thousand samples takes milliseconds; in a thread the event
        # loop keeps serving proxied requests meanwhile (prometheus_client's values
        # are locked, so reading them from another thread is safe).
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, **_NO_STORE})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n", headers=_NO_STORE)

    async def readyz(request: web.Request) -> web.Response:
        ok, details = await _run_readiness(ready)
        body = {"ready": ok, "checks": dict(details)}
        if not ok:
            body["failed"] = sorted(name for name, value in details.items() if value is False)
        return web.Response(
            status=200 if ok else 503, text=json.dumps(body, sort_keys=True) + "\n",
            content_type="application/json", headers=_NO_STORE,
        )

    app = web.Application(client_max_size=64 * 1024)
    if owners is not None:
        _owner_routes(app, owners)
    if status is not None:
        status_routes(app, status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def status_routes(
    app: web.Application,
    status: Callable[[], Mapping[str, object] | Awaitable[Mapping[str, object]]],
) -> None:
    """GET /status: the "who is crawling me" page; GET /status.json: what it shows
    (docs/status-page.md). The page is one static file with a little plain JavaScript
    that polls the JSON; nothing is built. `status` may be a coroutine function: the
    supervisor of `--workers N` asks its workers for theirs."""
    page = resources.files("gatekeeper.data").joinpath("status.html").read_bytes()

    async def html(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8",
                            headers={**_NO_STORE, "Content-Security-Policy": _PAGE_CSP})

    async def data(request: web.Request) -> web.Response:
        doc = status()
        if inspect.isawaitable(doc):
            doc = await doc
        return web.json_response(doc, headers=_NO_STORE)

    app.router.add_get("/status", html)
    app.router.add_get("/status.json", data)


# The page's own inline style and script, and fetches to this listener: nothing else.
_PAGE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
             "connect-src 'self'; img-src 'self' data:")


def _owner_routes(app: web.Application, owners: OwnerRegistry) -> None:
    """GET /owners; PUT and DELETE /owners/{name}: content owners, changed at run time
    (the next request sees them, no policy reload). JSON in and out; a bad entry is a
    400 naming each problem, and nothing is written."""

    async def listing(request: web.Request) -> web.Response:
        return web.json_response({"owners": owners.entries()}, headers=_NO_STORE)

    async def put(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            owner = owners.put(request.match_info["name"], body)
        except (ValueError, OwnersError) as exc:
            return web.json_response({"error": "invalid_owner", "message": str(exc)},
                                     status=400, headers=_NO_STORE)
        return web.json_response({"name": owner.name, "stance": owner.stance.value,
                                  "share": str(owner.share),
                                  "paths": [p.text for p in owner.paths]},
                                 headers=_NO_STORE)

    async def delete(request: web.Request) -> web.Response:
        found = owners.delete(request.match_info["name"])
        return web.json_response({"deleted": found}, status=200 if found else 404,
                                 headers=_NO_STORE)

    app.router.add_get("/owners", listing)
    app.router.add_put("/owners/{name}", put)
    app.router.add_delete("/owners/{name}", delete)


async def _run_readiness(ready: Readiness) -> tuple[bool, Mapping[str, object]]:
    try:
        result = await ready()
    except Exception as exc:  # a broken check means "not ready", never a 500
        return False, {"error": type(exc).__name__}
    if isinstance(result, tuple):
        return bool(result[0]), result[1]
    return all(result.values()), result


class UpstreamProbe:
    """Is the upstream accepting connections? A TCP connect, cached for `ttl`
    seconds, so that a busy health checker cannot turn into load on the origin.

    Concurrent callers share one connection attempt.
    """

    def __init__(self, host: str, port: int, timeout: float = 1.0, ttl: float = 1.0) -> None:
        self._host, self._port, self._timeout, self._ttl = host, port, timeout, ttl
        self._checked = float("-inf")
        self._ok = False
        self._lock = asyncio.Lock()

    async def __call__(self) -> bool:
        if time.monotonic() - self._checked < self._ttl:
            return self._ok
        async with self._lock:
            # Another caller may have probed while this one waited for the lock.
            if time.monotonic() - self._checked >= self._ttl:
                self._ok = await upstream_reachable(self._host, self._port, self._timeout)
                self._checked = time.monotonic()
            return self._ok


async def upstream_reachable(host: str, port: int, timeout: float) -> bool:  # noqa: ASYNC109
    """True when a TCP connection to host:port opens within `timeout` seconds.

    The budget is a parameter, not the caller's `asyncio.timeout`, because a
    probe without one can hang a readiness check for the kernel's SYN timeout.
    """
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
