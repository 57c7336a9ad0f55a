"""The one orchestrator: who is this, what does the policy say, what happens.

Every edge adapter calls `Gate.decide(facts)` and executes the returned
`Outcome`; none contains policy logic of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gatekeeper.core.behaviour import BehaviourConfig, Score, client_keys, score_client, signals_for
from gatekeeper.core.catalog import UNDECLARED_BOT, Classification, Kind
from gatekeeper.core.decision import Decision, Reason
from gatekeeper.core.evaluate import Selected, decide, select
from gatekeeper.core.facts import Identity, RequestFacts
from gatekeeper.core.licence_check import LicenseCheck
from gatekeeper.core.model import Policy, RateLimit, RequireLicense
from gatekeeper.core.owners import Owners, opted_out, refuses
from gatekeeper.core.ratelimit import LimitResult, bucket_key
from gatekeeper.core.robots import RobotsRules, RobotsVerdict
from gatekeeper.errors import StoreUnavailable
from gatekeeper.store.base import Store
from gatekeeper.store.memory import MemoryStore
from gatekeeper.verify.identity import IdentityVerifier, Verification


class Classifier(Protocol):
    """What the gate needs from the catalog (see `gatekeeper.core.catalog.Catalog`)."""

    def classify(self, user_agent: str) -> Classification: ...


class LicenseChecker(Protocol):
    """Checks a licence token for a require_license rule (`gatekeeper.licensing.check`)."""

    async def check(
        self, facts: RequestFacts, cls: Classification, verification: Verification | None,
        action: RequireLicense, policy: Policy,
    ) -> LicenseCheck | None: ...


# How a read of a public document is logged and counted: served, by no rule of the policy.
DECLARATION = Decision("allow", "declarations", Reason.ALLOWED, forward=True)

_LICENSE_CHECK_UNAVAILABLE = Decision(
    "require_license", "license-check", Reason.LICENSE_REQUIRED, forward=False, status=503,
    headers=(("Content-Type", "application/json"), ("Retry-After", "5")),
    body=b'{"error":"license_check_unavailable","status":503}\n', would_status=503,
)


class RobotsSource(Protocol):
    """The origin's robots.txt per host (see `gatekeeper.edge.origin_robots`)."""

    async def rules(self, host: str) -> RobotsRules: ...

    def peek(self, host: str) -> RobotsRules | None: ...

    def refresh_soon(self, host: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """Everything decided about one request: what it is, and what to do with it."""

    classification: Classification
    identity: Identity
    decision: Decision
    # True when the store failed and a rate limit fell back to local counters.
    store_fallback: bool = False
    # The rule that matched and the action it named (the policy default when none did),
    # so `explain` can point at the rule without evaluating the policy a second time.
    selected: Selected | None = None
    # How the identity state was reached (None: nothing was checked).
    verification: Verification | None = None
    # What the user agent alone said, when the gate classified the request otherwise
    # (a valid signature naming a crawler behind a browser's user agent, or behaviour
    # marking a browser-like client as an undeclared bot).
    claimed: Classification | None = None
    # The origin's robots.txt on this path for the crawler's token ("*" for clients
    # that claim none); None when no robots.txt is known yet or compliance is off.
    robots: RobotsVerdict | None = None
    # The behaviour score of a client that claims no crawler; None when not scored.
    behaviour: Score | None = None
    # What the licence token of a require_license request was found to be (None:
    # no rule asked for one, or none was sent).
    license: LicenseCheck | None = None
    # The content owner the path belongs to ("" when none): the ledger's section.
    owner: str = ""

    @property
    def robots_violation(self) -> bool:
        """A catalog crawler asked for a path its robots.txt group disallows."""
        return (self.robots is not None and not self.robots.allowed
                and self.classification.crawler is not None)


class Gate:
    """Classify, verify, check robots.txt and behaviour, then evaluate the policy.

    Optional parts (`identity`, `behaviour`, and the robots.txt source attached by
    `attach_robots` once the upstream client exists) are skipped when absent.
    """

    def __init__(
        self,
        classifier: Classifier,
        policy: Callable[[], Policy],
        store: Store,
        *,
        identity: IdentityVerifier | None = None,
        behaviour: BehaviourConfig | None = None,
        robots: RobotsSource | None = None,
        licenses: LicenseChecker | None = None,
        owners: Callable[[], Owners] | None = None,
        fail_open: bool = False,
        windows: Store | None = None,
    ) -> None:
        # `policy` is a getter so a hot reload is seen by the next request.
        self._classifier = classifier
        self._policy = policy
        self._store = store
        self._identity = identity
        self._behaviour = behaviour
        self._robots = robots
        self._licenses = licenses
        self._owners = owners
        # The documented fallbacks when the store fails: rate limits counted here (or,
        # with `fail_open`, not at all) and behaviour windows kept here.
        self._local = MemoryStore(max_buckets=10_000)
        self._fail_open = fail_open
        # Behaviour windows may be kept apart from the shared store (`behaviour_store`).
        self._windows = windows if windows is not None else store

    def attach_robots(self, robots: RobotsSource | None) -> None:
        self._robots = robots

    async def decide(self, facts: RequestFacts) -> Outcome:
        cls, identity, verification, claimed = await self._identify(facts)
        license: LicenseCheck | None = None
        robots = await self._robots_verdict(facts, cls) if self._robots is not None else None
        disallowed = None if robots is None else not robots.allowed
        score: Score | None = None
        keys: tuple[str, str] | None = None
        # A signature accepted without its replay check is a store fallback too.
        fallback = verification is not None and verification.store_fallback
        if self._behaviour is not None:
            keys = client_keys(facts.client_ip)
            score, windows_failed = await self._score(facts, cls, keys, bool(disallowed),
                                                      self._behaviour)
            fallback = fallback or windows_failed
            if score is not None and score.undeclared:
                claimed, cls = cls, UNDECLARED_BOT
        owner = self._owners().owner_of(facts.path) if self._owners is not None else None
        if refuses(owner, cls.purpose):
            assert owner is not None
            # The author withheld this content from AI use: no rule or licence sells it.
            return Outcome(cls, identity, opted_out(owner.name), fallback, None, verification,
                           claimed, robots, score, None, owner.name)
        policy = self._policy()
        selected = select(policy, facts, cls, identity, disallowed)
        action = selected.action
        if isinstance(action, RateLimit):
            key = bucket_key(selected.name, action, facts, cls)
            try:
                limit = await self._store.take(key, action.rate, action.burst, facts.now)
            except StoreUnavailable:
                # Documented failure mode: rate limits fall back to per-process counters,
                # or let everything through when the operator chose to fail open.
                limit = LimitResult(True, float(action.burst), 0.0) if self._fail_open \
                    else self._local.take_now(key, action.rate, action.burst, facts.now)
                fallback = True
            decision = decide(policy, selected, limit)
        elif isinstance(action, RequireLicense):
            try:
                license = await self._license(facts, cls, verification, action, policy)
            except StoreUnavailable:
                # Fail closed: a licence with limits cannot be granted unmetered.
                decision = _LICENSE_CHECK_UNAVAILABLE
                fallback = True
            else:
                decision = decide(policy, selected, license=license, path=facts.path,
                                  max_price=facts.headers.get("crawler-max-price"))
        else:
            decision = decide(policy, selected)
        if keys is not None and not decision.forward and cls.crawler is not None:
            # A refused crawler that comes back as a browser is switching user agents.
            try:
                await self._windows.note_refusal(keys, cls.crawler.name, facts.now)
            except StoreUnavailable:
                await self._local.note_refusal(keys, cls.crawler.name, facts.now)
                fallback = True
        return Outcome(cls, identity, decision, fallback, selected, verification, claimed,
                       robots, score, license, owner.name if owner is not None else "")

    async def read_declaration(self, facts: RequestFacts) -> Outcome:
        """A request for a public document (robots.txt, TDMRep, licence terms): who
        asked is classified, verified and counted in its behaviour window, but no rule
        applies. The documents that say what crawlers may do are never gated."""
        cls, identity, verification, claimed = await self._identify(facts)
        score: Score | None = None
        fallback = verification is not None and verification.store_fallback
        if self._behaviour is not None:
            score, windows_failed = await self._score(facts, cls, client_keys(facts.client_ip),
                                                      False, self._behaviour)
            fallback = fallback or windows_failed
        return Outcome(cls, identity, DECLARATION, fallback, None, verification, claimed,
                       None, score)

    async def _identify(
        self, facts: RequestFacts
    ) -> tuple[Classification, Identity, Verification | None, Classification | None]:
        """(classification, identity state, how it was verified, what the user agent
        claimed when a signature says otherwise)."""
        cls = self._classifier.classify(facts.user_agent)
        if self._identity is None:
            # Without verification a claimed crawler is only a claim.
            return cls, Identity.UNKNOWN if cls.crawler is None else Identity.UNVERIFIED, \
                None, None
        if cls.crawler is None and "Signature-Input" not in facts.headers:
            return cls, Identity.UNKNOWN, None, None  # a browser: nothing to check
        verification = await self._identity.verify(facts, cls)
        signer = verification.signed_as
        if signer is not None and cls.crawler is not signer:
            return Classification(Kind.CRAWLER, signer), verification.identity, verification, cls
        return cls, verification.identity, verification, None

    async def _license(
        self, facts: RequestFacts, cls: Classification, verification: Verification | None,
        action: RequireLicense, policy: Policy,
    ) -> LicenseCheck | None:
        if self._licenses is None:
            return None
        return await self._licenses.check(facts, cls, verification, action, policy)

    async def _robots_verdict(
        self, facts: RequestFacts, cls: Classification
    ) -> RobotsVerdict | None:
        assert self._robots is not None
        crawler = cls.crawler
        rules = self._robots.peek(facts.host)
        if rules is not None:
            self._robots.refresh_soon(facts.host)
        elif crawler is not None:
            # A crawler's first request for a host waits for the fetch (bounded by its
            # timeout); everyone else is decided at once and the fetch runs behind.
            rules = await self._robots.rules(facts.host)
        else:
            self._robots.refresh_soon(facts.host)
            return None
        path = f"{facts.path}?{facts.query}" if facts.query else facts.path
        return rules.verdict(crawler.robots_token if crawler is not None else "*", path)

    async def _score(
        self, facts: RequestFacts, cls: Classification, keys: tuple[str, str],
        disallowed: bool, cfg: BehaviourConfig,
    ) -> tuple[Score | None, bool]:
        """Count the request in the client's windows; score it when it claims nothing.
        (score, whether the store failed and this process's windows stood in)."""
        crawler = cls.crawler
        signals = signals_for(facts.path, facts.headers,
                              crawler.name if crawler is not None else "", disallowed)
        fallback = False
        try:
            ip_window, net_window = await self._windows.observe_client(keys, signals,
                                                                       facts.now, cfg)
        except StoreUnavailable:
            ip_window, net_window = await self._local.observe_client(keys, signals,
                                                                     facts.now, cfg)
            fallback = True
        # Only browser-like and empty user agents are candidates: a declared crawler or
        # an honest script already says what it is.
        if crawler is not None or (cls.kind is not Kind.UNKNOWN and facts.user_agent):
            return None, fallback
        return score_client(ip_window, net_window, signals, facts.now, cfg), fallback
