"""What the policy enforces for one catalog crawler on one path: the enforced stance.

The declarations (robots.txt groups, TDMRep, Content-Usage) are derived from this
and the consistency tests compare against it, so both ask one question the same
way: what happens to an honest `GET` from this crawler, on this host and path?
"Honest" means the identity a genuine request gets: `verified` for a crawler
whose operator publishes a way to verify it, `unverified` for one that does not.

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
from gatekeeper.core.evaluate import matches
from gatekeeper.core.facts import Identity, RequestFacts
from gatekeeper.core.model import (
    Block,
    Match,
    Policy,
    RateLimit,
    RequireLicense,
    Rule,
)
from gatekeeper.core.owners import Owners, refuses

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


def stance_of(policy: Policy, owners: Owners, crawler: Crawler, path: str, host: str,
              robots_disallowed: bool | None = False) -> Stance:
    """The enforced stance for `crawler` on `path`; `robots_disallowed` is the origin's
    robots.txt verdict for it there (False: allowed, or no file)."""
    owner = owners.owner_of(path)
    if refuses(owner, crawler.purpose):
        assert owner is not None
        return Stance(Verdict.BLOCK, f"owner:{owner.name}")
    facts = RequestFacts("GET", host, path, "", _NO_HEADERS, "", 0.0)
    cls = Classification(Kind.CRAWLER, crawler)
    identity = honest_identity(crawler)
    conditional = ""
    for rule in _rules_for(policy, host):
        if not matches(rule.match, facts, cls, identity, robots_disallowed):
            if not conditional and rule.match.headers and matches(
                    _without_headers(rule.match), facts, cls, identity, robots_disallowed):
                conditional = rule.name
            continue
        if rule.match.headers and not conditional:
            conditional = rule.name
        return Stance(verdict_of(rule.action), rule.name, conditional)
    return Stance(verdict_of(policy.default), "default", conditional)


def applies_to(rule: Rule, crawler: Crawler, host: str) -> bool:
    """Whether `rule` can match requests of `crawler` on `host` on some path."""
    facts = RequestFacts("GET", host, "/", "", _NO_HEADERS, "", 0.0)
    loose = replace(rule.match, paths=None, headers=(), robots_disallowed=None)
    return matches(loose, facts, Classification(Kind.CRAWLER, crawler), honest_identity(crawler))


def rules_for(policy: Policy, host: str) -> tuple[Rule, ...]:
    """The rules a request for `host` is tried against, in order."""
    return _rules_for(policy, host)


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


def _rules_for(policy: Policy, host: str) -> tuple[Rule, ...]:
    index = section_index(policy, host)
    return policy.rules if index < 0 else policy.host_sections[index].rules + policy.rules


@lru_cache(maxsize=256)
def _without_headers(match: Match) -> Match:
    return replace(match, headers=())
