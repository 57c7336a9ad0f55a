"""Forward-confirmed reverse DNS against a real DNS server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from gatekeeper.verify.rdns import DnsOutcome, ReverseDnsError, ReverseDnsVerifier
from tests.support.dns_server import DnsTestServer, reverse_name

GOOGLEBOT_IP = "66.249.66.1"
GOOGLEBOT_NAME = "crawl-66-249-66-1.googlebot.com"
GOOGLEBOT_V6 = "2001:4860:4801:10::1"
GOOGLEBOT_V6_NAME = "crawl-2001-4860-4801-10--1.googlebot.com"
LIAR_IP = "203.0.113.7"  # its PTR claims googlebot.com; googlebot.com does not agree
MOVED_IP = "203.0.113.8"  # its PTR name's A record names another address
NO_PTR_IP = "203.0.113.9"
GCP_IP = "34.1.2.3"
EVIL_IP = "198.51.100.1"
BROKEN_IP = "198.51.100.2"
GOOGLE = ["googlebot.com", "google.com"]

ZONE = {
    reverse_name(GOOGLEBOT_IP): [("PTR", GOOGLEBOT_NAME, 300)],
    GOOGLEBOT_NAME: [("A", GOOGLEBOT_IP, 300)],
    reverse_name(GOOGLEBOT_V6): [("PTR", GOOGLEBOT_V6_NAME, 300)],
    GOOGLEBOT_V6_NAME: [("AAAA", GOOGLEBOT_V6, 300)],
    reverse_name(LIAR_IP): [("PTR", "crawl-66-249-66-2.googlebot.com", 300)],
    reverse_name(MOVED_IP): [("PTR", "crawl-66-249-66-3.googlebot.com", 300)],
    "crawl-66-249-66-3.googlebot.com": [("A", "66.249.66.3", 300)],
    reverse_name(GCP_IP): [("PTR", "3.2.1.34.bc.googleusercontent.com", 300)],
    "3.2.1.34.bc.googleusercontent.com": [("A", GCP_IP, 300)],
    # The attacker owns evilgooglebot.com, so its forward record agrees with the PTR.
    reverse_name(EVIL_IP): [("PTR", "crawl.evilgooglebot.com", 300)],
    "crawl.evilgooglebot.com": [("A", EVIL_IP, 300)],
}


class Clock:
    """A clock the test moves by hand, for TTL expiry."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def server() -> Iterator[DnsTestServer]:
    with DnsTestServer(ZONE) as dns_server:
        yield dns_server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def verifier(server: DnsTestServer, clock: Clock) -> AsyncIterator[ReverseDnsVerifier]:
    checker = ReverseDnsVerifier([server.address], timeout=2.0, clock=clock)
    yield checker
    await checker.close()


async def wait_for_cache(verifier: ReverseDnsVerifier, ip: str,
                         domains: list[str]) -> None:
    for _ in range(500):
        if verifier.peek(ip, domains) is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the background lookup never reached the cache")


async def test_genuine_googlebot_is_confirmed(verifier: ReverseDnsVerifier) -> None:
    result = await verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=None)
    assert result.outcome is DnsOutcome.CONFIRMED
    assert result.hostname == GOOGLEBOT_NAME
    assert not result.cached
    assert GOOGLEBOT_IP in result.reason


async def test_lying_ptr_into_googlebot_without_forward_record_is_refuted(
        verifier: ReverseDnsVerifier) -> None:
    result = await verifier.verify(LIAR_IP, GOOGLE, budget=None)
    assert result.outcome is DnsOutcome.REFUTED
    assert result.hostname == "crawl-66-249-66-2.googlebot.com"
    assert result.reason == (
        f"PTR crawl-66-249-66-2.googlebot.com has no A record for {LIAR_IP}")


async def test_ptr_whose_forward_record_names_another_address_is_refuted(
        verifier: ReverseDnsVerifier) -> None:
    result = await verifier.verify(MOVED_IP, GOOGLE, budget=None)
    assert result.outcome is DnsOutcome.REFUTED
    assert result.hostname == "crawl-66-249-66-3.googlebot.com"


