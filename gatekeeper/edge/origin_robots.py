"""The origin's own robots.txt, fetched through the upstream and cached per host.

The gate judges crawler requests against the rules the site publishes, so it
reads `GET /robots.txt` from the upstream with the request's `Host`, exactly as
a crawler would see it through the gate. Outcomes follow RFC 9309 §2.3.1:

- 2xx: the body is parsed (at most `max_bytes` are read; the parser reads
  500 KiB of those).
- 3xx: up to five redirects are followed (the RFC asks for at least five),
  but only to the upstream itself or to the same public host, which is fetched
  through the upstream again. A redirect anywhere else, a sixth redirect, or a
  3xx without `Location` counts as "unavailable".
- 4xx ("unavailable"): no rules, everything allowed.
- 5xx, a refused connection or a timeout ("unreachable"): everything is
  disallowed. The exception: if an earlier fetch succeeded less than 24 hours
  ago, that copy stays in use. RFC 9309 §2.4 lets a crawler keep a cached copy
  while the file is unreachable, so a crawler acting on it is not in breach.

A success or a 4xx is cached for `ttl`, an unreachable result for
`error_ttl`. A stale entry is still served, for up to 24 hours after its
fetch: the caller gets it at once while one background fetch per host renews
it (stale-while-revalidate). Concurrent callers for a host never start a
second fetch. At most `max_hosts` hosts are kept, least recently used first
out.

The session belongs to the caller, and `close()` leaves it open.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import aiohttp
from yarl import URL

from gatekeeper.core.robots import RobotsRules
from gatekeeper.errors import GatekeeperError
from gatekeeper.observe import logging as gk_logging

ROBOTS_PATH: Final = "/robots.txt"
MAX_REDIRECTS: Final = 5
# RFC 9309 §2.4: a cached copy should not be used for more than 24 hours.
MAX_STALE: Final = 24 * 3600.0
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_CHUNK: Final = 64 * 1024

_log = gk_logging.get_logger("gatekeeper.robots")


class RobotsFetchError(GatekeeperError):
    """A robots.txt fetch failed. The cache keeps it internal and reports it with
    `last_error(host)`; callers never see it."""


class _Unavailable(RobotsFetchError):
    """RFC 9309 "unavailable": 4xx, or a redirect that cannot be followed."""


class _Unreachable(RobotsFetchError):
    """RFC 9309 "unreachable": 5xx, connection failure or timeout."""


@dataclass(frozen=True, slots=True)
class _Entry:
    rules: RobotsRules
    fetched_at: float
    fresh_until: float
    usable_until: float  # served stale, while a refresh runs, until then
    # The last successful copy and when it was fetched, kept through outages.
    good: RobotsRules | None
    good_at: float


class OriginRobots:
    """robots.txt per host, read through the upstream; see the module docstring."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream: str,
        *,
        ttl: float = 3600.0,
        error_ttl: float = 60.0,
        timeout: float = 5.0,
        max_bytes: int = 512 * 1024,
        max_hosts: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        base = URL(upstream)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"upstream {upstream!r} must be an http:// or https:// URL")
        self._session = session
        self._upstream = base
        self._base_path = base.raw_path.rstrip("/")
        self._ttl = ttl
        self._error_ttl = error_ttl
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._max_hosts = max_hosts
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._errors: dict[str, str] = {}
        self._inflight: dict[str, asyncio.Task[RobotsRules]] = {}
        self._closed = False
        self._fetches = 0
        self._failures = 0

    @property
    def fetches(self) -> int:
        """Fetches completed, whatever their outcome."""
        return self._fetches

    @property
    def failures(self) -> int:
        """Fetches that found robots.txt unreachable (5xx, connection error, timeout)."""
        return self._failures

    async def rules(self, host: str) -> RobotsRules:
        """The rules for `host`: cached, stale while a refresh runs, or fetched now."""
        host = host.lower()
        entry = self._entries.get(host)
        if entry is not None:
            self._entries.move_to_end(host)
            now = self._clock()
            if now < entry.fresh_until:
                return entry.rules
            if now < entry.usable_until:
                self.refresh_soon(host)
                return entry.rules
        if self._closed:
            raise RobotsFetchError("OriginRobots is closed")
        # Shielded: a caller that gives up must not cancel the fetch others wait on.
        return await asyncio.shield(self._start(host))

    def peek(self, host: str) -> RobotsRules | None:
        """The cached rules for `host`, fresh or stale, without any I/O; None if none."""
        entry = self._entries.get(host.lower())
        return entry.rules if entry is not None else None

    def refresh_soon(self, host: str) -> None:
        """Start a background fetch for `host` unless its entry is fresh or one is running.

        Must be called from the event loop's thread, inside a running loop.
        """
        host = host.lower()
        if self._closed or host in self._inflight:
            return
        entry = self._entries.get(host)
        if entry is not None and self._clock() < entry.fresh_until:
            return
        self._start(host)

    def fetched_at(self, host: str) -> float | None:
        """When (on `clock`) the last fetch for `host` completed, or None."""
        entry = self._entries.get(host.lower())
        return entry.fetched_at if entry is not None else None

    def last_error(self, host: str) -> str | None:
        """Why the last fetch for `host` did not yield a file, or None after a success."""
        return self._errors.get(host.lower())

    async def close(self) -> None:
        """Cancel running fetches; the session stays open."""
        self._closed = True
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, host: str) -> asyncio.Task[RobotsRules]:
        task = self._inflight.get(host)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._refresh(host))
            self._inflight[host] = task
            task.add_done_callback(lambda done: self._forget(host, done))
        return task

    def _forget(self, host: str, done: asyncio.Task[RobotsRules]) -> None:
        if self._inflight.get(host) is done:
            del self._inflight[host]
        # Expected failures become rules in `_refresh`; anything else is a bug, and a
        # background refresh has nobody else to tell.
        if not done.cancelled() and (exc := done.exception()) is not None:
            _log.error("robots_fetch_crashed", host=host, error=repr(exc))

    async def _refresh(self, host: str) -> RobotsRules:
        previous = self._entries.get(host)
        good = previous.good if previous is not None else None
        good_at = previous.good_at if previous is not None else float("-inf")
        try:
            async with asyncio.timeout(self._timeout):
                body = await self._fetch(host)
        except _Unavailable as exc:
            # A definitive answer: it is what a crawler keeps through a later outage.
            rules, fresh_for = RobotsRules.allow_all(), self._ttl
            good, good_at, kept_since = rules, self._clock(), None
            self._errors[host] = str(exc)
        except (_Unreachable, aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._failures += 1
            self._errors[host] = str(exc) or type(exc).__name__
            fresh_for = self._error_ttl
            if good is not None and self._clock() < good_at + MAX_STALE:
                rules, kept_since = good, good_at
            else:
                rules, kept_since = RobotsRules.disallow_all(), None
            _log.warning("robots_txt_unreachable", host=host, error=self._errors[host],
                         kept_previous_copy=kept_since is not None)
        else:
            rules, fresh_for = RobotsRules.parse(body), self._ttl
            good, good_at, kept_since = rules, self._clock(), None
            self._errors.pop(host, None)
        finally:
            self._fetches += 1
        now = self._clock()
        # A copy kept through an outage ages from its own fetch, not from this one.
        usable_until = (now if kept_since is None else kept_since) + MAX_STALE
        self._store(host, _Entry(rules, now, now + fresh_for, usable_until, good, good_at))
        return rules

    def _store(self, host: str, entry: _Entry) -> None:
        self._entries[host] = entry
        self._entries.move_to_end(host)
        while len(self._entries) > self._max_hosts:
            evicted, _ = self._entries.popitem(last=False)
            self._errors.pop(evicted, None)

    async def _fetch(self, host: str) -> bytes:
        url = self._url(ROBOTS_PATH, "")
        request_host = host
        for _ in range(MAX_REDIRECTS + 1):
            headers = {
                "Host": request_host,
                "User-Agent": "Gatekeeper-robots-check",
                # Read the bytes the parser expects, whatever the session decompresses.
                "Accept-Encoding": "identity",
            }
            async with self._session.get(
                url, headers=headers, allow_redirects=False, auto_decompress=False,
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    return await self._read(response)
                if status in _REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise _Unavailable(f"{status} without Location")
                    url, request_host = self._follow(url, request_host, location)
                    continue
                if 400 <= status < 500:
                    raise _Unavailable(f"status {status}")
                if status >= 500:
                    raise _Unreachable(f"status {status}")
                raise _Unavailable(f"unexpected status {status}")
        raise _Unavailable(f"more than {MAX_REDIRECTS} redirects")

    def _follow(self, current: URL, host: str, location: str) -> tuple[URL, str]:
        """Where a redirect leads, as (upstream URL, Host header); only the upstream
        itself and the same public host are followed."""
        try:
            target = current.join(URL(location))
        except ValueError as exc:
            raise _Unavailable(f"bad redirect {location!r}") from exc
        same_upstream = (target.host, target.port) == (self._upstream.host, self._upstream.port)
        if same_upstream and target.scheme in ("http", "https"):
            return target, host
        if target.host is not None and target.host.lower() == host:
            return self._url(target.raw_path or "/", target.raw_query_string), host
        raise _Unavailable(f"redirect leaves the site: {location!r}")

    def _url(self, path: str, query: str) -> URL:
        return URL.build(
            # As it goes into a URL: IPv6 in brackets, IDNA encoded.
            scheme=self._upstream.scheme,
            host=self._upstream.host_subcomponent or self._upstream.host or "",
            port=self._upstream.explicit_port, path=self._base_path + path,
            query_string=query, encoded=True,
        )

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_CHUNK):
            chunks.append(chunk)
            size += len(chunk)
            if size >= self._max_bytes:
                # The rest is never parsed: drop the connection rather than drain it.
                response.close()
                break
        return b"".join(chunks)[: self._max_bytes]
