"""RedisStore against a real redis-server: the shared conformance table, then what
only a shared, networked store has (expiry of every key, serialised windows, several
clients on one bucket, and a server that stops, stalls or restarts)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import redis.asyncio
from redis.exceptions import RedisError

import tests.conformance.store_suite as suite
from gatekeeper.core.behaviour import BehaviourConfig, Signals, Window, client_keys, score_client
from gatekeeper.errors import StoreUnavailable
from gatekeeper.store.memory import MemoryStore
from gatekeeper.store.redis import RedisStore, decode_window, encode_window
from tests.conformance.store_suite import (  # noqa: F401  (run the shared table here)
    test_a_revocation_is_seen_until_it_lapses,
    test_a_slow_bucket_refills_at_its_rate_however_long_it_waits,
    test_bucket_allows_burst_then_denies,
    test_bucket_refills_over_time,
    test_bucket_results_match_the_core_arithmetic,
    test_buckets_are_independent_per_key,
    test_counters_add_up_and_start_again_after_their_ttl,
    test_first_seen_is_true_once_then_false_until_expiry,
    test_note_refusal_for_an_unseen_client_starts_its_window,
    test_note_refusal_is_seen_by_the_next_observation,
    test_observe_client_counts_each_request_in_both_windows,
    test_windows_carry_the_previous_fixed_window,
)
from tests.support.redis_server import RedisTestServer

# The store's default: what a stalled server costs a request.
TIMEOUT = 0.25
# How long the store stops asking a server it found down (the default is 1 s; shorter
# here so the tests that restart or resume a server wait less).
RETRY = 0.5


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisTestServer]:
    """One server for the tests that leave it running; each test has its own prefix."""
    with RedisTestServer() as server:
        yield server


@pytest.fixture
def own_server() -> Iterator[RedisTestServer]:
    """A server of this test's own, for tests that stop, pause or restart it."""
    with RedisTestServer() as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"gk-test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def store(redis_server: RedisTestServer, prefix: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_server.url, prefix=prefix, timeout=TIMEOUT)
    yield s
    await s.close()


