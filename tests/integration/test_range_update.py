"""Updating range lists from a real HTTPS server on loopback, and the background refresher.

The server speaks TLS with a certificate from a throwaway CA (trustme) that
only the test's client session trusts, answers conditional requests the way
the publishers' CDNs do, and records what it was asked.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from gatekeeper.errors import GatekeeperError
from gatekeeper.verify.range_update import (
    MAX_BYTES,
    RangeRefresher,
    UpdateResult,
    update_lists,
)
from gatekeeper.verify.ranges import (
    RangeListError,
    RangeRegistry,
    SourceInfo,
    cache_paths,
    load_sources,
    read_meta,
)

LAST_MODIFIED = "Wed, 14 Jan 2026 15:45:48 GMT"


def prefixes_body(*prefixes: str, created: str = "2026-11-20T08:00:00.000000") -> bytes:
    items = [{"ipv6Prefix" if ":" in p else "ipv4Prefix": p} for p in prefixes]
    return json.dumps({"creationTime": created, "prefixes": items}, indent=2).encode()


@dataclass
class Published:
    """What the test server serves at one path."""

    body: bytes
    etag: str
    status: int = 200
    delay: float = 0.0
    chunked: bool = False
    location: str | None = None  # answer with a redirect there instead


@dataclass
class Asked:
    path: str
    if_none_match: str | None
    if_modified_since: str | None
    answered: int


@dataclass
class ListServer:
    base: str = ""
    files: dict[str, Published] = field(default_factory=dict)
    asked: list[Asked] = field(default_factory=list)

    def publish(self, name: str, body: bytes, etag: str, *, delay: float = 0.0) -> None:
        self.files[name] = Published(body, etag, delay=delay)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


def _app(state: ListServer) -> web.Application:
    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        inm = request.headers.get("If-None-Match")
        ims = request.headers.get("If-Modified-Since")
        published = state.files.get(name)
        if published is None:
            status = 404
        elif published.location is not None:
            status = 302
        elif published.status != 200:
            status = published.status
        elif inm is not None and inm == published.etag:
            status = 304
        else:
            status = 200
        state.asked.append(Asked(name, inm, ims, status))
        if published is not None and published.delay:
            await asyncio.sleep(published.delay)
        if status == 302 and published is not None:
            raise web.HTTPFound(str(published.location))
        if status != 200 or published is None:
            return web.Response(status=status)
        headers = {"ETag": published.etag, "Last-Modified": LAST_MODIFIED,
                   "Content-Type": "application/json"}
        if not published.chunked:
            return web.Response(body=published.body, headers=headers)
        resp = web.StreamResponse(headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for start in range(0, len(published.body), 256 * 1024):
            await resp.write(published.body[start:start + 256 * 1024])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/{name}", serve)
    return app


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
async def server(ca: trustme.CA) -> AsyncIterator[ListServer]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    state = ListServer()
    runner = web.AppRunner(_app(state), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    state.base = f"https://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


@pytest.fixture
async def plain_server() -> AsyncIterator[ListServer]:
    """The same server without TLS, as a redirect target that must be refused."""
    state = ListServer()
    runner = web.AppRunner(_app(state), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


@pytest.fixture
async def session(client_ssl: ssl.SSLContext) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as s:
        yield s


def write_sources(path: Path, server: ListServer, *names: str) -> dict[str, SourceInfo]:
    """A sources.json whose lists live on the test server; returns it as loaded."""
    doc = {
        "version": 1,
        "sources": {
            name: {"operator": "Example", "url": server.url(f"{name}.json"),
                   "format": "prefixes", "snapshot": None}
            for name in names
        },
    }
    path.write_text(json.dumps(doc), encoding="utf-8")
    return load_sources(path)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def sources_file(tmp_path: Path) -> Path:
    return tmp_path / "sources.json"


def listing(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir())


def only(results: list[UpdateResult]) -> UpdateResult:
    assert len(results) == 1
    return results[0]


async def test_first_fetch_writes_the_list_and_its_validators(
    server: ListServer, session: aiohttp.ClientSession, sources_file: Path, cache_dir: Path
) -> None:
    server.publish("example-bot.json", prefixes_body("192.0.2.0/24", "2001:db8::/48"), '"v1"')
    sources = write_sources(sources_file, server, "example-bot")

    result = only(await update_lists(sources, cache_dir, session))

    assert result == UpdateResult("example-bot", "updated", 2)
    body_path, meta_path = cache_paths(cache_dir, "example-bot")
    assert body_path.read_bytes() == server.files["example-bot.json"].body
    meta = read_meta(meta_path)
    assert meta is not None
    assert (meta.etag, meta.last_modified) == ('"v1"', LAST_MODIFIED)
    assert meta.fetched_at == pytest.approx(time.time(), abs=30)
    assert server.asked[0].if_none_match is None
    # No temporary files left behind.
    assert listing(cache_dir) == ["example-bot.json", "example-bot.meta.json"]
    registry = RangeRegistry.load(sources_file, cache_dir)
    assert registry.match(["example-bot"], "2001:db8::99") == "example-bot"
    assert registry.info("example-bot").origin == "cache"


async def test_second_fetch_sends_validators_and_a_304_reports_unchanged(
    server: ListServer, session: aiohttp.ClientSession, sources_file: Path, cache_dir: Path
) -> None:
    server.publish("example-bot.json", prefixes_body("192.0.2.0/24"), '"v1"')
    sources = write_sources(sources_file, server, "example-bot")
    await update_lists(sources, cache_dir, session)
    _, meta_path = cache_paths(cache_dir, "example-bot")
    first = read_meta(meta_path)
    assert first is not None

    result = only(await update_lists(sources, cache_dir, session))

    assert result == UpdateResult("example-bot", "unchanged", 1)
    second = server.asked[1]
    assert (second.if_none_match, second.if_modified_since, second.answered) == (
        '"v1"', LAST_MODIFIED, 304)
    touched = read_meta(meta_path)
    assert touched is not None
    assert touched.etag == '"v1"'
    assert touched.fetched_at >= first.fetched_at


async def test_new_version_on_the_server_replaces_the_cached_copy(
    server: ListServer, session: aiohttp.ClientSession, sources_file: Path, cache_dir: Path
) -> None:
    server.publish("example-bot.json", prefixes_body("192.0.2.0/24"), '"v1"')
    sources = write_sources(sources_file, server, "example-bot")
    await update_lists(sources, cache_dir, session)
    server.publish("example-bot.json", prefixes_body("198.51.100.0/24", "203.0.113.0/24"),
                   '"v2"')

    result = only(await update_lists(sources, cache_dir, session))

    assert result == UpdateResult("example-bot", "updated", 2)
    registry = RangeRegistry.load(sources_file, cache_dir)
    assert registry.match(["example-bot"], "203.0.113.9") == "example-bot"
    assert registry.match(["example-bot"], "192.0.2.9") is None


async def test_identical_body_without_validators_reports_unchanged(
    server: ListServer, session: aiohttp.ClientSession, sources_file: Path, cache_dir: Path
) -> None:
    body = prefixes_body("192.0.2.0/24")
    server.publish("example-bot.json", body, '"v1"')
    sources = write_sources(sources_file, server, "example-bot")
    await update_lists(sources, cache_dir, session)
    server.publish("example-bot.json", body, '"v1-regenerated"')  # same bytes, new tag

    result = only(await update_lists(sources, cache_dir, session))

    assert result == UpdateResult("example-bot", "unchanged", 1)
    meta = read_meta(cache_paths(cache_dir, "example-bot")[1])
    assert meta is not None
    assert meta.etag == '"v1-regenerated"'


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (Published(b"", '"v2"', status=500), "HTTP 500"),
        (Published(b"", '"v2"', status=404), "HTTP 404"),
        (Published(b'{"prefixes": [', '"v2"'), "not valid JSON"),
        (Published(prefixes_body(), '"v2"'), "the list has no prefixes"),
        (Published(b'{"prefixes": [{"ipv4Prefix": "1.2.3.0/99"}]}', '"v2"'),
         r"prefixes[0]: ipv4Prefix"),
        (Published(b"[" + b" " * MAX_BYTES + b"]", '"v2"'), "larger than 5 MiB"),
        (Published(b"[" + b" " * MAX_BYTES + b"]", '"v2"', chunked=True), "larger than 5 MiB"),
    ],
    ids=["500", "404", "invalid-json", "empty-prefixes", "bad-prefix", "too-large",
         "too-large-chunked"],
)
async def test_bad_answer_keeps_the_previous_copy_and_reports_failed(
    server: ListServer, session: aiohttp.ClientSession, sources_file: Path, cache_dir: Path,
    bad: Published, error: str,
) -> None:
    server.publish("example-bot.json", prefixes_body("192.0.2.0/24"), '"v1"')
    sources = write_sources(sources_file, server, "example-bot")
    await update_lists(sources, cache_dir, session)
    body_path, meta_path = cache_paths(cache_dir, "example-bot")
    good_body, good_meta = body_path.read_bytes(), meta_path.read_bytes()
    server.files["example-bot.json"] = bad

    result = only(await update_lists(sources, cache_dir, session))

    assert result.status == "failed"
    assert result.prefixes == 0
    assert result.error is not None
    assert error in result.error
    assert server.url("example-bot.json") in result.error
    assert body_path.read_bytes() == good_body
    assert meta_path.read_bytes() == good_meta
    assert listing(cache_dir) == ["example-bot.json", "example-bot.meta.json"]
    registry = RangeRegistry.load(sources_file, cache_dir)
    assert registry.match(["example-bot"], "192.0.2.1") == "example-bot"


async def test_slow_server_fails_after_the_timeout_and_others_still_update(
    server: ListServer, session: aiohttp.ClientSession, sources_file: Path, cache_dir: Path
) -> None:
    server.publish("slow-bot.json", prefixes_body("192.0.2.0/24"), '"v1"', delay=5.0)
    server.publish("fast-bot.json", prefixes_body("198.51.100.0/24"), '"v1"')
    sources = write_sources(sources_file, server, "slow-bot", "fast-bot")

    started = time.monotonic()
    slow, fast = await update_lists(sources, cache_dir, session, timeout=0.3)

    assert time.monotonic() - started < 3.0
    assert slow.status == "failed"
    assert slow.error is not None
    assert "within 0.3 s" in slow.error
    assert fast == UpdateResult("fast-bot", "updated", 1)
    assert not cache_paths(cache_dir, "slow-bot")[0].exists()


async def test_unreachable_server_reports_failed(
    session: aiohttp.ClientSession, cache_dir: Path
) -> None:
    # A listening socket that is closed at once: nothing answers on its port.
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    sources = {"gone-bot": SourceInfo("gone-bot", "Example", f"https://127.0.0.1:{port}/x.json",
                                      "prefixes", None)}

    result = only(await update_lists(sources, cache_dir, session))

    assert result.status == "failed"
    assert result.error is not None
    assert f"127.0.0.1:{port}" in result.error


async def test_server_with_a_certificate_from_an_untrusted_ca_is_refused(
    server: ListServer, sources_file: Path, cache_dir: Path
) -> None:
    server.publish("example-bot.json", prefixes_body("192.0.2.0/24"), '"v1"')
    sources = write_sources(sources_file, server, "example-bot")
    async with aiohttp.ClientSession() as untrusting:  # the system's CAs only
        result = only(await update_lists(sources, cache_dir, untrusting))
    assert result.status == "failed"
    assert result.error is not None
    assert "certificate" in result.error.lower()
    assert server.asked == []


async def test_ssl_argument_overrides_the_sessions_tls_settings(
    server: ListServer, client_ssl: ssl.SSLContext, sources_file: Path, cache_dir: Path
) -> None:
    server.publish("example-bot.json", prefixes_body("192.0.2.0/24"), '"v1"')
    sources = write_sources(sources_file, server, "example-bot")
    async with aiohttp.ClientSession() as plain:
        result = only(await update_lists(sources, cache_dir, plain, ssl=client_ssl))
    assert result.status == "updated"


async def test_redirect_to_another_https_url_is_followed(
    server: ListServer, session: aiohttp.ClientSession, sources_file: Path, cache_dir: Path
) -> None:
    server.files["example-bot.json"] = Published(b"", "", location=server.url("moved.json"))
    server.publish("moved.json", prefixes_body("192.0.2.0/24"), '"v1"')
    sources = write_sources(sources_file, server, "example-bot")

    result = only(await update_lists(sources, cache_dir, session))

    assert result == UpdateResult("example-bot", "updated", 1)
    assert [a.path for a in server.asked] == ["example-bot.json", "moved.json"]


async def test_redirect_to_plain_http_is_refused_and_nothing_is_written(
    server: ListServer, plain_server: ListServer, session: aiohttp.ClientSession,
    sources_file: Path, cache_dir: Path,
) -> None:
    plain_server.publish("example-bot.json", prefixes_body("192.0.2.0/24"), '"v1"')
    server.files["example-bot.json"] = Published(
        b"", "", location=plain_server.url("example-bot.json"))
    sources = write_sources(sources_file, server, "example-bot")

    result = only(await update_lists(sources, cache_dir, session))

    assert result.status == "failed"
    assert result.error is not None
    assert "not https" in result.error
    assert listing(cache_dir) == []


async def test_only_fetches_the_named_sources(
    server: ListServer, session: aiohttp.ClientSession, sources_file: Path, cache_dir: Path
) -> None:
    for name in ("a-bot", "b-bot"):
        server.publish(f"{name}.json", prefixes_body("192.0.2.0/24"), '"v1"')
    sources = write_sources(sources_file, server, "a-bot", "b-bot")

    results = await update_lists(sources, cache_dir, session, only=["b-bot"])

    assert [r.source_id for r in results] == ["b-bot"]
    assert [a.path for a in server.asked] == ["b-bot.json"]


async def test_unknown_id_in_only_is_an_error_before_anything_is_fetched(
    server: ListServer, session: aiohttp.ClientSession, sources_file: Path, cache_dir: Path
) -> None:
    sources = write_sources(sources_file, server, "a-bot")
    with pytest.raises(RangeListError, match="unknown range list a-bto; known: a-bot"):
        await update_lists(sources, cache_dir, session, only=["a-bto"])
    assert issubclass(RangeListError, GatekeeperError)
    assert server.asked == []


async def test_validators_are_not_sent_after_the_url_changed(
    server: ListServer, session: aiohttp.ClientSession, sources_file: Path, cache_dir: Path
) -> None:
    server.publish("example-bot.json", prefixes_body("192.0.2.0/24"), '"v1"')
    server.publish("moved.json", prefixes_body("198.51.100.0/24"), '"v1"')
    sources = write_sources(sources_file, server, "example-bot")
    await update_lists(sources, cache_dir, session)
    moved = {"example-bot": SourceInfo("example-bot", "Example", server.url("moved.json"),
                                       "prefixes", None)}

    result = only(await update_lists(moved, cache_dir, session))

    assert result == UpdateResult("example-bot", "updated", 1)
    assert server.asked[-1].if_none_match is None


async def test_validators_are_not_sent_when_the_cached_body_is_missing(
    server: ListServer, session: aiohttp.ClientSession, sources_file: Path, cache_dir: Path
) -> None:
    server.publish("example-bot.json", prefixes_body("192.0.2.0/24"), '"v1"')
    sources = write_sources(sources_file, server, "example-bot")
    await update_lists(sources, cache_dir, session)
    cache_paths(cache_dir, "example-bot")[0].unlink()

    result = only(await update_lists(sources, cache_dir, session))

    assert result == UpdateResult("example-bot", "updated", 1)
    assert server.asked[-1].if_none_match is None


# --- the background refresher ---------------------------------------------------------


@pytest.fixture
def session_factory(client_ssl: ssl.SSLContext) -> Callable[[], aiohttp.ClientSession]:
    def make() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl))
    return make


async def test_refresher_reloads_a_registry_with_the_new_prefixes(
    server: ListServer, session_factory: Callable[[], aiohttp.ClientSession],
    sources_file: Path, cache_dir: Path,
) -> None:
    server.publish("example-bot.json", prefixes_body("192.0.2.0/24"), '"v1"')
    write_sources(sources_file, server, "example-bot")
    reloads: asyncio.Queue[tuple[RangeRegistry, list[UpdateResult]]] = asyncio.Queue()
    refresher = RangeRefresher(sources_file, cache_dir, 0.05, session_factory,
                               lambda reg, res: reloads.put_nowait((reg, res)),
                               initial_delay=0.0)
    refresher.start()
    try:
        registry, results = await asyncio.wait_for(reloads.get(), 5)
        assert results == [UpdateResult("example-bot", "updated", 1)]
        assert registry.match(["example-bot"], "192.0.2.1") == "example-bot"

        server.publish("example-bot.json", prefixes_body("203.0.113.0/24"), '"v2"')
        while True:
            registry, results = await asyncio.wait_for(reloads.get(), 5)
            if results[0].status == "updated":
                break
        assert registry.match(["example-bot"], "203.0.113.1") == "example-bot"
        assert registry.match(["example-bot"], "192.0.2.1") is None
    finally:
        started = time.monotonic()
        await refresher.stop()
        assert time.monotonic() - started < 1.0
    assert not refresher.running


async def test_refresher_keeps_going_after_a_failing_cycle(
    server: ListServer, session_factory: Callable[[], aiohttp.ClientSession],
    sources_file: Path, cache_dir: Path,
) -> None:
    server.publish("example-bot.json", prefixes_body("192.0.2.0/24"), '"v1"')
    write_sources(sources_file, server, "example-bot")
    calls: list[RangeRegistry] = []
    second = asyncio.Event()

    def on_reload(registry: RangeRegistry, _: list[UpdateResult]) -> None:
        calls.append(registry)
        if len(calls) == 1:
            raise RuntimeError("the proxy could not swap the registry in")
        second.set()

    refresher = RangeRefresher(sources_file, cache_dir, 0.05, session_factory, on_reload,
                               initial_delay=0.0)
    refresher.start()
    try:
        await asyncio.wait_for(second.wait(), 5)
    finally:
        await refresher.stop()
    assert len(calls) >= 2


async def test_refresher_survives_a_broken_sources_file(
    server: ListServer, session_factory: Callable[[], aiohttp.ClientSession],
    sources_file: Path, cache_dir: Path,
) -> None:
    await asyncio.to_thread(sources_file.write_text, "{ not json", encoding="utf-8")
    reloaded = asyncio.Event()
    refresher = RangeRefresher(sources_file, cache_dir, 0.05, session_factory,
                               lambda _reg, _res: reloaded.set(), initial_delay=0.0)
    refresher.start()
    try:
        await asyncio.sleep(0.2)  # a few failing cycles
        assert refresher.running
        server.publish("example-bot.json", prefixes_body("192.0.2.0/24"), '"v1"')
        write_sources(sources_file, server, "example-bot")
        await asyncio.wait_for(reloaded.wait(), 5)
    finally:
        await refresher.stop()


async def test_refresher_stop_during_a_slow_fetch_returns_promptly(
    server: ListServer, session_factory: Callable[[], aiohttp.ClientSession],
    sources_file: Path, cache_dir: Path,
) -> None:
    server.publish("example-bot.json", prefixes_body("192.0.2.0/24"), '"v1"', delay=10.0)
    write_sources(sources_file, server, "example-bot")
    refresher = RangeRefresher(sources_file, cache_dir, 60.0, session_factory,
                               lambda _reg, _res: None, initial_delay=0.0)
    refresher.start()
    for _ in range(100):  # until the request is in flight
        if server.asked:
            break
        await asyncio.sleep(0.02)
    assert server.asked

    started = time.monotonic()
    await refresher.stop()

    assert time.monotonic() - started < 1.0
    assert not refresher.running
    assert not cache_paths(cache_dir, "example-bot")[0].exists()


async def test_refresher_waits_the_initial_delay_before_the_first_cycle(
    server: ListServer, session_factory: Callable[[], aiohttp.ClientSession],
    sources_file: Path, cache_dir: Path,
) -> None:
    write_sources(sources_file, server, "example-bot")
    refresher = RangeRefresher(sources_file, cache_dir, 0.05, session_factory,
                               lambda _reg, _res: None, initial_delay=30.0)
    refresher.start()
    await asyncio.sleep(0.2)
    await refresher.stop()
    assert server.asked == []


async def test_refresh_now_runs_one_cycle_and_returns_the_registry(
    server: ListServer, session_factory: Callable[[], aiohttp.ClientSession],
    sources_file: Path, cache_dir: Path,
) -> None:
    server.publish("example-bot.json", prefixes_body("192.0.2.0/24"), '"v1"')
    write_sources(sources_file, server, "example-bot")
    seen: list[list[UpdateResult]] = []
    refresher = RangeRefresher(sources_file, cache_dir, 60.0, session_factory,
                               lambda _reg, res: seen.append(res))

    registry = await refresher.refresh()

    assert registry.has_data("example-bot")
    assert seen == [[UpdateResult("example-bot", "updated", 1)]]
