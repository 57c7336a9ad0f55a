"""Redis store: the state that replicas of the gate share.

What is kept where (every key starts with the store's prefix, "gk:" by default):

- ``{prefix}rl:{key}``: a token bucket, a hash with ``tokens`` and ``updated``.
  Taking a token is one Lua script, so the read, the refill and the write are
  atomic and cost one round trip. The key expires once the bucket would be full
  again (plus a margin): a missing bucket starts full, so forgetting it then
  changes nothing and idle clients leave no keys behind.
- ``{prefix}seen:{key}``: the replay cache, a string holding the time the entry
  stops counting as seen.
- ``{prefix}ctr:{key}``: a counter, a hash with ``count`` and ``expiry`` (fixed
  from the counter's creation).
- ``{prefix}rev:{token id}``: a revoked licence token, holding the time the
  revocation lapses (the token's own expiry); every replica sees it at once.
- ``{prefix}win:{key}``: a behaviour `Window`, serialised as a JSON list; one per
  client address and one per client network. Both are read with one MGET, updated
  by `gatekeeper.core.behaviour` here and written back with one pipelined pair of
  SETs. They expire after an idle hour, or the configuration's longest horizon
  if that is longer, like `WindowTable`'s. Two replicas updating one client's
  window at the same moment can lose one request's count: the scores are
  thresholds over many requests, which that does not move, and it keeps the
  scoring code in one place rather than ported to Lua. Page paths enter the
  distinct-path bitmap by CRC-32, so every replica sets the same bit for a path.

Time: every decision uses the caller's ``now``, never the Redis server's clock,
so the arithmetic is that of `MemoryStore` and tests can use synthetic times.
Expiry times are stored as values and compared with ``now`` in the scripts;
Redis's own key expiry (always set, rounded up, plus a margin) only collects
garbage. Replicas sharing a store should therefore keep their clocks in step
(NTP): a replica whose clock runs behind sees buckets refill later and replay
entries last longer, one whose clock runs ahead the reverse.

Failure: a refused connection, no answer within ``timeout`` seconds or any Redis
error raises `StoreUnavailable`, chained to the cause. ``timeout`` bounds a whole
call: waiting for a free pooled connection, connecting and every reply (a frozen
server still accepts connections, so only the read timeout notices it). Nothing is
retried. A call that gets no answer while no other call got one either finds the
server down, and the store stops asking it for ``retry_interval`` seconds: calls fail
at once, so the gate applies its documented failure mode at once rather than every
store call of every request waiting out its own timeout against a frozen server. Then
one call at a time tries the server again, and the first that gets an answer ends the
pause. A connection that failed is closed rather than reused, so once the server is
back the next call connects afresh; scripts lost with a restarted server are loaded
again on its NOSCRIPT reply.

Connections: one bounded pool per store (``max_connections``). A call finding every
connection busy waits for one (within its ``timeout``) rather than failing: a burst
of requests must not make a healthy server look down.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gatekeeper.core.behaviour import BehaviourConfig, Signals, Window, note_refusal, record
from gatekeeper.core.ratelimit import LimitResult
from gatekeeper.errors import StoreUnavailable

# Added to every Redis expiry: Redis's clock and the callers' clocks are never quite
# in step, and a key must not vanish before its callers consider it expired.
_MARGIN_MS = 1000
# A bucket that never refills (rate 0, which no policy gives) would need an infinite
# expiry, which Redis cannot store: it, and any bucket slower to refill than a
# century, is kept for a century. Real limits refill long before.
_MAX_BUCKET_TTL_MS = 100 * 365 * 86_400_000
# The shortest a behaviour window is kept after its last use, as in `WindowTable`:
# the longest default memory a window needs is BehaviourConfig.robots_horizon.
_IDLE_EXPIRY = 3600.0

# Lua turns numbers it returns into integers, so fractions travel as text; "%.17g"
# round-trips a double exactly. `updated` is the latest time any caller sent.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens
local updated = ARGV[3]
if state[1] then
  -- Replicas' requests arrive a little out of order: the bucket's time never goes
  -- back, or the same interval would be refilled twice.
  if tonumber(state[2]) > now then
    updated = state[2]
  end
  local elapsed = math.max(0, now - tonumber(state[2]))
  tokens = math.min(burst, tonumber(state[1]) + elapsed * rate)
else
  tokens = burst
end
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
local text = string.format('%.17g', tokens)
redis.call('HSET', KEYS[1], 'tokens', text, 'updated', updated)
local ttl = tonumber(ARGV[5])
if rate > 0 then
  ttl = math.min(ttl, math.ceil((burst - tokens) / rate * 1000))
end
redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl + tonumber(ARGV[4])))
return {allowed, text}
"""

