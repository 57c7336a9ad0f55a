"""The gate's licence check for a `require_license` rule: token in, `LicenseCheck` out.

Order, cheapest and most conclusive first: the token from `Authorization`
(`License` or `Bearer`), its signature and claims (`TokenVerifier`, cached per
token), revocation, the licence it names (it must be one the rule accepts), the
binding to the crawler and its Web Bot Auth key, the paths and the usage this
request needs, then the licence's limits for the period (the only step that
touches the store). The answer each result gets is `gatekeeper.core.evaluate`'s.
"""

from __future__ import annotations

import calendar
import contextlib
import time
from collections.abc import Callable
from typing import Final

from gatekeeper.core.catalog import Classification, Purpose
from gatekeeper.core.facts import RequestFacts
from gatekeeper.core.licence_check import LicenseCheck, LicenseStatus
from gatekeeper.core.model import License, Policy, PricePer, RequireLicense
from gatekeeper.errors import StoreUnavailable
from gatekeeper.licensing.tokens import (
    TokenFailure,
    TokenRejected,
    TokenVerifier,
    scope_check,
    token_from_headers,
)
from gatekeeper.store.base import Store
from gatekeeper.verify.identity import Verification

# What a request needs a licence for, by the crawler's purpose (RSL usage values).
USAGE_FOR_PURPOSE: Final[dict[Purpose, str]] = {
    Purpose.AI_TRAINING: "ai-train",
    Purpose.AI_SEARCH: "ai-index",
    Purpose.AI_ASSISTANT: "ai-input",
    Purpose.AI_AGENT: "ai-input",
    Purpose.SEARCH_ENGINE: "search",
}


class LicenseGate:
    """Checks a request's licence token against the rule and the serving policy.

    `revoked(token_id)` says whether the operator revoked a token (the licensee
    registry keeps the list); revocations are also looked up in `store`, where a
    shared (Redis) store makes them visible to every replica at once. Quotas are
    counted in `store` too; when the store cannot answer, the check fails closed
    (`StoreUnavailable` propagates and the proxy answers 503), since a grant made
    without them cannot be taken back.
    """

    def __init__(self, verifier: TokenVerifier, revoked: Callable[[str], bool],
                 store: Store, active: Callable[[str], bool] | None = None) -> None:
        self._verifier = verifier
        self._revoked = revoked
        self._store = store
        # Whether the token's licensee is still registered and enabled: disabling a
        # licensee stops its tokens at once, not when they expire.
        self._active = active

    async def check(
        self, facts: RequestFacts, cls: Classification, verification: Verification | None,
        action: RequireLicense, policy: Policy,
    ) -> LicenseCheck | None:
        """None when the request carries no token (the answer is then 401/402)."""
        token = token_from_headers(facts.headers)
        if token is None:
            return None
        result = self._verifier.verify(token, facts.host, facts.now)
        if isinstance(result, TokenRejected):
            return LicenseCheck(LicenseStatus.INVALID, result.reason.value, result.detail)
        claims = result.claims
        # The registry's list (this host's state directory), then the store's, which
        # replicas share: a store that cannot answer fails the check closed (503).
        if self._revoked(claims.token_id) or await self._store.revoked(claims.token_id,
                                                                         facts.now):
            return LicenseCheck(LicenseStatus.INVALID, TokenFailure.REVOKED.value,
                                "the operator revoked this token", token_id=claims.token_id)
        if self._active is not None and not self._active(claims.subject):
            return LicenseCheck(LicenseStatus.INVALID, TokenFailure.REVOKED.value,
                                "the licensee is disabled or unknown", token_id=claims.token_id)
        lic = next((lic for lic in policy.licenses if lic.name == claims.license), None)
        if lic is None or lic.name not in action.any_of:
            return LicenseCheck(LicenseStatus.INSUFFICIENT, TokenFailure.UNKNOWN_LICENSE.value,
                                f"licence {claims.license!r} does not grant this resource",
                                token_id=claims.token_id)
        crawler = cls.crawler.name if cls.crawler is not None else None
        key = verification.key_thumbprint if verification is not None else None
        needed = USAGE_FOR_PURPOSE.get(cls.purpose) if cls.purpose is not None else None
        failure = scope_check(claims, crawler=crawler, crawler_key=key,
                              usages_needed=(needed,) if needed else (), path=facts.path,
                              license=lic)
        if failure is not None:
            return LicenseCheck(LicenseStatus.INSUFFICIENT, failure.value,
                                _scope_detail(failure), token_id=claims.token_id)
        over = await self._over_quota(lic, claims.subject, facts.now)
        if over:
            return LicenseCheck(LicenseStatus.OVER_QUOTA, TokenFailure.OVER_QUOTA.value,
                                "the licence's limits for this period are used up",
                                license=lic, licensee=claims.subject,
                                token_id=claims.token_id, retry_after=over)
        charged = lic.price if lic.price is not None and lic.price.per is PricePer.REQUEST \
            else None
        return LicenseCheck(LicenseStatus.GRANTED, license=lic, licensee=claims.subject,
                            token_id=claims.token_id, charged=charged)

    async def record_bytes(self, lic: License, licensee: str, sent: int, now: float) -> None:
        """Count a licensed response's bytes towards the licence's byte limit."""
        limits = lic.limits
        if limits is None or limits.bytes is None or not sent:
            return
        start, end = period_bounds(limits.period, now)
        # A store outage loses these bytes from the count rather than fail the request.
        with contextlib.suppress(StoreUnavailable):
            await self._store.incr(_key("bytes", lic, licensee, start), sent, end - now, now)

    async def _over_quota(self, lic: License, licensee: str, now: float) -> int:
        """Seconds until the period ends when the licensee is over a limit, else 0."""
        limits = lic.limits
        if limits is None:
            return 0
        start, end = period_bounds(limits.period, now)
        left = max(1, int(end - now))
        if limits.requests is not None:
            used = await self._store.incr(_key("requests", lic, licensee, start), 1,
                                          end - now, now)
            if used > limits.requests:
                return left
        if limits.bytes is not None:
            taken = await self._store.incr(_key("bytes", lic, licensee, start), 0,
                                           end - now, now)
            if taken >= limits.bytes:
                return left
        return 0


def _key(what: str, lic: License, licensee: str, start: float) -> str:
    return f"quota|{what}|{lic.name}|{licensee}|{int(start)}"


def period_bounds(period: PricePer, now: float) -> tuple[float, float]:
    """The calendar period (UTC) containing `now`: [start, end) in unix seconds."""
    t = time.gmtime(now)
    if period is PricePer.DAY:
        start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
        return float(start), float(start + 86400)
    if period is PricePer.YEAR:
        return (float(calendar.timegm((t.tm_year, 1, 1, 0, 0, 0))),
                float(calendar.timegm((t.tm_year + 1, 1, 1, 0, 0, 0))))
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return (float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))),
            float(calendar.timegm((year, month, 1, 0, 0, 0))))


def _scope_detail(failure: TokenFailure) -> str:
    return {
        TokenFailure.WRONG_CRAWLER: "the token is bound to another crawler or signing key",
        TokenFailure.OUT_OF_SCOPE: "the token does not cover this path or use",
        TokenFailure.UNKNOWN_LICENSE: "the token names a licence this resource does not offer",
    }.get(failure, failure.value)
