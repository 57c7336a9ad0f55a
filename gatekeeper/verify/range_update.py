"""Fetching fresh copies of the published range lists, once or on an interval.

`update_lists` refreshes the cache directory that `RangeRegistry.load` prefers
over the packaged snapshots; `gatekeeper crawlers update` calls it once, and a
running proxy runs it on an interval through `RangeRefresher`.

A fetch only ever replaces a cached copy with a better one: the new body must
parse as the source's format and hold at least one prefix before it is written,
and it is written with a rename so a reader sees the old file or the new one,
never a torn one. Anything else leaves the last good copy in place and is
reported in the result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from ssl import SSLContext
from typing import Final, Literal

import aiohttp

from gatekeeper.errors import GatekeeperError
from gatekeeper.files import write_atomically
from gatekeeper.observe.logging import get_logger
from gatekeeper.verify.ranges import (
    CacheMeta,
    RangeListError,
    RangeRegistry,
    SourceInfo,
    cache_paths,
    load_sources,
    parse_range_list,
    read_meta,
)

# The largest published list (Google's user-triggered fetchers) is under 60 KiB;
# anything near this bound is not a range list, and reading it all would let a
# misbehaving server fill memory.
MAX_BYTES: Final = 5 * 1024 * 1024
_CHUNK: Final = 64 * 1024
# The proxy may run as another user than `gatekeeper crawlers update`; the lists
# are public facts, so the cached copies are world-readable.
_FILE_MODE: Final = 0o644

Status = Literal["updated", "unchanged", "failed"]

_log = get_logger("gatekeeper.ranges")


class RangeFetchError(GatekeeperError):
    """A range list could not be fetched (HTTP status, size, timeout, connection)."""


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """What happened to one source in one update run."""

    source_id: str
    status: Status
    prefixes: int = 0  # prefixes in the list now in the cache; 0 when failed
    error: str | None = None


async def update_lists(
    registry_sources: Mapping[str, SourceInfo],
    cache_dir: Path,
    session: aiohttp.ClientSession,
    *,
    only: Iterable[str] | None = None,
    # Per list, not for the run: one slow publisher must not cost the others.
    timeout: float = 20.0,  # noqa: ASYNC109
    ssl: SSLContext | None = None,
) -> list[UpdateResult]:
    """Refresh the cached copy of each source (or of those in `only`), concurrently.

    Results come in the order of `registry_sources`. An id in `only` that is not
    a known source raises `RangeListError` before anything is fetched: a typo on
    the command line should not look like a successful run. `ssl` overrides the
    session's TLS settings per request (tests pass a context trusting their CA).
    """
    selected = _select(registry_sources, only)
    try:
        await asyncio.to_thread(cache_dir.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        raise RangeListError(f"{cache_dir}: cannot create the range cache directory: "
                             f"{exc.strerror}") from None
    return list(await asyncio.gather(
        *(_update_one(info, cache_dir, session, timeout, ssl) for info in selected)
    ))


def _select(sources: Mapping[str, SourceInfo], only: Iterable[str] | None) -> list[SourceInfo]:
    if only is None:
        return list(sources.values())
    wanted = set(only)
    unknown = sorted(wanted - set(sources))
    if unknown:
        raise RangeListError(f"unknown range list {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(sources))}")
    return [info for sid, info in sources.items() if sid in wanted]


async def _update_one(
    info: SourceInfo,
    cache_dir: Path,
    session: aiohttp.ClientSession,
    budget: float,
    ssl: SSLContext | None,
) -> UpdateResult:
    body_path, meta_path = cache_paths(cache_dir, info.id)
    try:
        meta, cached_count = await asyncio.to_thread(_current, info, body_path, meta_path)
        fetched = await _fetch(info, session, meta, budget, ssl)
        if fetched is None:  # 304: the cached copy is still the published one
            assert meta is not None  # no validators were sent without it
            touched = CacheMeta(info.url, meta.etag, meta.last_modified, time.time())
            await asyncio.to_thread(_write_atomic, meta_path, touched.to_json().encode())
            return UpdateResult(info.id, "unchanged", cached_count)
        return await asyncio.to_thread(_accept, info, body_path, meta_path, fetched)
    except (RangeFetchError, RangeListError) as exc:
        return UpdateResult(info.id, "failed", error=str(exc))
    except OSError as exc:  # writing the cache
        return UpdateResult(info.id, "failed",
                            error=f"{cache_dir}: cannot write {info.id}: {exc.strerror}")


def _current(info: SourceInfo, body_path: Path, meta_path: Path) -> tuple[CacheMeta | None, int]:
    """The validators worth sending, and the prefix count of the cached copy.

    Validators are only sent for a cached copy that is present and valid and
    was fetched from the URL configured now: a 304 for anything else would
    confirm a copy we do not have.
    """
    meta = read_meta(meta_path)
    if meta is None or meta.url != info.url:
        return None, 0
    try:
        parsed = parse_range_list(body_path.read_bytes(), info.format, str(body_path))
    except (OSError, RangeListError):
        return None, 0
    return meta, len(parsed.networks)


@dataclass(frozen=True, slots=True)
class _Fetched:
    body: bytes
    etag: str | None
    last_modified: str | None


async def _fetch(
    info: SourceInfo,
    session: aiohttp.ClientSession,
    meta: CacheMeta | None,
    budget: float,
    ssl: SSLContext | None,
) -> _Fetched | None:
    """The new body, or None for "not modified"; raises `RangeFetchError`."""
    headers: dict[str, str] = {}
    if meta is not None and meta.etag:
        headers["If-None-Match"] = meta.etag
    if meta is not None and meta.last_modified:
        headers["If-Modified-Since"] = meta.last_modified
    try:
        # One budget for connecting, the headers and the whole body.
        async with asyncio.timeout(budget), session.get(
            info.url, headers=headers, ssl=ssl if ssl is not None else True
        ) as resp:
            # A redirect to plain http would undo the https-only rule for
            # sources.json: anyone on that path could rewrite the list.
            if resp.url.scheme != "https":
                raise RangeFetchError(f"{info.url}: redirected to {resp.url}, which is not "
                                      "https")
            if resp.status == 304 and meta is not None:
                return None
            if resp.status != 200:
                raise RangeFetchError(f"{info.url}: HTTP {resp.status} {resp.reason or ''}"
                                      .rstrip())
            body = await _read_limited(resp, info.url)
            return _Fetched(body, resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
    except TimeoutError:
        raise RangeFetchError(f"{info.url}: no complete answer within {budget:g} s") from None
    except aiohttp.ClientError as exc:
        raise RangeFetchError(f"{info.url}: {type(exc).__name__}: {exc}") from None


async def _read_limited(resp: aiohttp.ClientResponse, url: str) -> bytes:
    too_big = f"{url}: the response is larger than {MAX_BYTES // (1024 * 1024)} MiB"
    if resp.content_length is not None and resp.content_length > MAX_BYTES:
        raise RangeFetchError(too_big)
    body = bytearray()
    # Counted as it arrives (after any decompression), so neither a missing
    # Content-Length nor a compressed body can get past the bound.
    async for chunk in resp.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > MAX_BYTES:
            raise RangeFetchError(too_big)
    return bytes(body)


def _accept(info: SourceInfo, body_path: Path, meta_path: Path, fetched: _Fetched) -> UpdateResult:
    """Validate a fetched body and make it the cached copy."""
    parsed = parse_range_list(fetched.body, info.format, info.url)
    try:
        same = body_path.read_bytes() == fetched.body
    except OSError:
        same = False
    # The body goes first: if we stop between the two writes, the old meta's
    # validators only cost one full fetch next time, never a wrong 304.
    if not same:
        _write_atomic(body_path, fetched.body)
    meta = CacheMeta(info.url, fetched.etag, fetched.last_modified, time.time())
    _write_atomic(meta_path, meta.to_json().encode())
    return UpdateResult(info.id, "unchanged" if same else "updated", len(parsed.networks))


def _write_atomic(path: Path, data: bytes) -> None:
    write_atomically(path, data, _FILE_MODE)


class RangeRefresher:
    """Keeps a running proxy's range lists fresh.

    Every `interval` seconds (the first time after `initial_delay`) it updates
    the cache directory, loads a new `RangeRegistry` from it and hands both to
    `on_reload`. A failing cycle is logged and the next one runs as planned;
    the proxy keeps the registry it has. `session_factory` is called once per
    cycle and the session it returns is closed after the cycle.
    """

    def __init__(
        self,
        sources_file: Path | None,
        cache_dir: Path,
        interval: float,
        session_factory: Callable[[], aiohttp.ClientSession],
        on_reload: Callable[[RangeRegistry, list[UpdateResult]], None],
        *,
        initial_delay: float = 5.0,
        timeout: float = 20.0,
        ssl: SSLContext | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self._sources_file = sources_file
        self._cache_dir = cache_dir
        self._interval = interval
        self._initial_delay = max(0.0, initial_delay)
        self._session_factory = session_factory
        self._on_reload = on_reload
        self._timeout = timeout
        self._ssl = ssl
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start refreshing in the background; must be called inside the event loop."""
        if self.running:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="gatekeeper-range-refresher"
        )

    async def stop(self) -> None:
        """Stop refreshing, abandoning a cycle in progress; the cache stays consistent."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # wait() rather than awaiting the task, so a cancellation of stop()
        # itself is not mistaken for the task's and swallowed.
        await asyncio.wait({task})

    async def refresh(self) -> RangeRegistry:
        """Run one cycle now: update, reload, call `on_reload`; returns the new registry."""
        sources = await asyncio.to_thread(load_sources, self._sources_file)
        async with self._session_factory() as session:
            results = await update_lists(sources, self._cache_dir, session,
                                         timeout=self._timeout, ssl=self._ssl)
        _log_results(results)
        registry = await asyncio.to_thread(RangeRegistry.load, self._sources_file,
                                           self._cache_dir)
        self._on_reload(registry, results)
        return registry

    async def _run(self) -> None:
        delay = self._initial_delay
        while True:
            await asyncio.sleep(delay)
            delay = self._interval
            # Whatever goes wrong, the proxy keeps its current lists and the
            # next cycle tries again.
            try:
                await self.refresh()
            except GatekeeperError as exc:  # e.g. a sources file edited into a broken state
                _log.error("range_refresh_failed", error=str(exc),
                           next_in_seconds=self._interval)
            except Exception:
                _log.exception("range_refresh_failed", next_in_seconds=self._interval)


def _log_results(results: list[UpdateResult]) -> None:
    for result in results:
        if result.status == "updated":
            _log.info("range_list_updated", list=result.source_id, prefixes=result.prefixes)
        elif result.status == "failed":
            _log.warning("range_list_update_failed", list=result.source_id,
                         error=result.error, kept="last good copy")