_FIRST_SEEN = """
local known = redis.call('GET', KEYS[1])
if known and tonumber(known) > tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

_INCR = """
local expiry = redis.call('HGET', KEYS[1], 'expiry')
if not expiry or tonumber(expiry) <= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'expiry', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return redis.call('HINCRBY', KEYS[1], 'count', ARGV[1])
"""

# A later revocation of one token never shortens an earlier one.
_REVOKE = """
local known = redis.call('GET', KEYS[1])
if known and tonumber(known) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Window slots in storage order. The list starts with a format number; a stored
# window of another format or shape is treated as absent (a fresh client), which
# costs no more than an evicted window does.
_FORMAT = 1
_FIELDS: tuple[str, ...] = Window.__slots__
_FLOAT_FIELDS = frozenset({"last_refused_at", "last_seen", "robots_at"})
_STR_FIELDS = frozenset({"last_refused_crawler"})


def encode_window(window: Window) -> str:
    """`window` as compact JSON; -inf (never) is written as -Infinity, which `json` reads."""
    return json.dumps([_FORMAT, *[getattr(window, name) for name in _FIELDS]],
                      separators=(",", ":"))


def decode_window(raw: bytes | str | None) -> Window | None:
    """The window `encode_window` wrote; None when absent or not understood."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, list) or len(data) != len(_FIELDS) + 1 or data[0] != _FORMAT:
        return None
    window = Window.__new__(Window)
    for name, value in zip(_FIELDS, data[1:], strict=True):
        if name in _FLOAT_FIELDS:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif name in _STR_FIELDS:
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok:
            return None
        setattr(window, name, value)
    return window


def _expiry_ms(seconds: float) -> int:
    """A Redis expiry in whole milliseconds for something that lives `seconds`."""
    return max(1, math.ceil(seconds * 1000) + _MARGIN_MS)


class _Pause:
    """When the store stops asking a server that failed, and when it asks again.

    Closed (the normal state): every call goes to the server. A call that fails while
    no call got an answer since it started finds the server down, and opens the pause:
    for `interval` seconds every call is refused at once. A call that fails while
    others were answered meanwhile failed alone (a lost connection, an event loop too
    busy to read the reply in time): the server is up, and nothing is paused. Once the
    interval has passed, one call at a time is let through as a probe; an answer
    closes the pause, a failure opens it for another interval.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._since: float | None = None  # when the server was found down; None: closed
        self._cause: BaseException | None = None
        self._reason = ""
        self._probing = False
        self._answered_at = -math.inf  # when a call last got an answer

    def now(self) -> float:
        return self._clock()

    def refusal(self) -> tuple[str, BaseException | None] | None:
        """None when a call may go to the server; else why not, and the failure's cause."""
        if self._since is None:
            return None
        now = self._clock()
        left = self._since + self.interval - now
        if left <= 0 and not self._probing:
            return None
        retry = f"in {left:.2f} s" if left > 0 else "now, by another call"
        return (f"the server failed {now - self._since:.2f} s ago ({self._reason}); "
                f"it is tried again {retry}"), self._cause

    def start(self) -> bool:
        """Note a call going to the server; True when it is the probe of an open pause."""
        if self._since is None:
            return False
        self._probing = True
        return True

    def answered(self, probe: bool) -> None:
        self._answered_at = self._clock()
        if probe:
            self._close()

    def failed(self, cause: BaseException, reason: str, started: float, probe: bool) -> None:
        if self._answered_at >= started:
            # The server answered another call while this one waited: it is up.
            if probe:
                self._close()
            return
        if self.interval > 0 and (probe or self._since is None):
            self._since, self._cause, self._reason = self._clock(), cause, reason
            self._probing = False

    def abandoned(self, probe: bool) -> None:
        """The call was cancelled before an outcome: let the next call probe instead."""
        if probe:
            self._probing = False

    def _close(self) -> None:
        self._since, self._cause, self._probing = None, None, False


