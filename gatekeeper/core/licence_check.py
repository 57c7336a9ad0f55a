"""What the gate learned about a request's licence token, as data.

The gate checks the token (signature, time, audience, binding, scope, revocation,
quota) before evaluating a `require_license` rule; `gatekeeper.core.evaluate.decide`
turns the result into the RSL answer (RSL 1.0 §6, the Crawler Authorization
Protocol) and, for per-request prices, the pay-per-crawl headers:

| result | answer |
|---|---|
| granted (and any per-request price accepted) | forward, `crawler-charged` when charged |
| missing, a priced licence on offer | 402, `crawler-price` when per request |
| missing, only free or contact licences | 401 `WWW-Authenticate: License error="invalid_request"` |
| price not accepted (`crawler-max-price` absent or lower) | 402 with `crawler-price` |
| invalid (expired, forged, revoked, other site, ...) | 401 `error="invalid_token"` |
| insufficient (other crawler, path or usage) | 403 `error="insufficient_scope"` |
| over quota | 429 with `Retry-After` |
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum

from gatekeeper.core.model import License, Price


class LicenseStatus(StrEnum):
    GRANTED = "granted"
    MISSING = "missing"
    PRICE_NOT_ACCEPTED = "price_not_accepted"
    INVALID = "invalid"
    INSUFFICIENT = "insufficient"
    OVER_QUOTA = "over_quota"


@dataclass(frozen=True, slots=True)
class LicenseCheck:
    status: LicenseStatus
    failure: str = ""  # the token failure reason (a bounded metric label), when any
    detail: str = ""  # for the answer body and logs; never the token itself
    license: License | None = None  # the licence the token grants, when granted
    licensee: str = ""
    token_id: str = ""
    charged: Price | None = None  # the per-request price charged, when granted
    retry_after: int = 0  # seconds, for over quota


def parse_price_header(value: str | None) -> tuple[str, Decimal] | None:
    """`crawler-max-price: USD 0.05` as (currency, amount); None when absent or malformed."""
    if not value:
        return None
    currency, _, amount = value.strip().partition(" ")
    try:
        parsed = Decimal(amount.strip())
    except InvalidOperation:
        return None
    if len(currency) != 3 or not currency.isalpha() or not parsed.is_finite() or parsed < 0:
        return None
    return currency.upper(), parsed


def format_price(price: Price) -> str:
    """The pay-per-crawl header form: `USD 0.002`."""
    return f"{price.currency} {price.amount}"


def accepts(price: Price, max_price: str | None) -> bool:
    """Whether a crawler's `crawler-max-price` covers a per-request `price`."""
    offer = parse_price_header(max_price)
    return offer is not None and offer[0] == price.currency and offer[1] >= price.amount
