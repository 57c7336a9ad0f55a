"""What the policy enforces for one catalog crawler on one path: the enforced stance.

The declarations (robots.txt groups, TDMRep, Content-Usage) are derived from this
and the consistency tests compare against it, so both ask one question the same
way: what happens to an honest `GET` from this crawler, on this host and path?
"Honest" means the identity a genuine request gets: `verified` for a crawler
whose operator publishes a way to verify it, `unverified` for one that does not.

The answer is the gate's own: the author's opt-out first (`owners.refuses`), then
`gatekeeper.core.evaluate.select` with the robots.txt verdict the gate would pass
(None when it has none: robots.txt compliance is off). Nothing here chooses a
host section or a rule by itself, so the declarations cannot drift from `select`.

Some of a policy cannot be declared, and `Stance.conditional` says so: a rule
that depends on request headers is decided here as if those headers were absent,
and names itself in `conditional` so callers can report the pair instead of
trusting it silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import lru_cache

from gatekeeper.core.catalog import Classification, Crawler, Kind
from gatekeeper.core.evaluate import matches, select
from gatekeeper.core.facts import Identity, RequestFacts
from gatekeeper.core.model import (
    Block,
    Match,
    Policy,
    RateLimit,
    RequireLicense,
    Rule,
)
from gatekeeper.core.owners import NO_OWNERS, Owners, refuses

_NO_HEADERS: Mapping[str, str] = {}  # never written to


class Verdict(StrEnum):
    ALLOW = "allow"  # allow and monitor rules, and the policy default when it allows
    LIMIT = "rate_limit"  # served, at a pace no declaration format can state
    LICENSE = "require_license"  # served only with a licence token
    BLOCK = "block"

    @property
    def refused(self) -> bool:
        """Not served as asked: refused outright or only against a licence."""
        return self is Verdict.BLOCK or self is Verdict.LICENSE


@dataclass(frozen=True, slots=True)
class Stance:
    verdict: Verdict
    rule: str  # the deciding rule, "default", or "owner:<name>" for an author's opt-out
    # The first rule passed over only because the request carried no headers; "" if none.
    conditional: str = ""


def honest_identity(crawler: Crawler) -> Identity:
    return Identity.VERIFIED if crawler.verification else Identity.UNVERIFIED


class Enforced:
    """The stances of one policy and set of owners; built once, asked many times
    (`plan` asks for every crawler and region).

    `conditional` needs the first rule that would match if header conditions were
    ignored: `select` over a twin of the policy whose rules have none (built here
    once) finds it, so the rule order and host sections stay `select`'s.
    """

    __slots__ = ("_loose", "_loosened", "_owners", "_policy")

    def __init__(self, policy: Policy, owners: Owners = NO_OWNERS) -> None:
        self._policy = policy
        self._owners = owners
        # The twin's rules that lost their header conditions, by identity: the twin
        # keeps them alive, so no id is reused while this object lives.
        self._loosened: dict[int, Rule] = {}
        self._loose = _headerless(policy, self._loosened)

    def stance(self, crawler: Crawler, path: str, host: str,
               robots_disallowed: bool | None) -> Stance:
        """The enforced stance for `crawler` on `path`; `robots_disallowed` is the
        robots.txt verdict the gate passes to `select`: True or False (the origin's
        file disallows or allows it; no file allows), None when the gate has none
        (robots.txt compliance off), which no `robots:` condition matches."""
        owner = self._owners.owner_of(path)
        if refuses(owner, crawler.purpose):
            assert owner is not None
            return Stance(Verdict.BLOCK, f"owner:{owner.name}")
        facts = RequestFacts("GET", host, path, "", _NO_HEADERS, "", 0.0)
        cls = Classification(Kind.CRAWLER, crawler)
        identity = honest_identity(crawler)
        first = select(self._loose, facts, cls, identity, robots_disallowed)
        loosened = self._loosened.get(id(first.rule)) if first.rule is not None else None
        if loosened is None:
            # No rule before it has a header condition that could hold: the twin's
            # answer is the policy's.
            return Stance(verdict_of(first.action), first.name)
        chosen = select(self._policy, facts, cls, identity, robots_disallowed)
        return Stance(verdict_of(chosen.action), chosen.name, loosened.name)


def stance_of(policy: Policy, owners: Owners, crawler: Crawler, path: str, host: str,
              robots_disallowed: bool | None) -> Stance:
    """`Enforced(policy, owners).stance(...)`, for one question."""
    return Enforced(policy, owners).stance(crawler, path, host, robots_disallowed)


def applies_to(rule: Rule, crawler: Crawler, host: str) -> bool:
    """Whether `rule` can match requests of `crawler` on `host` on some path."""
    facts = RequestFacts("GET", host, "/", "", _NO_HEADERS, "", 0.0)
    loose = replace(rule.match, paths=None, headers=(), robots_disallowed=None)
    return matches(loose, facts, Classification(Kind.CRAWLER, crawler), honest_identity(crawler))


def rules_for(policy: Policy, host: str) -> tuple[Rule, ...]:
    """The rules a request for `host` is tried against, in order."""
    index = section_index(policy, host)
    return policy.rules if index < 0 else policy.host_sections[index].rules + policy.rules


def robots_conditioned(policy: Policy) -> tuple[Rule, ...]:
    """The rules with a `robots:` condition: with robots.txt compliance off the gate
    has no verdict, and they never match."""
    return tuple(rule for rule in (*policy.rules,
                                   *(r for s in policy.host_sections for r in s.rules))
                 if rule.match.robots_disallowed is not None)


def verdict_of(action: object) -> Verdict:
    if isinstance(action, Block):
        return Verdict.BLOCK
    if isinstance(action, RequireLicense):
        return Verdict.LICENSE
    if isinstance(action, RateLimit):
        return Verdict.LIMIT
    return Verdict.ALLOW


def section_index(policy: Policy, host: str) -> int:
    """Which host section `host` falls in (the first that matches), -1 for none: as
    `gatekeeper.core.evaluate.select` chooses it."""
    return next((i for i, s in enumerate(policy.host_sections)
                 if any(p.match(host) for p in s.hosts)), -1)


def _headerless(policy: Policy, loosened: dict[int, Rule]) -> Policy:
    """`policy` with every header condition dropped; each rule that lost one is
    recorded in `loosened` by the id of its twin. A policy without any is its own twin."""
    def loosen(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        out = []
        for rule in rules:
            if rule.match.headers:
                twin = replace(rule, match=_without_headers(rule.match))
                loosened[id(twin)] = rule
                rule = twin
            out.append(rule)
        return tuple(out)

    rules = loosen(policy.rules)
    sections = tuple(replace(s, rules=loosen(s.rules)) for s in policy.host_sections)
    return replace(policy, rules=rules, host_sections=sections) if loosened else policy


@lru_cache(maxsize=256)
def _without_headers(match: Match) -> Match:
    return replace(match, headers=())
