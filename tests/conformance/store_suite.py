"""One behaviour table every `Store` implementation must pass.

Each backend's test module builds its store in a fixture named `store` and
imports these tests; see tests/unit/store/test_memory.py.
"""

from __future__ import annotations

from gatekeeper.store.base import Store


async def test_bucket_allows_burst_then_denies(store: Store) -> None:
    results = [await store.take("conf|burst", rate=0.01, burst=3, now=1000.0) for _ in range(5)]
    assert [r.allowed for r in results] == [True, True, True, False, False]
    assert results[-1].retry_after > 0


async def test_bucket_refills_over_time(store: Store) -> None:
    for _ in range(2):
        await store.take("conf|refill", rate=1.0, burst=2, now=2000.0)
    assert not (await store.take("conf|refill", rate=1.0, burst=2, now=2000.0)).allowed
    assert (await store.take("conf|refill", rate=1.0, burst=2, now=2001.0)).allowed


async def test_buckets_are_independent_per_key(store: Store) -> None:
    assert (await store.take("conf|a", rate=0.01, burst=1, now=3000.0)).allowed
    assert not (await store.take("conf|a", rate=0.01, burst=1, now=3000.0)).allowed
    assert (await store.take("conf|b", rate=0.01, burst=1, now=3000.0)).allowed


async def test_first_seen_is_true_once_then_false_until_expiry(store: Store) -> None:
    assert await store.first_seen("conf|nonce-1", ttl=60.0, now=4000.0)
    assert not await store.first_seen("conf|nonce-1", ttl=60.0, now=4010.0)
    assert await store.first_seen("conf|nonce-2", ttl=60.0, now=4010.0)
    # Remembered for its ttl only: afterwards the key is new again.
    assert await store.first_seen("conf|nonce-1", ttl=60.0, now=4061.0)


async def test_counters_add_up_and_start_again_after_their_ttl(store: Store) -> None:
    assert await store.incr("conf|quota", 1, ttl=60.0, now=5000.0) == 1
    assert await store.incr("conf|quota", 5, ttl=60.0, now=5030.0) == 6
    assert await store.incr("conf|other", 2, ttl=60.0, now=5030.0) == 2
    # The window is fixed from the counter's creation, not slid by each increment.
    assert await store.incr("conf|quota", 1, ttl=60.0, now=5061.0) == 1
