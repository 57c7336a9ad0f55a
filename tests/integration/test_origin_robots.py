"""OriginRobots against a real aiohttp origin on 127.0.0.1.

The origin serves a different robots.txt per Host header and counts what it is
asked, so the tests can see how often the cache goes to the upstream. Time is a
fake clock for the cache and real time only for the fetch timeout.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from gatekeeper.core.robots import PARSE_LIMIT
from gatekeeper.edge.origin_robots import MAX_STALE, OriginRobots, RobotsFetchError

KiB = 1024
GOOD = "User-agent: GPTBot\nDisallow: /private/\n\nUser-agent: *\nDisallow: /tmp/\n"


@dataclass
class Origin:
    url: str = ""
    hits: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Per host: what /robots.txt answers, as (status, body); changed by the tests.
    files: dict[str, tuple[int, str]] = field(default_factory=dict)
    delay: float = 0.0  # before answering a.test, to make fetches overlap
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def host_hits(self, host: str) -> int:
        return sum(n for (h, _), n in self.hits.items() if h == host)


def _big_file() -> bytes:
    head = b"User-agent: *\nDisallow: /early/\n"
    filler = b"#" + b"." * 1022 + b"\n"  # 1 KiB comment lines
    body = head + filler * (PARSE_LIMIT // len(filler) + 10)
    body += b"Disallow: /late/\n" + filler * 100
    assert len(body) > 600 * KiB
    return body


def _app(state: Origin) -> web.Application:
    big = _big_file()

    async def robots(request: web.Request) -> web.StreamResponse:
        host = request.host.split(":")[0]
        state.hits[host, request.path_qs] += 1
        if host == "slow.test":
            await state.release.wait()
        if host == "a.test" and state.delay:
            await asyncio.sleep(state.delay)
        if host == "redirect.test":
            step = int(request.query.get("n", "0"))
            hops = int(state.files[host][1])
            if step < hops:
                raise web.HTTPFound(f"/robots.txt?n={step + 1}")
            return web.Response(text="User-agent: *\nDisallow: /after-redirects/\n")
        if host == "public.test" and request.path == "/robots.txt":
            raise web.HTTPMovedPermanently("https://public.test/robots-v2.txt")
        if host == "offsite.test":
            raise web.HTTPFound("http://elsewhere.invalid/robots.txt")
        if host == "big.test":
            return web.Response(body=big, content_type="text/plain")
        status, text = state.files.get(host, (404, "not found"))
        return web.Response(status=status, text=text)

    app = web.Application()
    app.router.add_get("/robots.txt", robots)
    app.router.add_get("/robots-v2.txt", robots)
    return app


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    state = Origin()
    state.files = {
        "ok.test": (200, GOOD),
        "a.test": (200, "User-agent: *\nDisallow: /a-only/\n"),
        "b.test": (200, "User-agent: *\nDisallow: /b-only/\n"),
        "missing.test": (404, "no such file"),
        "forbidden.test": (403, "go away"),
        "broken.test": (500, "oops"),
        "unavailable.test": (503, "later"),
        "public.test": (200, "User-agent: *\nDisallow: /v2/\n"),
        "redirect.test": (200, "5"),
    }
    runner = web.AppRunner(_app(state), access_log=None, handler_cancellation=True,
                           shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    state.release.set()
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def robots(
    session: aiohttp.ClientSession, origin: Origin, clock: Clock
) -> AsyncIterator[OriginRobots]:
    cache = OriginRobots(session, origin.url, ttl=3600, error_ttl=60, timeout=0.5, clock=clock)
    yield cache
    await cache.close()


async def _eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_a_200_file_is_parsed_and_decides_per_token(
    robots: OriginRobots, origin: Origin
) -> None:
    rules = await robots.rules("ok.test")
    assert not rules.verdict("GPTBot", "/private/report").allowed
    assert rules.verdict("GPTBot", "/tmp/x").allowed
    assert not rules.verdict("CCBot", "/tmp/x").allowed
    assert rules.verdict("CCBot", "/private/report").allowed
    assert origin.hits["ok.test", "/robots.txt"] == 1
    assert (robots.fetches, robots.failures) == (1, 0)


async def test_the_host_name_is_matched_case_insensitively(
    robots: OriginRobots, origin: Origin
) -> None:
    await robots.rules("OK.test")
    await robots.rules("ok.test")
    assert origin.host_hits("ok.test") == 1


async def test_a_cached_file_is_not_fetched_again_until_it_is_stale(
    robots: OriginRobots, origin: Origin, clock: Clock
) -> None:
    first = await robots.rules("ok.test")
    clock.now += 3599
    assert await robots.rules("ok.test") is first
    assert robots.fetched_at("ok.test") == 1000.0
    assert origin.host_hits("ok.test") == 1


async def test_concurrent_callers_share_one_fetch(robots: OriginRobots, origin: Origin) -> None:
    origin.delay = 0.2
    results = await asyncio.gather(*(robots.rules("a.test") for _ in range(20)))
    assert all(rules is results[0] for rules in results)
    assert origin.host_hits("a.test") == 1


async def test_each_host_gets_its_own_file(robots: OriginRobots, origin: Origin) -> None:
    a = await robots.rules("a.test")
    b = await robots.rules("b.test")
    assert not a.verdict("X", "/a-only/1").allowed
    assert a.verdict("X", "/b-only/1").allowed
    assert not b.verdict("X", "/b-only/1").allowed
    assert b.verdict("X", "/a-only/1").allowed
    assert (origin.host_hits("a.test"), origin.host_hits("b.test")) == (1, 1)


@pytest.mark.parametrize("host", ["missing.test", "forbidden.test"])
async def test_a_4xx_means_everything_is_allowed(robots: OriginRobots, host: str) -> None:
    rules = await robots.rules(host)
    assert rules.source == "allow-all"
    assert rules.verdict("GPTBot", "/anything").allowed
    assert robots.failures == 0
    assert robots.last_error(host) is not None


@pytest.mark.parametrize("host", ["broken.test", "unavailable.test"])
async def test_a_5xx_means_everything_is_disallowed(robots: OriginRobots, host: str) -> None:
    rules = await robots.rules(host)
    assert rules.source == "disallow-all"
    assert not rules.verdict("GPTBot", "/anything").allowed
    assert rules.verdict("GPTBot", "/robots.txt").allowed
    assert (robots.fetches, robots.failures) == (1, 1)


async def test_a_refused_connection_means_everything_is_disallowed(
    session: aiohttp.ClientSession, clock: Clock
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    cache = OriginRobots(session, f"http://127.0.0.1:{closed_port}", clock=clock)
    rules = await cache.rules("ok.test")
    assert rules.source == "disallow-all"
    assert cache.failures == 1
    await cache.close()


async def test_a_slow_upstream_times_out_to_disallow_all(
    robots: OriginRobots, origin: Origin
) -> None:
    async with asyncio.timeout(3):
        rules = await robots.rules("slow.test")
    assert rules.source == "disallow-all"
    assert robots.failures == 1
    assert origin.host_hits("slow.test") == 1


async def test_an_unreachable_file_is_retried_after_the_error_ttl(
    robots: OriginRobots, origin: Origin, clock: Clock
) -> None:
    await robots.rules("broken.test")
    origin.files["broken.test"] = (200, GOOD)
    clock.now += 61
    await robots.rules("broken.test")  # stale: served while the refresh runs
    await _eventually(lambda: robots.fetches == 2)
    rules = await robots.rules("broken.test")
    assert rules.source == "parsed"
    assert not rules.verdict("GPTBot", "/private/").allowed


async def test_five_redirects_within_the_upstream_are_followed(
    robots: OriginRobots, origin: Origin
) -> None:
    rules = await robots.rules("redirect.test")
    assert not rules.verdict("X", "/after-redirects/x").allowed
    assert origin.host_hits("redirect.test") == 6


async def test_a_sixth_redirect_makes_the_file_unavailable(
    robots: OriginRobots, origin: Origin
) -> None:
    origin.files["redirect.test"] = (200, "6")
    rules = await robots.rules("redirect.test")
    assert rules.source == "allow-all"
    assert origin.host_hits("redirect.test") == 6


async def test_a_redirect_to_the_public_host_is_fetched_through_the_upstream(
    robots: OriginRobots, origin: Origin
) -> None:
    rules = await robots.rules("public.test")
    assert not rules.verdict("X", "/v2/x").allowed
    assert origin.hits["public.test", "/robots-v2.txt"] == 1


async def test_a_redirect_off_the_site_is_not_followed(
    robots: OriginRobots, origin: Origin
) -> None:
    rules = await robots.rules("offsite.test")
    assert rules.source == "allow-all"
    assert "leaves the site" in (robots.last_error("offsite.test") or "")
    assert origin.host_hits("offsite.test") == 1


async def test_a_rule_past_500_kib_of_a_600_kib_file_is_ignored(robots: OriginRobots) -> None:
    rules = await robots.rules("big.test")
    assert rules.truncated
    assert not rules.verdict("X", "/early/x").allowed
    assert rules.verdict("X", "/late/x").allowed


async def test_stale_rules_are_served_while_one_refresh_runs(
    robots: OriginRobots, origin: Origin, clock: Clock
) -> None:
    old = await robots.rules("a.test")
    origin.files["a.test"] = (200, "User-agent: *\nDisallow: /new/\n")
    origin.delay = 0.2
    clock.now += 3601
    stale = await asyncio.gather(*(robots.rules("a.test") for _ in range(10)))
    assert all(rules is old for rules in stale)  # at once, without waiting for the fetch
    await _eventually(lambda: origin.host_hits("a.test") == 2 and robots.fetches == 2)
    fresh = await robots.rules("a.test")
    assert fresh is not old
    assert not fresh.verdict("X", "/new/x").allowed
    assert origin.host_hits("a.test") == 2
    assert robots.fetched_at("a.test") == clock.now


async def test_an_outage_keeps_the_last_good_copy_for_24_hours(
    robots: OriginRobots, origin: Origin, clock: Clock
) -> None:
    good = await robots.rules("ok.test")
    fetched = clock.now
    origin.files["ok.test"] = (500, "down")
    clock.now += 3601
    await robots.rules("ok.test")
    await _eventually(lambda: robots.fetches == 2)
    assert await robots.rules("ok.test") is good  # the outage did not replace it
    assert robots.failures == 1
    clock.now = fetched + MAX_STALE + 1
    # Past 24 hours the old copy is no longer served, not even while refreshing.
    rules = await robots.rules("ok.test")
    assert rules.source == "disallow-all"
    assert robots.failures == 2


async def test_peek_does_no_io_and_refresh_soon_fetches_in_the_background(
    robots: OriginRobots, origin: Origin, clock: Clock
) -> None:
    assert robots.peek("ok.test") is None
    assert robots.fetched_at("ok.test") is None
    robots.refresh_soon("ok.test")
    robots.refresh_soon("ok.test")  # one fetch in flight per host
    await _eventually(lambda: robots.peek("ok.test") is not None)
    assert robots.fetched_at("ok.test") == clock.now
    robots.refresh_soon("ok.test")  # fresh: nothing to do
    await asyncio.sleep(0.05)
    assert origin.host_hits("ok.test") == 1


async def test_the_host_cache_is_bounded_least_recently_used_first(
    session: aiohttp.ClientSession, origin: Origin, clock: Clock
) -> None:
    cache = OriginRobots(session, origin.url, max_hosts=2, clock=clock)
    await cache.rules("a.test")
    await cache.rules("b.test")
    await cache.rules("a.test")  # a.test is now the most recently used
    await cache.rules("ok.test")
    assert cache.peek("b.test") is None
    assert cache.peek("a.test") is not None
    assert cache.peek("ok.test") is not None
    await cache.close()


async def test_close_cancels_a_running_fetch(robots: OriginRobots, origin: Origin) -> None:
    robots.refresh_soon("slow.test")
    await _eventually(lambda: origin.host_hits("slow.test") == 1)
    async with asyncio.timeout(1):
        await robots.close()
    assert robots.peek("slow.test") is None
    with pytest.raises(RobotsFetchError):
        await robots.rules("slow.test")


async def test_an_outage_after_a_4xx_keeps_allowing_everything(
    robots: OriginRobots, origin: Origin, clock: Clock
) -> None:
    await robots.rules("ok.test")
    origin.files["ok.test"] = (404, "gone")
    clock.now += 3601
    await robots.rules("ok.test")
    await _eventually(lambda: robots.fetches == 2)
    origin.files["ok.test"] = (503, "down")
    clock.now += 3601
    await robots.rules("ok.test")
    await _eventually(lambda: robots.fetches == 3)
    # The crawler's latest copy is "no file", not the one from before it was removed.
    assert (await robots.rules("ok.test")).source == "allow-all"
    assert robots.failures == 1