async def test_address_without_ptr_is_refuted(verifier: ReverseDnsVerifier) -> None:
    result = await verifier.verify(NO_PTR_IP, GOOGLE, budget=None)
    assert result.outcome is DnsOutcome.REFUTED
    assert result.reason == f"no PTR record for {NO_PTR_IP}"


async def test_empty_ptr_answer_is_refuted(server: DnsTestServer,
                                           verifier: ReverseDnsVerifier) -> None:
    server.set_records(reverse_name(NO_PTR_IP), [])
    result = await verifier.verify(NO_PTR_IP, GOOGLE, budget=None)
    assert result.outcome is DnsOutcome.REFUTED


async def test_googleusercontent_is_not_under_google_com(
        server: DnsTestServer, verifier: ReverseDnsVerifier) -> None:
    result = await verifier.verify(GCP_IP, ["google.com"], budget=None)
    assert result.outcome is DnsOutcome.REFUTED
    assert result.hostname == "3.2.1.34.bc.googleusercontent.com"
    # A name outside the domains is never resolved forward.
    assert server.query_count("3.2.1.34.bc.googleusercontent.com") == 0


async def test_evilgooglebot_is_not_under_googlebot_com(
        verifier: ReverseDnsVerifier) -> None:
    result = await verifier.verify(EVIL_IP, ["googlebot.com"], budget=None)
    assert result.outcome is DnsOutcome.REFUTED
    assert result.hostname == "crawl.evilgooglebot.com"


async def test_genuine_ipv6_googlebot_is_confirmed(verifier: ReverseDnsVerifier) -> None:
    result = await verifier.verify(GOOGLEBOT_V6, GOOGLE, budget=None)
    assert result.outcome is DnsOutcome.CONFIRMED
    assert result.hostname == GOOGLEBOT_V6_NAME


async def test_ipv6_forward_check_asks_for_aaaa_records(
        server: DnsTestServer, verifier: ReverseDnsVerifier) -> None:
    server.set_records(GOOGLEBOT_V6_NAME, [("A", GOOGLEBOT_IP, 300)])
    result = await verifier.verify(GOOGLEBOT_V6, GOOGLE, budget=None)
    assert result.outcome is DnsOutcome.REFUTED
    assert "no AAAA record" in result.reason


async def test_ipv4_mapped_ipv6_client_is_verified_as_its_ipv4_address(
        server: DnsTestServer, verifier: ReverseDnsVerifier) -> None:
    mapped = await verifier.verify("::ffff:" + GOOGLEBOT_IP, GOOGLE, budget=None)
    assert mapped.outcome is DnsOutcome.CONFIRMED
    assert server.queries == [(reverse_name(GOOGLEBOT_IP), "PTR"), (GOOGLEBOT_NAME, "A")]
    plain = await verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=None)
    assert plain.cached


async def test_names_and_domains_match_without_regard_to_case_or_final_dot(
        server: DnsTestServer, verifier: ReverseDnsVerifier) -> None:
    server.set_records(reverse_name(GOOGLEBOT_IP), [("PTR", GOOGLEBOT_NAME.upper(), 300)])
    result = await verifier.verify(GOOGLEBOT_IP, ["GoogleBot.COM."], budget=None)
    assert result.outcome is DnsOutcome.CONFIRMED


async def test_any_ptr_name_under_the_domains_can_confirm(
        server: DnsTestServer, verifier: ReverseDnsVerifier) -> None:
    server.set_records(reverse_name(GOOGLEBOT_IP), [("PTR", "host.example.net", 300),
                                                    ("PTR", GOOGLEBOT_NAME, 300)])
    result = await verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=None)
    assert result.outcome is DnsOutcome.CONFIRMED
    assert result.hostname == GOOGLEBOT_NAME


async def test_servfail_on_ptr_is_unknown_not_refuted(
        server: DnsTestServer, verifier: ReverseDnsVerifier) -> None:
    server.fail(reverse_name(BROKEN_IP))
    result = await verifier.verify(BROKEN_IP, GOOGLE, budget=None)
    assert result.outcome is DnsOutcome.UNKNOWN
    assert "failed" in result.reason


