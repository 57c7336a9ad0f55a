"""Who is really knocking: one identity state per request, and how it was reached.

The user agent only claims; this module checks the claim against what the claimed
crawler's operator publishes, strongest evidence first:

1. a Web Bot Auth signature (`signed`): a request carrying `Signature-Input` is
   verified against the keys of the agents allowed for the crawler it claims, or
   of every catalog agent when it claims none; a valid signature from an agent
   that signs for a catalog crawler names that crawler, even behind a browser's
   user agent (the gate then reclassifies the request);
2. the operator's published IP ranges (`verified` when the address is in one);
3. forward-confirmed reverse DNS (`verified` when confirmed, `spoofed` when the
   answer disproves the claim).

`spoofed` is given only on evidence: the address is outside every loaded list and
reverse DNS is not available for the crawler, or reverse DNS refutes it, or the
crawler signs all its requests and this one is not signed. When a check could not
finish (DNS slow or failing, a key directory unreachable, a list with no data yet)
the state is `unverified`. Requests claiming no crawler are `unknown`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from gatekeeper.core.catalog import Catalog, Classification, Crawler
from gatekeeper.core.facts import Identity, RequestFacts
from gatekeeper.core.httpsig import SigFailure, SignedRequest
from gatekeeper.verify.ranges import RangeRegistry
from gatekeeper.verify.rdns import DnsOutcome, ReverseDnsVerifier
from gatekeeper.verify.webbotauth import WebBotAuthVerifier

WEB_BOT_AUTH: Final = "web-bot-auth"
IP_RANGES: Final = "ip-ranges"
REVERSE_DNS: Final = "reverse-dns"
METHODS: Final = (WEB_BOT_AUTH, IP_RANGES, REVERSE_DNS)
# Results of one check, as metric label values.
CHECK_RESULTS: Final = ("verified", "refuted", "unknown", "pending")
# Signature failures that mean "could not check", not "checked and wrong".
_INCONCLUSIVE: Final = frozenset({SigFailure.DIRECTORY_ERROR})


@dataclass(frozen=True, slots=True)
class Check:
    """One verification method tried for a request."""

    method: str  # one of METHODS
    result: str  # one of CHECK_RESULTS
    elapsed: float  # seconds spent waiting on it for this request


@dataclass(frozen=True, slots=True)
class Verification:
    """The identity state of one request and the evidence behind it."""

    identity: Identity
    method: str = ""  # the method that settled the state; "" when none did
    detail: str = ""  # how the state was reached, for logs and `explain`
    checks: tuple[Check, ...] = ()
    signature_failure: str | None = None  # why a presented signature failed (metric label)
    signed_as: Crawler | None = None  # the crawler a valid signature speaks for
    key_thumbprint: str | None = None  # the Web Bot Auth key that signed, when one did
    # A signature accepted without its replay check because the store failed.
    store_fallback: bool = False


CLAIMS_NOTHING = Verification(Identity.UNKNOWN, detail="the user agent claims no crawler")


class IdentityVerifier:
    """Decides `Verification` for a request and the crawler its user agent claims.

    `ranges` is a getter so a background refresh is seen by the next request.
    `rdns` and `signatures` are optional: without them those methods are skipped
    (and cannot refute a claim). `rdns_budget` is how long one request may wait
    for DNS; the lookup goes on behind it and the next request gets the answer.
    """

    def __init__(
        self,
        catalog: Catalog,
        ranges: Callable[[], RangeRegistry],
        *,
        rdns: ReverseDnsVerifier | None = None,
        signatures: WebBotAuthVerifier | None = None,
        rdns_budget: float | None = 0.05,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._ranges = ranges
        self._rdns = rdns
        self._signatures = signatures
        self._budget = rdns_budget
        self._clock = clock
        # Which crawler each signing agent speaks for. An agent listed by several
        # entries (none today) speaks for the first.
        agents: dict[str, Crawler] = {}
        for crawler in catalog:
            for origin in crawler.signature_agents:
                agents.setdefault(origin, crawler)
        self._agents: Mapping[str, Crawler] = agents
        self._all_agents = tuple(agents)

    async def verify(self, facts: RequestFacts, cls: Classification) -> Verification:
        crawler = cls.crawler
        failure: str | None = None
        checks: list[Check] = []
        if self._signatures is not None and "Signature-Input" in facts.headers:
            signed = await self._signature(facts, crawler, checks)
            if isinstance(signed, Verification):
                return signed
            failure = signed
        if crawler is None:
            if failure is None:
                return CLAIMS_NOTHING
            return Verification(Identity.UNKNOWN, detail=f"signature rejected: {failure}",
                                checks=tuple(checks), signature_failure=failure)
        return await self._claim(facts, crawler, checks, failure)

    async def _signature(
        self, facts: RequestFacts, crawler: Crawler | None, checks: list[Check]
    ) -> Verification | str:
        """A `signed` Verification, or the failure reason of the presented signature."""
        assert self._signatures is not None
        allowed = crawler.signature_agents if crawler is not None else self._all_agents
        request = SignedRequest(
            method=facts.method, scheme=facts.scheme, authority=facts.headers.get("Host", ""),
            path=facts.raw_path or facts.path, query=facts.query, headers=facts.headers,
        )
        started = self._clock()
        result = await self._signatures.verify(request, allowed, facts.now)
        elapsed = self._clock() - started
        if result.ok:
            checks.append(Check(WEB_BOT_AUTH, "verified", elapsed))
            signer = self._agents.get(result.agent or "") if crawler is None else crawler
            return Verification(
                Identity.SIGNED, WEB_BOT_AUTH,
                f"Web Bot Auth signature by key {result.keyid} of {result.agent}",
                tuple(checks), signed_as=signer, key_thumbprint=result.keyid,
                store_fallback=result.replay_unchecked,
            )
        reason = result.reason or SigFailure.MALFORMED
        outcome = "unknown" if reason in _INCONCLUSIVE else "refuted"
        checks.append(Check(WEB_BOT_AUTH, outcome, elapsed))
        return str(reason.value)

    async def _claim(
        self, facts: RequestFacts, crawler: Crawler, checks: list[Check], failure: str | None
    ) -> Verification:
        ip = facts.client_ip
        name = crawler.name
        notes: list[str] = []
        if failure is not None:
            notes.append(f"signature rejected ({failure})")
        refuted_by_ranges = False
        if crawler.ip_ranges:
            registry = self._ranges()
            loaded = [s for s in crawler.ip_ranges if registry.has_data(s)]
            if loaded:
                started = self._clock()
                hit = registry.match(loaded, ip)
                elapsed = self._clock() - started
                if hit is not None:
                    checks.append(Check(IP_RANGES, "verified", elapsed))
                    return Verification(Identity.VERIFIED, IP_RANGES,
                                        f"{ip} is in {name}'s published range list {hit}",
                                        tuple(checks), failure)
                checks.append(Check(IP_RANGES, "refuted", elapsed))
                refuted_by_ranges = True
                notes.append(f"{ip} is in none of {name}'s published lists ({', '.join(loaded)})")
            else:
                notes.append(f"{name}'s range lists ({', '.join(crawler.ip_ranges)}) have no "
                             "data yet (gatekeeper crawlers update fetches them)")
        if crawler.rdns_domains and self._rdns is not None:
            result = await self._rdns.verify(ip, crawler.rdns_domains, budget=self._budget)
            checks.append(Check(REVERSE_DNS, _DNS_RESULT[result.outcome], result.elapsed))
            if result.outcome is DnsOutcome.CONFIRMED:
                return Verification(Identity.VERIFIED, REVERSE_DNS,
                                    f"reverse DNS confirmed: {result.reason}", tuple(checks),
                                    failure)
            if result.outcome is DnsOutcome.REFUTED:
                notes.append(f"reverse DNS refutes it: {result.reason}")
                return self._spoofed(REVERSE_DNS, name, notes, checks, failure)
            notes.append(f"reverse DNS did not finish: {result.reason}")
            return self._unverified(name, notes, checks, failure)
        if refuted_by_ranges:
            return self._spoofed(IP_RANGES, name, notes, checks, failure)
        if crawler.signature_agents and failure not in _INCONCLUSIVE_VALUES:
            # This operator signs every request of this crawler (its only evidence).
            if failure is None:
                notes.append(f"{name}'s operator signs its requests; this one is not signed")
            return self._spoofed(WEB_BOT_AUTH, name, notes, checks, failure)
        if not crawler.verification:
            notes.append(f"{crawler.operator} publishes nothing to verify {name} with")
        elif crawler.rdns_domains and self._rdns is None:
            notes.append("reverse DNS is not configured")
        return self._unverified(name, notes, checks, failure)

    @staticmethod
    def _spoofed(method: str, name: str, notes: list[str], checks: list[Check],
                 failure: str | None) -> Verification:
        detail = f"claims {name}, but " + "; ".join(notes)
        return Verification(Identity.SPOOFED, method, detail, tuple(checks), failure)

    @staticmethod
    def _unverified(name: str, notes: list[str], checks: list[Check],
                    failure: str | None) -> Verification:
        detail = f"claims {name}; not confirmed: " + "; ".join(notes)
        return Verification(Identity.UNVERIFIED, "", detail, tuple(checks), failure)


_DNS_RESULT: Final = {
    DnsOutcome.CONFIRMED: "verified",
    DnsOutcome.REFUTED: "refuted",
    DnsOutcome.UNKNOWN: "unknown",
    DnsOutcome.PENDING: "pending",
}
_INCONCLUSIVE_VALUES: Final = frozenset(str(f.value) for f in _INCONCLUSIVE)
