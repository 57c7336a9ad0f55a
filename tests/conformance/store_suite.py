"""One behaviour table every `Store` implementation must pass.

Each backend's test module builds its store in a fixture named `store` and
imports these tests; see tests/unit/store/test_memory.py.
"""

from __future__ import annotations

from gatekeeper.core.behaviour import BehaviourConfig, Signals, client_keys, score_client
from gatekeeper.core.ratelimit import take
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


async def test_bucket_results_match_the_core_arithmetic(store: Store) -> None:
    # Fractional rates and uneven gaps: a backend must give what `take` gives, to the bit.
    bucket = None
    for now in (6000.0, 6000.0, 6000.1, 6000.25, 6000.25, 6003.7, 6003.7, 6003.7, 5999.0):
        bucket, expected = take(bucket, 0.7, 2, now)
        assert await store.take("conf|core", rate=0.7, burst=2, now=now) == expected


async def test_observe_client_counts_each_request_in_both_windows(store: Store) -> None:
    cfg = BehaviourConfig()
    keys = client_keys("192.0.2.10")
    page, asset = Signals("/a", is_html_like=True), Signals("/s.css", is_asset=True)
    await store.observe_client(keys, page, 7000.0, cfg)
    await store.observe_client(keys, Signals("/robots.txt", is_robots_txt=True), 7001.0, cfg)
    by_ip, by_net = await store.observe_client(keys, asset, 7002.0, cfg)
    for window in (by_ip, by_net):
        assert (window.requests, window.pages, window.assets) == (3, 1, 1)
        assert window.robots_at == 7001.0
        assert window.last_seen == 7002.0
        assert window.last_refused_at == float("-inf")
    # Another address of the same /24 shares the network window only.
    other_ip, other_net = await store.observe_client(
        client_keys("192.0.2.11"), page, 7003.0, cfg)
    assert other_ip.requests == 1
    assert other_net.requests == 4


async def test_windows_carry_the_previous_fixed_window(store: Store) -> None:
    cfg = BehaviourConfig(window=60.0)
    keys = client_keys("198.51.100.7")
    sig = Signals("/p", is_html_like=True, has_accept_language=False)
    await store.observe_client(keys, sig, 7200.0, cfg)
    await store.observe_client(keys, sig, 7210.0, cfg)
    by_ip, _ = await store.observe_client(keys, sig, 7265.0, cfg)
    assert (by_ip.requests, by_ip.p_requests) == (1, 2)
    assert (by_ip.no_lang, by_ip.p_no_lang) == (1, 2)
    assert by_ip.paths != 0
    assert by_ip.p_paths != 0


async def test_note_refusal_is_seen_by_the_next_observation(store: Store) -> None:
    cfg = BehaviourConfig()
    keys = client_keys("203.0.113.5")
    await store.observe_client(keys, Signals("/a", claimed_crawler="GPTBot"), 8000.0, cfg)
    await store.note_refusal(keys, "GPTBot", 8000.5)
    by_ip, by_net = await store.observe_client(keys, Signals("/a", is_html_like=True),
                                               8010.0, cfg)
    for window in (by_ip, by_net):
        assert window.last_refused_crawler == "GPTBot"
        assert window.last_refused_at == 8000.5
        assert window.requests == 2
    assert score_client(by_ip, by_net, Signals("/a"), 8010.0, cfg).reasons == (
        "ua-switch-after-refusal",)


async def test_note_refusal_for_an_unseen_client_starts_its_window(store: Store) -> None:
    cfg = BehaviourConfig()
    keys = client_keys("2001:db8::1")
    await store.note_refusal(keys, "ClaudeBot", 9000.0)
    by_ip, by_net = await store.observe_client(keys, Signals("/x"), 9001.0, cfg)
    assert (by_ip.requests, by_net.requests) == (1, 1)
    assert by_ip.last_refused_crawler == by_net.last_refused_crawler == "ClaudeBot"


async def test_a_revocation_is_seen_until_it_lapses(store: Store) -> None:
    assert not await store.revoked("conf|jti-1", now=6000.0)
    await store.revoke("conf|jti-1", until=6100.0, now=6000.0)
    assert await store.revoked("conf|jti-1", now=6050.0)
    assert not await store.revoked("conf|jti-2", now=6050.0)
    # A later, shorter revocation of the same token does not shorten it.
    await store.revoke("conf|jti-1", until=6060.0, now=6055.0)
    assert await store.revoked("conf|jti-1", now=6099.0)
    assert not await store.revoked("conf|jti-1", now=6100.0)


async def test_a_slow_bucket_refills_at_its_rate_however_long_it_waits(store: Store) -> None:
    # rate 1/h, burst 48: two days to refill. After a day's idle it holds 24 tokens,
    # not a fresh 48: a backend must not forget a bucket before it is full again.
    rate, day = 1 / 3600, 86_400.0
    for _ in range(48):
        assert (await store.take("conf|slow", rate=rate, burst=48, now=10_000.0)).allowed
    later = 10_000.0 + day + 2
    allowed = 0
    while (await store.take("conf|slow", rate=rate, burst=48, now=later)).allowed:
        allowed += 1
    assert allowed == 24
