"""Policy evaluation: first matching rule wins; host sections are tried first.

`select` finds the rule; `decide` turns the rule's action (plus, for rate
limits, the bucket result the gate obtained from the store) into a `Decision`.
Both are pure so the same tables test the core and every adapter.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from functools import lru_cache

from gatekeeper.core.catalog import Classification
from gatekeeper.core.decision import Decision, Reason
from gatekeeper.core.facts import Identity, RequestFacts
from gatekeeper.core.licence_check import LicenseCheck, LicenseStatus, accepts, format_price
from gatekeeper.core.model import (
    Action,
    Allow,
    Block,
    License,
    Match,
    Mode,
    Monitor,
    Policy,
    PricePer,
    RateLimit,
    RequireLicense,
    Rule,
    action_name,
)
from gatekeeper.core.ratelimit import LimitResult
from gatekeeper.core.terms import license_json

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


# Stands for every request in `can_match`, whose match has no request conditions left.
_ANY_REQUEST = RequestFacts("GET", "", "/", "", {}, "", 0.0)


def on_any_request(m: Match) -> bool:
    """Whether `m` sets no condition on the request itself (method, host, path,
    headers, robots.txt), only on who sends it."""
    return (m.methods is None and m.hosts is None and m.paths is None and not m.headers
            and m.robots_disallowed is None)


def can_match(m: Match, cls: Classification, identity: Identity) -> bool:
    """Whether `m` holds for some request of a client classified `cls` with
    `identity`: its conditions on the request itself set aside."""
    loose = replace(m, methods=None, hosts=None, paths=None, headers=(),
                    robots_disallowed=None)
    return matches(loose, _ANY_REQUEST, cls, identity)


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


def decide(
    policy: Policy,
    selected: Selected,
    limit: LimitResult | None = None,
    license: LicenseCheck | None = None,
    *,
    path: str = "/",
    max_price: str | None = None,
) -> Decision:
    """The Decision for a selected rule. `limit` is required for rate-limit actions;
    `license` is what the gate found of the request's licence token for a
    `require_license` rule (None: no token), `path` the canonical path (the answer
    lists the licences covering it) and `max_price` the `crawler-max-price` header."""
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
        granted = _licensed(name, action, policy, license, path, max_price)
        if granted is not None:
            return granted
        denial = _license_answer(name, action, policy, license, path, max_price)
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


def _licensed(
    rule: str, action: RequireLicense, policy: Policy, check: LicenseCheck | None, path: str,
    max_price: str | None,
) -> Decision | None:
    """The forward for a granted licence whose price (if per request) is accepted."""
    if check is None or check.status is not LicenseStatus.GRANTED or check.license is None:
        return None
    price = check.license.price
    if price is not None and price.per is PricePer.REQUEST:
        if not accepts(price, max_price):
            return None
        charged: tuple[tuple[str, str], ...] = (("crawler-charged", format_price(price)),)
    else:
        charged = ()
    return Decision("require_license", rule, Reason.LICENSED, forward=True,
                    response_headers=(*charged, _rsl_link(policy)))


def _license_answer(
    rule: str, action: RequireLicense, policy: Policy, check: LicenseCheck | None, path: str,
    max_price: str | None,
) -> Decision:
    """The RSL answer (401/402/403/429) for a request without a usable licence."""
    offers = tuple(lic for lic in policy.licenses if lic.name in action.any_of
                   and lic.covers(path))
    status_of = LicenseStatus.MISSING if check is None else check.status
    if status_of is LicenseStatus.GRANTED:
        status_of = LicenseStatus.PRICE_NOT_ACCEPTED  # granted, but the charge was refused
    failure = check.failure if check is not None else ""
    retry = check.retry_after if check is not None else 0
    return _license_decision(rule, policy, offers, status_of, failure, retry,
                             bool(max_price))


# One answer per (rule, offers, outcome): policies have few licences, and the
# answers are the same bytes for every request that ends the same way.
@lru_cache(maxsize=1024)
def _license_decision(
    rule: str, policy: Policy, offers: tuple[License, ...], outcome: LicenseStatus,
    failure: str, retry_after: int, offered_price: bool,
) -> Decision:
    per_request = [o.price for o in offers if o.price is not None
                   and o.price.per is PricePer.REQUEST]
    priced = any(o.price is not None for o in offers)
    headers: list[tuple[str, str]] = [_JSON, _rsl_link(policy)]
    if outcome is LicenseStatus.INVALID:
        status, error, reason = 401, "invalid_token", Reason.LICENSE_INVALID
        message = f"the licence token was refused: {failure}"
    elif outcome is LicenseStatus.INSUFFICIENT:
        status, error, reason = 403, "insufficient_scope", Reason.LICENSE_INSUFFICIENT
        message = f"the licence token does not cover this request: {failure}"
    elif outcome is LicenseStatus.OVER_QUOTA:
        status, error, reason = 429, "insufficient_scope", Reason.LICENSE_QUOTA
        message = "the licence's limits for this period are used up"
        headers.append(("Retry-After", str(max(1, retry_after))))
    elif outcome is LicenseStatus.PRICE_NOT_ACCEPTED or (priced and outcome is
                                                         LicenseStatus.MISSING):
        status, error, reason = 402, "invalid_request", Reason.LICENSE_REQUIRED
        message = "a licence is required, and it has a price"
        if outcome is LicenseStatus.PRICE_NOT_ACCEPTED:
            message = ("the licence charges per request: send crawler-max-price at or "
                       "above crawler-price")
    else:
        status, error, reason = 401, "invalid_request", Reason.LICENSE_REQUIRED
        message = "a licence token is required for this resource"
    if per_request:
        cheapest = min(per_request, key=lambda p: p.amount)
        headers.append(("crawler-price", format_price(cheapest)))
        if outcome is LicenseStatus.PRICE_NOT_ACCEPTED:
            headers.append(("crawler-error", "InvalidCrawlerMaxPrice" if offered_price
                            else "MissingCrawlerPrice"))
    if status in (401, 402):
        # RSL 1.0 §6 defines error and error_description; authorization_uri names the
        # licence server, as RSL-aware clients of the drafts expect (an extension).
        headers.append(("WWW-Authenticate",
                        f'License error="{error}", error_description="{message}", '
                        f'authorization_uri="{policy.token_url}"'))
    elif status == 403:
        headers.append(("WWW-Authenticate", f'License error="{error}"'))
    body = _json({
        "error": reason.value,
        "status": status,
        "rule": rule,
        "message": message,
        "token_error": failure or None,
        "licenses": [license_json(o) for o in offers],
        "terms": policy.license_terms_url,
        "rsl": policy.rsl_url,
        "token_endpoint": policy.token_url,
        "how_to_obtain": (
            "Read the licence terms, register as a licensee with the site, then POST "
            "grant_type=rsl&license=<name>&resource=<url> to token_endpoint with HTTP "
            "Basic client credentials, and repeat the request with "
            "'Authorization: License <access_token>'."
        ),
    })
    return Decision(
        "require_license", rule, reason, forward=False, status=status,
        headers=tuple(headers), body=body, would_status=status,
    )


def _rsl_link(policy: Policy) -> tuple[str, str]:
    return ("Link", f'<{policy.rsl_url}>; rel="license"; type="application/rsl+xml"')
