"""In-process store: the embedded default for a single process."""

from __future__ import annotations

from collections import OrderedDict

from gatekeeper.core.behaviour import BehaviourConfig, Signals, Window
from gatekeeper.core.ratelimit import Bucket, LimitResult, take
from gatekeeper.store.windows import WindowTable


class MemoryStore:
    """Token buckets in a bounded LRU map.

    The bound keeps memory flat when keys are client IPs from a large botnet:
    the least recently used bucket is forgotten, which at worst hands that
    client a fresh (full) bucket.
    """

    def __init__(self, max_buckets: int = 100_000, max_seen: int = 1_000_000,
                 max_clients: int = 100_000) -> None:
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()
        self._max = max_buckets
        # key -> expiry, in insertion order; a replay cache that forgets a key early
        # would accept a replay, so entries leave only when expired or at the bound.
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max_seen = max_seen
        self._windows = WindowTable(max_clients)
        self._counters: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key -> (n, expiry)
        self._max_counters = max_buckets
        self._revoked: dict[str, float] = {}  # token id -> until

    async def take(self, key: str, rate: float, burst: int, now: float) -> LimitResult:
        return self.take_now(key, rate, burst, now)

    def take_now(self, key: str, rate: float, burst: int, now: float) -> LimitResult:
        """The same as `take`, callable without awaiting (for fallbacks)."""
        bucket, result = take(self._buckets.get(key), rate, burst, now)
        self._buckets[key] = bucket
        self._buckets.move_to_end(key)
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return result

    async def first_seen(self, key: str, ttl: float, now: float) -> bool:
        seen = self._seen
        # Expire from the old end; with one ttl per use the oldest entries expire first.
        while seen:
            oldest, expiry = next(iter(seen.items()))
            if expiry > now:
                break
            del seen[oldest]
        known = seen.get(key)
        if known is not None and known > now:
            return False
        seen[key] = now + ttl
        seen.move_to_end(key)
        if len(seen) > self._max_seen:
            seen.popitem(last=False)
        return True

    async def incr(self, key: str, amount: int, ttl: float, now: float) -> int:
        return self.incr_now(key, amount, ttl, now)

    def incr_now(self, key: str, amount: int, ttl: float, now: float) -> int:
        counters = self._counters
        known = counters.get(key)
        total, expiry = (0, now + ttl) if known is None or known[1] <= now else known
        total += amount
        counters[key] = (total, expiry)
        counters.move_to_end(key)
        if len(counters) > self._max_counters:
            counters.popitem(last=False)
        return total

    async def observe_client(
        self, keys: tuple[str, str], signals: Signals, now: float, cfg: BehaviourConfig
    ) -> tuple[Window, Window]:
        windows = self._windows
        return (windows.observe(keys[0], signals, now, cfg),
                windows.observe(keys[1], signals, now, cfg))

    async def note_refusal(self, keys: tuple[str, str], crawler: str, now: float) -> None:
        for key in keys:
            self._windows.note_refusal(key, crawler, now)

    async def revoke(self, token_id: str, until: float, now: float) -> None:
        # Kept apart from the replay cache: a revocation must never be evicted early.
        self._revoked[token_id] = max(until, self._revoked.get(token_id, until))
        if len(self._revoked) > self._max_seen:
            for key in [k for k, expiry in self._revoked.items() if expiry <= now]:
                del self._revoked[key]

    async def revoked(self, token_id: str, now: float) -> bool:
        expiry = self._revoked.get(token_id)
        return expiry is not None and expiry > now

    async def close(self) -> None:
        self._revoked.clear()
        self._buckets.clear()
        self._seen.clear()
        self._counters.clear()

    def __len__(self) -> int:
        return len(self._buckets)
