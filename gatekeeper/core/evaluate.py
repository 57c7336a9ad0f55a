"""Policy evaluation: first matching rule wins; host sections are tried first.

`select` finds the rule; `decide` turns the rule's action (plus, for rate
limits, the bucket result the gate obtained from the store) into a `Decision`.
Both are pure so the same tables test the core and every adapter.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

from gatekeeper.core.catalog import Classification
from gatekeeper.core.decision import Decision, Reason
from gatekeeper.core.facts import Identity, RequestFacts
from gatekeeper.core.model import (
    Action,
    Allow,
    Block,
    Match,
    Mode,
    Monitor,
    Policy,
    RateLimit,
    RequireLicense,
    Rule,
    action_name,
)
from gatekeeper.core.ratelimit import LimitResult

DEFAULT_RULE = "default"


@dataclass(frozen=True, slots=True)
class Selected:
    """The rule that matched, or the policy default when none did."""

    rule: Rule | None
    action: Action

    @property
    def name(self) -> str:
        return self.rule.name if self.rule is not None else DEFAULT_RULE


def matches(
    m: Match,
    facts: RequestFacts,
    cls: Classification,
    identity: Identity,
    robots_disallowed: bool | None = None,
) -> bool:
    # Cheapest and most selective conditions first: most rules fail on the crawler set.
    crawler = cls.crawler
    if m.crawlers is not None and (crawler is None or crawler.name not in m.crawlers):
        return False
    if m.kinds is not None and cls.kind.value not in m.kinds:
        return False
    if m.purposes is not None:
        purpose = cls.purpose
        if purpose is None or purpose not in m.purposes:
            return False
    if m.operators is not None and (
        crawler is None or crawler.operator.casefold() not in m.operators
    ):
        return False
    if m.identities is not None and identity not in m.identities:
        return False
    if m.methods is not None and facts.method not in m.methods:
        return False
    if m.robots_disallowed is not None and m.robots_disallowed is not robots_disallowed:
        return False
    if m.hosts is not None and not any(p.match(facts.host) for p in m.hosts):
        return False
    if m.paths is not None and not any(p.match(facts.path) for p in m.paths):
        return False
    for h in m.headers:
        value = facts.headers.get(h.name)
        if value is None:
            if h.present:
                return False
        elif not h.present or (h.value is not None and not h.value.match(value)):
            return False
    return True


def select(
    policy: Policy,
    facts: RequestFacts,
    cls: Classification,
    identity: Identity,
    robots_disallowed: bool | None = None,
) -> Selected:
    """The first rule that matches; `robots_disallowed` is the origin's robots.txt
    verdict for the crawler on this path (None when there is none)."""
    for section in policy.host_sections:
        if any(p.match(facts.host) for p in section.hosts):
            for rule in section.rules:
                if matches(rule.match, facts, cls, identity, robots_disallowed):
                    return Selected(rule, rule.action)
            break
    for rule in policy.rules:
        if matches(rule.match, facts, cls, identity, robots_disallowed):
            return Selected(rule, rule.action)
    return Selected(None, policy.default)


def decide(policy: Policy, selected: Selected, limit: LimitResult | None = None) -> Decision:
    """The Decision for a selected rule. `limit` is required for rate-limit actions."""
    action = selected.action
    name = selected.name
    keyword = action_name(action)
    if isinstance(action, Allow):
        return _forwarded(keyword, name, Reason.ALLOWED)
    if isinstance(action, Monitor):
        return _forwarded(keyword, name, Reason.MONITORED)
    if isinstance(action, RateLimit):
        if limit is None:
            raise ValueError("a rate_limit decision needs the bucket result")
        if limit.allowed:
            return _forwarded(keyword, name, Reason.ALLOWED)
        denial = _rate_limited(name, limit.retry_after)
    elif isinstance(action, Block):
        denial = _blocked(name, action)
    else:
        denial = _license_required(name, action, policy.license_terms_url)
    if policy.mode is Mode.MONITOR:
        return Decision(
            keyword, name, Reason.DRY_RUN, forward=True, would_status=denial.status
        )
    return denial


def _json(doc: dict[str, object]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode() + b"\n"


_JSON = ("Content-Type", "application/json")


# Decisions are immutable and, for forwarded requests, depend on nothing but the
# rule: one instance per rule serves every request it allows.
@lru_cache(maxsize=1024)
def _forwarded(keyword: str, rule: str, reason: Reason) -> Decision:
    return Decision(keyword, rule, reason, forward=True)


@lru_cache(maxsize=1024)
def _blocked(rule: str, action: Block) -> Decision:
    if action.body is None:
        body = _json({"error": "blocked", "status": action.status, "rule": rule})
        headers: tuple[tuple[str, str], ...] = (_JSON, *action.headers)
    else:
        body = action.body.encode()
        has_type = any(k.lower() == "content-type" for k, _ in action.headers)
        ctype = () if has_type else (("Content-Type", "text/plain; charset=utf-8"),)
        headers = (*ctype, *action.headers)
    return Decision(
        "block", rule, Reason.BLOCKED, forward=False, status=action.status,
        headers=headers, body=body, would_status=action.status,
    )


def _rate_limited(rule: str, retry_after: float) -> Decision:
    seconds = max(1, math.ceil(retry_after)) if math.isfinite(retry_after) else 3600
    body = _json({"error": "rate_limited", "status": 429, "rule": rule, "retry_after": seconds})
    return Decision(
        "rate_limit", rule, Reason.RATE_LIMITED, forward=False, status=429,
        headers=(_JSON, ("Retry-After", str(seconds))), body=body, would_status=429,
    )


@lru_cache(maxsize=1024)
def _license_required(rule: str, action: RequireLicense, terms_url: str) -> Decision:
    body = _json(
        {
            "error": "license_required",
            "status": 402,
            "rule": rule,
            "licenses": list(action.any_of),
            "terms": terms_url,
            "how_to_obtain": (
                "Read the licence terms at the 'terms' URL, obtain a licence token, and repeat "
                "the request with 'Authorization: License <token>'."
            ),
        }
    )
    headers = (_JSON, ("Link", f'<{terms_url}>; rel="license"'))
    return Decision(
        "require_license", rule, Reason.LICENSE_REQUIRED, forward=False, status=402,
        headers=headers, body=body, would_status=402,
    )