async def test_servfail_on_forward_lookup_is_unknown(
        server: DnsTestServer, verifier: ReverseDnsVerifier) -> None:
    server.fail(GOOGLEBOT_NAME)
    result = await verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=None)
    assert result.outcome is DnsOutcome.UNKNOWN
    assert result.hostname == GOOGLEBOT_NAME


async def test_server_that_does_not_answer_in_time_is_unknown(server: DnsTestServer) -> None:
    server.delay(reverse_name(GOOGLEBOT_IP), 1.0)
    checker = ReverseDnsVerifier([server.address], timeout=0.2)
    try:
        result = await checker.verify(GOOGLEBOT_IP, GOOGLE, budget=None)
    finally:
        await checker.close()
    assert result.outcome is DnsOutcome.UNKNOWN
    assert "timed out" in result.reason


async def test_a_later_server_answers_when_the_first_fails() -> None:
    failing: dict[str, list[tuple[str, str, int]]] = {name: [] for name in ZONE}
    with DnsTestServer(failing, servfail=list(ZONE)) as first, DnsTestServer(ZONE) as second:
        checker = ReverseDnsVerifier([first.address, second.address])
        try:
            result = await checker.verify(GOOGLEBOT_IP, GOOGLE, budget=None)
        finally:
            await checker.close()
        assert result.outcome is DnsOutcome.CONFIRMED
        assert first.query_count() >= 1


async def test_a_later_server_answers_when_the_first_is_silent() -> None:
    silent = dict.fromkeys(ZONE, 5.0)
    with DnsTestServer(ZONE, delays=silent) as first, DnsTestServer(ZONE) as second:
        checker = ReverseDnsVerifier([first.address, second.address], timeout=1.0)
        try:
            result = await checker.verify(GOOGLEBOT_IP, GOOGLE, budget=None)
        finally:
            await checker.close()
        assert result.outcome is DnsOutcome.CONFIRMED
        assert second.query_count() == 2


async def test_lookup_over_budget_is_pending_then_served_from_cache(
        server: DnsTestServer, verifier: ReverseDnsVerifier) -> None:
    server.delay(reverse_name(GOOGLEBOT_IP), 0.3)
    first = await verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=0.05)
    assert first.outcome is DnsOutcome.PENDING
    assert first.elapsed < 0.25
    await wait_for_cache(verifier, GOOGLEBOT_IP, GOOGLE)
    peeked = verifier.peek(GOOGLEBOT_IP, GOOGLE)
    assert peeked is not None
    assert peeked.outcome is DnsOutcome.CONFIRMED
    assert server.query_count() == 2
    again = await verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=0.05)
    assert again.outcome is DnsOutcome.CONFIRMED
    assert again.cached
    assert server.query_count() == 2


async def test_zero_budget_never_waits_even_for_a_fast_server(
        verifier: ReverseDnsVerifier) -> None:
    result = await verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=0)
    assert result.outcome is DnsOutcome.PENDING
    await wait_for_cache(verifier, GOOGLEBOT_IP, GOOGLE)


async def test_peek_does_no_io_and_knows_nothing_before_a_lookup(
        server: DnsTestServer, verifier: ReverseDnsVerifier) -> None:
    assert verifier.peek(GOOGLEBOT_IP, GOOGLE) is None
    assert server.query_count() == 0


async def test_second_verify_within_ttl_is_served_from_cache(
        server: DnsTestServer, verifier: ReverseDnsVerifier, clock: Clock) -> None:
    await verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=None)
    clock.advance(299)
    result = await verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=None)
    assert result.outcome is DnsOutcome.CONFIRMED
    assert result.cached
    assert server.query_count() == 2
    assert verifier.stats.cache_hits == 1