@pytest.fixture
async def raw(redis_server: RedisTestServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client to look at what the store wrote."""
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


def test_every_conformance_case_runs_against_redis() -> None:
    cases = {name for name in vars(suite) if name.startswith("test_")}
    assert cases <= set(globals()), sorted(cases - set(globals()))


# --- What is stored, and that it goes away -------------------------------------------


async def _ttls(raw: redis.asyncio.Redis, prefix: str) -> dict[str, int]:
    return {key: await raw.pttl(key) async for key in raw.scan_iter(match=prefix + "*")}


async def test_every_key_the_store_writes_has_an_expiry(
        store: RedisStore, raw: redis.asyncio.Redis, prefix: str) -> None:
    cfg = BehaviourConfig()
    keys = client_keys("192.0.2.1")
    operations = [
        store.take("k", 1.0, 5, 100.0),
        store.take("k", 1.0, 5, 101.0),
        store.first_seen("k", 60.0, 100.0),
        store.first_seen("k", 60.0, 170.0),
        store.incr("k", 3, 60.0, 100.0),
        store.incr("k", 3, 60.0, 170.0),
        store.observe_client(keys, Signals("/", is_html_like=True), 100.0, cfg),
        store.note_refusal(keys, "GPTBot", 101.0),
        store.note_refusal(client_keys("192.0.2.99"), "GPTBot", 101.0),
        store.revoke("tok-1", 200.0, 100.0),
    ]
    for operation in operations:
        await operation
        ttls = await _ttls(raw, prefix)
        # -1 is a key without expiry, -2 one that vanished between SCAN and PTTL.
        assert all(ttl > 0 for ttl in ttls.values()), ttls
    assert set(await _ttls(raw, prefix)) == {
        f"{prefix}rl:k", f"{prefix}seen:k", f"{prefix}ctr:k",
        f"{prefix}win:192.0.2.1", f"{prefix}win:192.0.2.0/24", f"{prefix}win:192.0.2.99",
        f"{prefix}rev:tok-1",
    }


async def test_a_bucket_is_kept_until_it_would_be_full_again(
        store: RedisStore, raw: redis.asyncio.Redis, prefix: str) -> None:
    for _ in range(10):
        await store.take("drain", 2.0, 10, 100.0)
    # Empty at 2 tokens/s: full again after 5 s, plus the one-second margin.
    assert 5000 < await raw.pttl(f"{prefix}rl:drain") <= 6000
    # rate 1/h, burst 48, drained: full again after 48 h, not forgotten after a day.
    for _ in range(48):
        await store.take("hourly", 1 / 3600, 48, 100.0)
    assert 172_800_000 < await raw.pttl(f"{prefix}rl:hourly") <= 172_801_000
    # Never full again (rate 0, which no policy gives): a century, as Redis keeps no
    # infinite expiry; still an expiry, so nothing is kept for ever.
    await store.take("never", 0.0, 1, 100.0)
    century = 100 * 365 * 86_400_000
    assert century < await raw.pttl(f"{prefix}rl:never") <= century + 1000
    assert await raw.hgetall(f"{prefix}rl:drain") == {"tokens": "0", "updated": "100.0"}


async def test_a_slow_bucket_agrees_with_the_memory_store_after_a_long_idle(
        store: RedisStore, raw: redis.asyncio.Redis, prefix: str) -> None:
    memory = MemoryStore()
    rate, burst, now = 1 / 3600, 48, 1000.0
    for _ in range(burst):
        await store.take("slow", rate, burst, now)
        await memory.take("slow", rate, burst, now)
    for idle in (3600.0, 86_402.0, 40 * 3600.0, 49 * 3600.0):
        later = now + idle
        # Redis's clock does not move with `later`: drop the bucket if its expiry
        # would have passed by then, as Redis will have done.
        if await raw.pttl(f"{prefix}rl:slow") < idle * 1000:
            await raw.delete(f"{prefix}rl:slow")
        results = []
        while True:
            expected = await memory.take("slow", rate, burst, later)
            assert await store.take("slow", rate, burst, later) == expected, idle
            results.append(expected.allowed)
            if not expected.allowed:
                break
        assert len(results) - 1 == min(burst, int(idle / 3600)), idle
        now = later
    await memory.close()


async def test_replay_entries_and_counters_live_for_their_ttl(
        store: RedisStore, raw: redis.asyncio.Redis, prefix: str) -> None:
    await store.first_seen("nonce", 60.0, 100.0)
    await store.incr("quota", 1, 30.0, 100.0)
    assert 60_000 < await raw.pttl(f"{prefix}seen:nonce") <= 61_000
    assert 30_000 < await raw.pttl(f"{prefix}ctr:quota") <= 31_000
    # Expiry follows the caller's clock: the key is still in Redis, but it has expired.
    assert await store.first_seen("nonce", 60.0, 160.0)
    assert await raw.get(f"{prefix}seen:nonce") == "220.0"


async def test_windows_are_kept_for_the_idle_horizon(
        store: RedisStore, raw: redis.asyncio.Redis, prefix: str) -> None:
    keys = client_keys("192.0.2.5")
    await store.observe_client(keys, Signals("/"), 100.0, BehaviourConfig())
    assert 3_600_000 < await raw.pttl(f"{prefix}win:192.0.2.5") <= 3_601_000
    long = BehaviourConfig(robots_horizon=7200.0)
    await store.observe_client(keys, Signals("/"), 101.0, long)
    assert 7_200_000 < await raw.pttl(f"{prefix}win:192.0.2.5") <= 7_201_000


# --- Behaviour windows through serialisation -----------------------------------------


def _slots(window: Window) -> dict[str, object]:
    return {name: getattr(window, name) for name in Window.__slots__}


def test_window_encoding_round_trips_every_slot() -> None:
    window = Window(-1, 12.5)  # robots_at and last_refused_at are -inf: never
    fresh = decode_window(encode_window(window))
    assert fresh is not None
    assert _slots(fresh) == _slots(window)
    window.paths = (1 << 255) | 1  # the whole 256-bit bitmap
    window.robots_at, window.last_refused_at = 3.25, 4.5
    window.last_refused_crawler = 'Odd "Bot" \u00e9'
    window.epoch, window.requests, window.p_requests = 123456789, 7, 9
    decoded = decode_window(encode_window(window).encode())
    assert decoded is not None
    assert _slots(decoded) == _slots(window)


def _stored_with(slot: int, value: object) -> bytes:
    data = json.loads(encode_window(Window(1, 1.0)))
    data[slot] = value
    return json.dumps(data).encode()


_LAST_SEEN = 1 + Window.__slots__.index("last_seen")
_CRAWLER = 1 + Window.__slots__.index("last_refused_crawler")


@pytest.mark.parametrize("stored", [
    None, b"", b"not json", b"{}", b"[]", b"[2]", b'"text"',
    encode_window(Window(1, 1.0)).encode()[:-5] + b"]",  # a slot short
    # the right shape, in another format or with a value of the wrong type
    _stored_with(0, 2), _stored_with(1, True), _stored_with(1, 1.5),
    _stored_with(_LAST_SEEN, "x"), _stored_with(_LAST_SEEN, None), _stored_with(_CRAWLER, 7),
])
def test_windows_not_understood_read_as_absent(stored: bytes | None) -> None:
    assert decode_window(stored) is None


def test_window_field_kinds_match_a_fresh_window() -> None:
    # decode_window checks types per slot; a slot added to Window must get the right kind.
    from gatekeeper.store import redis as module

    window = Window(0, 0.0)
    for name in Window.__slots__:
        kind = (float if name in module._FLOAT_FIELDS
                else str if name in module._STR_FIELDS else int)
        assert type(getattr(window, name)) is kind, name


async def test_a_corrupt_window_starts_again(
        store: RedisStore, raw: redis.asyncio.Redis, prefix: str) -> None:
    await raw.set(f"{prefix}win:192.0.2.8", "garbage", px=60_000)
    by_ip, _ = await store.observe_client(client_keys("192.0.2.8"), Signals("/"), 100.0,
                                          BehaviourConfig())
    assert by_ip.requests == 1


async def test_windows_and_scores_match_the_memory_store(store: RedisStore) -> None:
    cfg = BehaviourConfig(window=10.0)
    memory = MemoryStore()
    clients = ["192.0.2.20", "192.0.2.21", "2001:db8::20"]
    signals = [
        Signals("/robots.txt", is_robots_txt=True),
        Signals("/a", is_html_like=True),
        Signals("/b.css", is_asset=True),
        Signals("/private/x", is_html_like=True, robots_disallowed=True, has_accept=False),
        Signals("/c", is_html_like=True, has_accept_language=False),
        Signals("/d", is_html_like=True, claimed_crawler="GPTBot"),
    ]
    now = 1000.0
    for step in range(150):
        ip = clients[step % len(clients)]
        sig = signals[step * 7 % len(signals)]
        now += (step % 5) * 0.9
        keys = client_keys(ip)
        if sig.claimed_crawler and step % 2:
            await memory.note_refusal(keys, sig.claimed_crawler, now)
            await store.note_refusal(keys, sig.claimed_crawler, now)
        expected = await memory.observe_client(keys, sig, now, cfg)
        got = await store.observe_client(keys, sig, now, cfg)
        assert [_slots(w) for w in got] == [_slots(w) for w in expected], step
        assert score_client(*got, sig, now, cfg) == score_client(*expected, sig, now, cfg)
    await memory.close()


# --- Several clients, one store ------------------------------------------------------


async def test_two_stores_share_one_bucket_counter_and_replay_cache(
        redis_server: RedisTestServer, prefix: str) -> None:
    a = RedisStore(redis_server.url, prefix=prefix)
    b = RedisStore(redis_server.url, prefix=prefix)
    try:
        assert (await a.take("global", 0.01, 3, 100.0)).allowed
        assert (await b.take("global", 0.01, 3, 100.0)).allowed
        assert (await a.take("global", 0.01, 3, 100.0)).allowed
        assert not (await b.take("global", 0.01, 3, 100.0)).allowed
        assert await a.first_seen("nonce", 60.0, 100.0)
        assert not await b.first_seen("nonce", 60.0, 101.0)
        assert await a.incr("quota", 2, 60.0, 100.0) == 2
        assert await b.incr("quota", 2, 60.0, 101.0) == 4
        keys = client_keys("192.0.2.30")
        await a.note_refusal(keys, "GPTBot", 100.0)
        by_ip, _ = await b.observe_client(keys, Signals("/"), 101.0, BehaviourConfig())
        assert by_ip.last_refused_crawler == "GPTBot"
    finally:
        await a.close()
        await b.close()


async def test_prefixes_keep_stores_apart(redis_server: RedisTestServer) -> None:
    a = RedisStore(redis_server.url, prefix=f"gk-a-{uuid.uuid4().hex}:")
    b = RedisStore(redis_server.url, prefix=f"gk-b-{uuid.uuid4().hex}:")
    try:
        assert (await a.take("k", 0.01, 1, 100.0)).allowed
        assert (await b.take("k", 0.01, 1, 100.0)).allowed
    finally:
        await a.close()
        await b.close()


async def test_a_client_passed_in_is_used_and_left_open(
        redis_server: RedisTestServer, prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    s = RedisStore(redis_server.url, prefix=prefix, client=client)
    assert await s.incr("k", 1, 60.0, 100.0) == 1
    await s.close()
    assert await client.ping()
    await client.aclose()


# --- Failures --------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _each_operation(s: RedisStore) -> list[tuple[str, float, StoreUnavailable]]:
    """Run every operation, each expected to fail: (name, seconds taken, error)."""
    keys = client_keys("192.0.2.40")
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "take": lambda: s.take("k", 1.0, 1, 100.0),
        "first_seen": lambda: s.first_seen("k", 60.0, 100.0),
        "incr": lambda: s.incr("k", 1, 60.0, 100.0),
        "observe_client": lambda: s.observe_client(keys, Signals("/"), 100.0,
                                                   BehaviourConfig()),
        "note_refusal": lambda: s.note_refusal(keys, "GPTBot", 100.0),
    }
    failures = []
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await call()
        failures.append((name, time.monotonic() - started, caught.value))
    return failures


async def test_constructing_does_no_io_and_a_refused_connection_is_unavailable() -> None:
    port = _closed_port()
    s = RedisStore(f"redis://:hunter2@127.0.0.1:{port}/0")  # nothing listens there
    try:
        for name, seconds, error in await _each_operation(s):
            assert seconds < 1.0, name
            assert f"127.0.0.1:{port}" in str(error)
            assert name in str(error)
            assert "hunter2" not in str(error)
            assert isinstance(error.__cause__, RedisError | OSError)
    finally:
        await s.close()


async def test_a_stopped_server_is_unavailable_at_once_and_a_restarted_one_works_again(
        own_server: RedisTestServer, prefix: str) -> None:
    s = RedisStore(own_server.url, prefix=prefix, timeout=TIMEOUT, retry_interval=RETRY)
    try:
        assert (await s.take("k", 0.01, 1, 100.0)).allowed
        own_server.stop()
        for name, seconds, _ in await _each_operation(s):
            assert seconds < 1.0, name
        own_server.start()
        # The store asks the server again once the retry interval has passed. A fresh
        # server: the scripts are loaded again, and the bucket starts full.
        await asyncio.sleep(RETRY)
        assert (await s.take("k", 0.01, 1, 100.0)).allowed
        assert await s.first_seen("n", 60.0, 100.0)
        assert await s.incr("c", 1, 60.0, 100.0) == 1
    finally:
        await s.close()


async def test_a_restart_between_calls_costs_no_failed_call(
        own_server: RedisTestServer, prefix: str) -> None:
    s = RedisStore(own_server.url, prefix=prefix, timeout=TIMEOUT)
    try:
        assert await s.incr("c", 1, 60.0, 100.0) == 1  # leaves a pooled connection
        own_server.stop()
        # A serving gate's event loop runs while a server restarts, and reads the closed
        # connection's end of stream; these blocking calls would not let it otherwise.
        await asyncio.sleep(0.05)
        own_server.start()
        # The pooled connection is closed; the pool notices and connects again.
        assert await s.incr("c", 1, 60.0, 100.0) == 1
        assert (await s.take("k", 0.01, 1, 100.0)).allowed
    finally:
        await s.close()


async def _until_answered(call: Callable[[], Awaitable[object]], limit: float) -> object:
    """Call until the store answers; fails the test after `limit` seconds."""
    started = time.monotonic()
    while True:
        try:
            return await call()
        except StoreUnavailable:
            assert time.monotonic() - started < limit, "the store was not used again in time"
            await asyncio.sleep(0.01)


async def test_a_paused_server_costs_one_call_its_timeout_and_later_calls_nothing(
        own_server: RedisTestServer, prefix: str) -> None:
    s = RedisStore(own_server.url, prefix=prefix, timeout=TIMEOUT, retry_interval=RETRY)
    try:
        assert await s.incr("c", 1, 60.0, 100.0) == 1
        own_server.pause()
        failures = await _each_operation(s)
        own_server.resume()
        resumed = time.monotonic()
        print("paused server, seconds to StoreUnavailable:",
              {name: round(seconds, 3) for name, seconds, _ in failures})
        (_, first, error), *later = failures
        assert first < TIMEOUT + 0.1
        assert f"no answer within {TIMEOUT:g} s" in str(error)
        # Every later call within the retry interval fails without asking the server.
        for name, seconds, error in later:
            assert seconds < 0.05, (name, seconds)
            assert f"{name} not tried: the server failed" in str(error)
            assert isinstance(error.__cause__, TimeoutError)
        # Back once the interval since the failure has passed; no restart.
        assert await _until_answered(lambda: s.incr("c", 1, 60.0, 100.0), RETRY + 0.5) == 2
        assert time.monotonic() - resumed < RETRY + 0.1
        # The timed-out connection was dropped: no late reply is read as a new answer.
        assert await s.incr("c", 1, 60.0, 100.0) == 3
        assert (await s.take("k", 0.01, 1, 100.0)).allowed
    finally:
        await s.close()


async def _seconds_to_fail(call: Awaitable[object]) -> float:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await call
    return time.monotonic() - started


async def test_after_the_retry_interval_one_call_at_a_time_tries_the_server(
        own_server: RedisTestServer, prefix: str) -> None:
    s = RedisStore(own_server.url, prefix=prefix, timeout=TIMEOUT, retry_interval=RETRY)
    own_server.pause()
    try:
        await _seconds_to_fail(s.take("k", 1.0, 1, 100.0))
        await asyncio.sleep(RETRY)
        seconds = sorted(await asyncio.gather(
            *(_seconds_to_fail(s.take(f"k{i}", 1.0, 1, 100.0)) for i in range(10))))
        # One call tried the frozen server and waited for it; the rest did not wait.
        assert seconds[-1] >= TIMEOUT * 0.8
        assert seconds[-2] < 0.05, seconds
        # It failed again: another interval without asking the server.
        assert await _seconds_to_fail(s.take("k", 1.0, 1, 100.0)) < 0.05
    finally:
        own_server.resume()
        await s.close()


async def test_with_no_retry_interval_every_call_tries_the_server(
        own_server: RedisTestServer, prefix: str) -> None:
    s = RedisStore(own_server.url, prefix=prefix, timeout=TIMEOUT, retry_interval=0)
    own_server.pause()
    try:
        for _ in range(3):
            assert await _seconds_to_fail(s.take("k", 1.0, 1, 100.0)) >= TIMEOUT * 0.8
        own_server.resume()
        assert (await s.take("k", 1.0, 1, 100.0)).allowed  # at once: nothing to wait out
    finally:
        own_server.resume()
        await s.close()


async def test_an_error_reply_is_unavailable_but_the_server_is_still_asked(
        store: RedisStore, raw: redis.asyncio.Redis, prefix: str) -> None:
    await raw.set(f"{prefix}rl:text", "not a bucket", px=60_000)
    with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
        await store.take("text", 1.0, 1, 100.0)
    # The server answered: it is up, and the next call uses it.
    assert (await store.take("bucket", 1.0, 1, 100.0)).allowed


async def test_a_fresh_connection_to_a_paused_server_times_out_too(
        own_server: RedisTestServer, prefix: str) -> None:
    s = RedisStore(own_server.url, prefix=prefix, timeout=TIMEOUT, retry_interval=RETRY)
    try:
        own_server.pause()  # before the store ever connected: the handshake stalls
        assert await _seconds_to_fail(s.take("k", 1.0, 1, 100.0)) < TIMEOUT + 0.1
        own_server.resume()
        await asyncio.sleep(RETRY)
        assert (await s.take("k", 1.0, 1, 100.0)).allowed
    finally:
        await s.close()


# --- The connection pool -------------------------------------------------------------


@pytest.mark.parametrize("max_connections", [None, 4])
async def test_more_concurrent_calls_than_connections_all_get_an_answer_and_the_limit_holds(
        own_server: RedisTestServer, prefix: str, max_connections: int | None) -> None:
    # None: the default pool. 400 calls at once is more than it holds, and more than
    # redis-py's own default pool, which refused the rest at once.
    options = {} if max_connections is None else {"max_connections": max_connections}
    s = RedisStore(own_server.url, prefix=prefix, timeout=5.0, **options)
    watcher = redis.asyncio.Redis.from_url(own_server.url)
    try:
        results = await asyncio.gather(
            *(s.take("global", 1e-6, 100, 100.0) for _ in range(400)), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert sum(r.allowed for r in results if not isinstance(r, BaseException)) == 100
        # The pool never opened more than its bound (the watcher is one more client).
        assert len(await watcher.client_list()) - 1 <= (max_connections or 50)
    finally:
        await watcher.aclose()
        await s.close()


async def test_waiting_for_a_free_connection_counts_against_the_timeout(
        own_server: RedisTestServer, prefix: str) -> None:
    s = RedisStore(own_server.url, prefix=prefix, timeout=TIMEOUT, max_connections=1,
                   retry_interval=0)
    try:
        assert await s.incr("c", 1, 60.0, 100.0) == 1  # the one connection, open
        own_server.pause()
        started = time.monotonic()
        results = await asyncio.gather(
            *(s.take(f"k{i}", 1.0, 1, 100.0) for i in range(5)), return_exceptions=True)
        elapsed = time.monotonic() - started
        own_server.resume()
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        # Four calls queued behind one stalled call; none waited longer than the
        # timeout in all, not one timeout after another.
        assert elapsed < TIMEOUT + 0.15, elapsed
    finally:
        own_server.resume()
        await s.close()


async def test_replicas_arriving_out_of_order_never_refill_one_interval_twice(
    store: RedisStore,
) -> None:
    # rate 1/s, burst 2: drain it at t=100, then a replica whose request was stamped a
    # little earlier arrives; the bucket's time must not go back to 99.5.
    assert (await store.take("ooo", 1.0, 2, 100.0)).allowed
    assert (await store.take("ooo", 1.0, 2, 100.0)).allowed
    assert not (await store.take("ooo", 1.0, 2, 99.5)).allowed
    # Half a second after 100: half a token, not one (which 99.5 would have given).
    assert not (await store.take("ooo", 1.0, 2, 100.5)).allowed
    assert (await store.take("ooo", 1.0, 2, 101.0)).allowed
