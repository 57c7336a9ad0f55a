from collections.abc import AsyncIterator

import pytest

import tests.conformance.store_suite as suite
from gatekeeper.store.memory import MemoryStore
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


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore()
    yield s
    await s.close()


def test_every_conformance_case_runs_against_memory() -> None:
    # A case added to the suite but not imported above would silently never run here.
    cases = {name for name in vars(suite) if name.startswith("test_")}
    assert cases <= set(globals()), sorted(cases - set(globals()))


async def test_memory_store_forgets_least_recently_used_bucket_at_its_bound() -> None:
    s = MemoryStore(max_buckets=2)
    await s.take("a", 1.0, 1, 0.0)
    await s.take("b", 1.0, 1, 0.0)
    await s.take("a", 1.0, 1, 0.0)  # a is now most recent
    await s.take("c", 1.0, 1, 0.0)
    assert len(s) == 2
    # b was evicted, so it starts again with a full bucket
    assert (await s.take("b", 1.0, 1, 0.0)).allowed