async def test_negative_results_are_cached(
        server: DnsTestServer, verifier: ReverseDnsVerifier, clock: Clock) -> None:
    await verifier.verify(NO_PTR_IP, GOOGLE, budget=None)
    await verifier.verify(LIAR_IP, GOOGLE, budget=None)
    clock.advance(299)
    no_ptr = await verifier.verify(NO_PTR_IP, GOOGLE, budget=None)
    liar = await verifier.verify(LIAR_IP, GOOGLE, budget=None)
    assert (no_ptr.outcome, no_ptr.cached) == (DnsOutcome.REFUTED, True)
    assert (liar.outcome, liar.cached) == (DnsOutcome.REFUTED, True)
    assert server.query_count() == 3  # PTR, PTR and the liar's A


async def test_unknown_results_are_cached_only_briefly(
        server: DnsTestServer, verifier: ReverseDnsVerifier, clock: Clock) -> None:
    server.fail(reverse_name(GOOGLEBOT_IP))
    await verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=None)
    server.fail(reverse_name(GOOGLEBOT_IP), failing=False)
    clock.advance(5)
    during_outage = await verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=None)
    assert (during_outage.outcome, during_outage.cached) == (DnsOutcome.UNKNOWN, True)
    clock.advance(6)
    after = await verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=None)
    assert (after.outcome, after.cached) == (DnsOutcome.CONFIRMED, False)


async def test_concurrent_verifies_of_one_address_send_one_set_of_queries(
        server: DnsTestServer, verifier: ReverseDnsVerifier) -> None:
    server.delay(reverse_name(GOOGLEBOT_IP), 0.1)
    results = await asyncio.gather(
        *(verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=None) for _ in range(20)))
    assert {r.outcome for r in results} == {DnsOutcome.CONFIRMED}
    assert server.query_count() == 2
    assert verifier.stats.lookups == 1


async def test_one_lookup_answers_for_other_domain_lists(
        server: DnsTestServer, verifier: ReverseDnsVerifier) -> None:
    await verifier.verify(GOOGLEBOT_IP, ["googlebot.com"], budget=None)
    both = await verifier.verify(GOOGLEBOT_IP, ["google.com", "googlebot.com"], budget=None)
    other = await verifier.verify(GOOGLEBOT_IP, ["google.com"], budget=None)
    assert (both.outcome, both.cached) == (DnsOutcome.CONFIRMED, True)
    assert (other.outcome, other.cached) == (DnsOutcome.REFUTED, True)
    assert server.query_count() == 2


async def test_a_lookup_for_other_domains_adds_only_the_missing_forward_check(
        server: DnsTestServer, verifier: ReverseDnsVerifier) -> None:
    server.set_records(reverse_name(GOOGLEBOT_IP), [("PTR", "host.example.net", 300),
                                                    ("PTR", GOOGLEBOT_NAME, 300)])
    server.set_records("host.example.net", [("A", GOOGLEBOT_IP, 300)])
    first = await verifier.verify(GOOGLEBOT_IP, ["googlebot.com"], budget=None)
    second = await verifier.verify(GOOGLEBOT_IP, ["example.net"], budget=None)
    assert first.outcome is DnsOutcome.CONFIRMED
    assert (second.outcome, second.hostname) == (DnsOutcome.CONFIRMED, "host.example.net")
    assert server.query_count(reverse_name(GOOGLEBOT_IP)) == 1
    assert server.query_count() == 3


async def test_cache_holds_at_most_max_entries(server: DnsTestServer) -> None:
    checker = ReverseDnsVerifier([server.address], max_entries=5)
    try:
        for n in range(20):
            await checker.verify(f"192.0.2.{n}", GOOGLE, budget=None)
        assert len(checker) == 5
        assert checker.stats.evictions == 15
        oldest = await checker.verify("192.0.2.0", GOOGLE, budget=None)
        newest = await checker.verify("192.0.2.19", GOOGLE, budget=None)
    finally:
        await checker.close()
    assert not oldest.cached
    assert newest.cached
    assert server.query_count() == 21