class RedisStore:
    """The `Store` protocol over Redis, shared by every replica pointed at one server.

    Construction does no I/O; the client connects on first use. `timeout` bounds a
    whole call (waiting for one of the `max_connections` pooled connections,
    connecting, every reply). After a call finds the server down, calls fail at once
    for `retry_interval` seconds (0: never; every call tries the server). A `client`
    passed in is used as it is (its pool, timeouts and retries are the caller's) and
    is not closed by `close`.

    Behaviour windows are updated by read, modify, write in two round trips: two
    replicas updating one client's window at the same moment can lose one
    request's count (see the module docstring for why that is accepted).
    """

    def __init__(self, url: str, *, prefix: str = "gk:", timeout: float = 0.25,
                 max_connections: int = 50, retry_interval: float = 1.0,
                 client: redis.asyncio.Redis | None = None) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self._prefix = prefix
        self._timeout = timeout
        self._pause = _Pause(retry_interval)
        self._owns_client = client is None
        if client is None:
            # Blocking: the default pool raises at once when every connection is busy,
            # which would make a healthy server under load look down; this one waits,
            # at most `timeout`, which `_guard` bounds as a whole anyway.
            # redis-py retries 10 times with backoff by default; that would turn one
            # stalled server into seconds per request. One attempt, then the failure mode.
            # RESP2: under RESP3 redis-py listens for server maintenance notices and so
            # skips its check that a pooled connection is still open, and the first call
            # after a server restart would fail on the dead connection.
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=timeout,
                socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0), protocol=2)
            client = redis.asyncio.Redis.from_pool(pool)
        self._client = client
        # Error messages name the server, never the URL: it may carry a password.
        parts = urlsplit(url)
        self._where = (parts.path if parts.scheme == "unix"
                       else f"{parts.hostname or 'localhost'}:{parts.port or 6379}")
        self._take = client.register_script(_TAKE)
        self._first_seen = client.register_script(_FIRST_SEEN)
        self._incr = client.register_script(_INCR)
        self._revoke = client.register_script(_REVOKE)
        self._idle = _IDLE_EXPIRY

    @property
    def client(self) -> redis.asyncio.Redis:
        """The client, for parts that keep their own data in the same server (the
        ledger's copy, `gatekeeper.ledger.mirror`)."""
        return self._client

    @asynccontextmanager
    async def _guard(self, what: str) -> AsyncIterator[None]:
        refusal = self._pause.refusal()
        if refusal is not None:
            reason, cause = refusal
            raise StoreUnavailable(
                f"redis store at {self._where}: {what} not tried: {reason}") from cause
        probe = self._pause.start()
        started = self._pause.now()
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            # Down, or too slow to count as up: refused, connection lost, or no answer in
            # time (OSError includes asyncio.timeout's TimeoutError).
            timed_out = isinstance(exc, TimeoutError | RedisTimeoutError)
            reason = (f"no answer within {self._timeout:g} s" if timed_out
                      else str(exc) or type(exc).__name__)
            self._pause.failed(exc, reason, started, probe)
            if timed_out:
                raise StoreUnavailable(
                    f"redis store at {self._where}: {what}: {reason}") from exc
            raise StoreUnavailable(
                f"redis store at {self._where}: {what} failed: {reason}") from exc
        except RedisError as exc:
            # An error reply is an answer: the server is up, so nothing is paused. Any
            # other error (one the client raised itself) says nothing about the server.
            if isinstance(exc, ResponseError):
                self._pause.answered(probe)
            else:
                self._pause.abandoned(probe)
            raise StoreUnavailable(
                f"redis store at {self._where}: {what} failed: {exc}") from exc
        except BaseException:
            # Cancelled (or the caller's own error) before an outcome.
            self._pause.abandoned(probe)
            raise
        else:
            self._pause.answered(probe)

    async def take(self, key: str, rate: float, burst: int, now: float) -> LimitResult:
        async with self._guard("take"):
            reply: Any = await self._take(
                keys=[f"{self._prefix}rl:{key}"],
                args=[float(rate), int(burst), float(now), _MARGIN_MS, _MAX_BUCKET_TTL_MS])
        allowed, tokens = bool(reply[0]), float(reply[1])
        if allowed:
            return LimitResult(True, tokens, 0.0)
        wait = (1.0 - tokens) / rate if rate > 0 else float("inf")
        return LimitResult(False, tokens, wait)

    async def first_seen(self, key: str, ttl: float, now: float) -> bool:
        async with self._guard("first_seen"):
            reply: Any = await self._first_seen(
                keys=[f"{self._prefix}seen:{key}"],
                args=[float(now), float(now + ttl), _expiry_ms(ttl)])
        return bool(reply)

    async def incr(self, key: str, amount: int, ttl: float, now: float) -> int:
        async with self._guard("incr"):
            reply: Any = await self._incr(
                keys=[f"{self._prefix}ctr:{key}"],
                args=[int(amount), float(now), float(now + ttl), _expiry_ms(ttl)])
        return int(reply)

    async def observe_client(
        self, keys: tuple[str, str], signals: Signals, now: float, cfg: BehaviourConfig
    ) -> tuple[Window, Window]:
        # Kept as long as any part of the window still matters to a score; remembered
        # for note_refusal, which is given no config.
        self._idle = max(_IDLE_EXPIRY, cfg.robots_horizon, 2 * cfg.window, cfg.switch_window)
        names = [f"{self._prefix}win:{key}" for key in keys]
        async with self._guard("observe_client"):
            raw: list[bytes | str | None] = await self._client.mget(names)
            first = record(decode_window(raw[0]), signals, now, cfg)
            second = record(decode_window(raw[1]), signals, now, cfg)
            await self._write_windows(names, (first, second))
        return first, second

    async def note_refusal(self, keys: tuple[str, str], crawler: str, now: float) -> None:
        names = [f"{self._prefix}win:{key}" for key in keys]
        async with self._guard("note_refusal"):
            raw: list[bytes | str | None] = await self._client.mget(names)
            windows = []
            for stored in raw:
                window = decode_window(stored)
                if window is None:
                    window = Window(-1, now)
                note_refusal(window, crawler, now)
                windows.append(window)
            await self._write_windows(names, windows)

    async def _write_windows(self, names: list[str], windows: Sequence[Window]) -> None:
        px = _expiry_ms(self._idle)
        async with self._client.pipeline(transaction=False) as pipe:
            for name, window in zip(names, windows, strict=True):
                pipe.set(name, encode_window(window), px=px)
            await pipe.execute()

    async def revoke(self, token_id: str, until: float, now: float) -> None:
        async with self._guard("revoke"):
            await self._revoke(keys=[f"{self._prefix}rev:{token_id}"],
                               args=[float(until), _expiry_ms(max(until - now, 0.0))])

    async def revoked(self, token_id: str, now: float) -> bool:
        async with self._guard("revoked"):
            raw: bytes | str | None = await self._client.get(f"{self._prefix}rev:{token_id}")
        return raw is not None and float(raw) > now

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()
