from collections.abc import AsyncIterator

import pytest

from gatekeeper.store.memory import MemoryStore
from tests.conformance.store_suite import (  # noqa: F401  (run the shared table here)
    test_bucket_allows_burst_then_denies,
    test_bucket_refills_over_time,
    test_buckets_are_independent_per_key,
    test_counters_add_up_and_start_again_after_their_ttl,
    test_first_seen_is_true_once_then_false_until_expiry,
)


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore()
    yield s
    await s.close()


async def test_memory_store_forgets_least_recently_used_bucket_at_its_bound() -> None:
    s = MemoryStore(max_buckets=2)
    await s.take("a", 1.0, 1, 0.0)
    await s.take("b", 1.0, 1, 0.0)
    await s.take("a", 1.0, 1, 0.0)  # a is now most recent
    await s.take("c", 1.0, 1, 0.0)
    assert len(s) == 2
    # b was evicted, so it starts again with a full bucket
    assert (await s.take("b", 1.0, 1, 0.0)).allowed