async def test_expired_ttl_makes_a_new_query(
        server: DnsTestServer, verifier: ReverseDnsVerifier, clock: Clock) -> None:
    server.set_records(reverse_name(GOOGLEBOT_IP), [("PTR", GOOGLEBOT_NAME, 60)])
    server.set_records(GOOGLEBOT_NAME, [("A", GOOGLEBOT_IP, 60)])
    await verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=None)
    server.remove(GOOGLEBOT_NAME)
    clock.advance(59)
    assert (await verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=None)).cached
    clock.advance(2)
    result = await verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=None)
    assert (result.outcome, result.cached) == (DnsOutcome.REFUTED, False)
    assert server.query_count() == 4


async def test_short_ttls_are_raised_to_min_ttl(server: DnsTestServer, clock: Clock) -> None:
    server.set_records(reverse_name(GOOGLEBOT_IP), [("PTR", GOOGLEBOT_NAME, 1)])
    server.set_records(GOOGLEBOT_NAME, [("A", GOOGLEBOT_IP, 1)])
    checker = ReverseDnsVerifier([server.address], min_ttl=30, clock=clock)
    try:
        await checker.verify(GOOGLEBOT_IP, GOOGLE, budget=None)
        clock.advance(29)
        assert (await checker.verify(GOOGLEBOT_IP, GOOGLE, budget=None)).cached
        clock.advance(2)
        assert not (await checker.verify(GOOGLEBOT_IP, GOOGLE, budget=None)).cached
    finally:
        await checker.close()


async def test_too_many_lookups_in_flight_is_unknown_at_once(server: DnsTestServer) -> None:
    server.delay(reverse_name(GOOGLEBOT_IP), 0.3)
    checker = ReverseDnsVerifier([server.address], max_concurrent=1)
    try:
        slow = asyncio.create_task(checker.verify(GOOGLEBOT_IP, GOOGLE, budget=None))
        await asyncio.sleep(0.05)
        refused = await checker.verify(GOOGLEBOT_V6, GOOGLE, budget=None)
        assert refused.outcome is DnsOutcome.UNKNOWN
        assert refused.reason == "too many lookups in flight"
        assert (await slow).outcome is DnsOutcome.CONFIRMED
        assert checker.stats.overloaded == 1
        assert server.query_count(reverse_name(GOOGLEBOT_V6)) == 0
    finally:
        await checker.close()


async def test_close_cancels_background_lookups(server: DnsTestServer) -> None:
    server.delay(reverse_name(GOOGLEBOT_IP), 1.0)
    checker = ReverseDnsVerifier([server.address])
    pending = await checker.verify(GOOGLEBOT_IP, GOOGLE, budget=0.01)
    assert pending.outcome is DnsOutcome.PENDING
    await checker.close()
    await asyncio.sleep(0.05)
    assert checker.peek(GOOGLEBOT_IP, GOOGLE) is None


async def test_caller_waiting_when_the_verifier_closes_gets_unknown(
        server: DnsTestServer) -> None:
    server.delay(reverse_name(GOOGLEBOT_IP), 1.0)
    checker = ReverseDnsVerifier([server.address])
    waiting = asyncio.create_task(checker.verify(GOOGLEBOT_IP, GOOGLE, budget=None))
    await asyncio.sleep(0.05)
    await checker.close()
    result = await waiting
    assert result.outcome is DnsOutcome.UNKNOWN


async def test_stats_count_lookups_hits_and_outcomes(verifier: ReverseDnsVerifier) -> None:
    await verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=None)
    await verifier.verify(GOOGLEBOT_IP, GOOGLE, budget=None)
    await verifier.verify(NO_PTR_IP, GOOGLE, budget=None)
    stats = verifier.stats
    assert (stats.lookups, stats.cache_hits) == (2, 1)
    assert stats.outcomes == {DnsOutcome.CONFIRMED: 2, DnsOutcome.REFUTED: 1,
                              DnsOutcome.UNKNOWN: 0, DnsOutcome.PENDING: 0}


async def test_malformed_address_or_no_domains_is_an_error(
        verifier: ReverseDnsVerifier) -> None:
    with pytest.raises(ReverseDnsError):
        await verifier.verify("not-an-ip", GOOGLE, budget=None)
    with pytest.raises(ReverseDnsError):
        await verifier.verify(GOOGLEBOT_IP, [], budget=None)
