"""Identity states decided from published ranges alone (no DNS, no signatures):
the claim is checked against the claimed crawler's own lists, never anyone else's."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.catalog import Classification, Kind
from gatekeeper.core.facts import Identity, RequestFacts
from gatekeeper.verify.identity import IdentityVerifier
from gatekeeper.verify.ranges import RangeRegistry

CATALOG = load_catalog()
RANGES = RangeRegistry.from_prefixes({
    "openai-gptbot": ["20.171.206.0/24", "2001:db8:aaaa::/48"],
    "openai-searchbot": ["40.84.180.0/24"],
    "google-googlebot": ["66.249.64.0/19"],
})


def facts(ip: str) -> RequestFacts:
    return RequestFacts("GET", "example.com", "/", "", CIMultiDictProxy(CIMultiDict()), ip, 0.0)


def claim(name: str | None) -> Classification:
    if name is None:
        return Classification(Kind.UNKNOWN)
    crawler = CATALOG.get(name)
    assert crawler is not None
    return Classification(Kind.CRAWLER, crawler)


VERIFIER = IdentityVerifier(CATALOG, lambda: RANGES)


@pytest.mark.parametrize(
    ("crawler", "ip", "identity", "method", "detail"),
    [
        (None, "20.171.206.7", Identity.UNKNOWN, "", "claims no crawler"),
        ("GPTBot", "20.171.206.7", Identity.VERIFIED, "ip-ranges", "openai-gptbot"),
        ("GPTBot", "2001:db8:aaaa::1", Identity.VERIFIED, "ip-ranges", "openai-gptbot"),
        ("GPTBot", "::ffff:20.171.206.7", Identity.VERIFIED, "ip-ranges", "openai-gptbot"),
        ("GPTBot", "203.0.113.9", Identity.SPOOFED, "ip-ranges", "in none of GPTBot's"),
        ("GPTBot", "127.0.0.1", Identity.SPOOFED, "ip-ranges", "in none of GPTBot's"),
        # Another OpenAI crawler's range does not vouch for GPTBot.
        ("GPTBot", "40.84.180.1", Identity.SPOOFED, "ip-ranges", "in none of GPTBot's"),
        ("OAI-SearchBot", "40.84.180.1", Identity.VERIFIED, "ip-ranges", "openai-searchbot"),
        # Googlebot also has reverse DNS; with it switched off, the ranges decide alone.
        ("Googlebot", "66.249.66.1", Identity.VERIFIED, "ip-ranges", "google-googlebot"),
        ("Googlebot", "203.0.113.9", Identity.SPOOFED, "ip-ranges", "in none of Googlebot's"),
        # Amazon publishes only reverse DNS: without it nothing can be checked.
        ("Amazonbot", "203.0.113.9", Identity.UNVERIFIED, "", "reverse DNS is not configured"),
        # Lists the registry has no data for prove nothing either way.
        ("ClaudeBot", "203.0.113.9", Identity.UNVERIFIED, "", "have no data yet"),
        # An operator that publishes nothing: a claim can only stay a claim.
        ("Bytespider", "203.0.113.9", Identity.UNVERIFIED, "", "publishes nothing"),
        # ChatGPT's agent signs every request; an unsigned claim is false.
        ("ChatGPT Agent", "203.0.113.9", Identity.SPOOFED, "web-bot-auth", "not signed"),
    ],
)
async def test_identity_from_published_ranges(
    crawler: str | None, ip: str, identity: Identity, method: str, detail: str
) -> None:
    result = await VERIFIER.verify(facts(ip), claim(crawler))
    assert result.identity is identity
    assert result.method == method
    assert detail in result.detail


async def test_each_check_is_reported_with_its_result() -> None:
    result = await VERIFIER.verify(facts("203.0.113.9"), claim("GPTBot"))
    assert [(c.method, c.result) for c in result.checks] == [("ip-ranges", "refuted")]
    assert result.signature_failure is None


async def test_a_refreshed_registry_is_seen_by_the_next_request() -> None:
    registries = [RANGES]
    verifier = IdentityVerifier(CATALOG, lambda: registries[-1])
    assert (await verifier.verify(facts("198.51.100.4"), claim("GPTBot"))).identity \
        is Identity.SPOOFED
    registries.append(RangeRegistry.from_prefixes({"openai-gptbot": ["198.51.100.0/24"]}))
    assert (await verifier.verify(facts("198.51.100.4"), claim("GPTBot"))).identity \
        is Identity.VERIFIED
