"""The RSL answers of a require_license rule (RSL 1.0 §6 and pay-per-crawl headers),
one table over what the gate found of the request's licence token."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.decision import Reason
from gatekeeper.core.evaluate import Selected, decide
from gatekeeper.core.licence_check import (
    LicenseCheck,
    LicenseStatus,
    accepts,
    parse_price_header,
)
from gatekeeper.core.model import Policy, Price, RequireLicense
from gatekeeper.policy.loader import load_policy_text

POLICY = load_policy_text("""
version: 1
licenses:
  - name: per-crawl
    usages: [ai-train]
    paths: ["/articles/**"]
    price: {amount: 0.002, currency: USD, per: request}
  - name: monthly
    usages: [ai-input]
    price: {amount: 100, currency: USD, per: month}
  - name: free-search
    usages: [search]
rules:
  - name: paid
    match: {purposes: [ai-training]}
    action: {require_license: {any_of: [per-crawl, monthly]}}
  - name: free
    match: {purposes: [search-engine]}
    action: {require_license: {any_of: [free-search]}}
""", "test.yaml", load_catalog())
PAID = Selected(POLICY.rules[0], POLICY.rules[0].action)
FREE = Selected(POLICY.rules[1], POLICY.rules[1].action)
LIC = {lic.name: lic for lic in POLICY.licenses}


def granted(name: str) -> LicenseCheck:
    return LicenseCheck(LicenseStatus.GRANTED, license=LIC[name], licensee="acme",
                        token_id="t1")


def header(decision: Any, name: str) -> str | None:
    return next((v for k, v in decision.headers if k.lower() == name.lower()), None)


@pytest.mark.parametrize(
    ("selected", "check", "path", "max_price", "status", "reason", "challenge"),
    [
        (PAID, None, "/articles/1", None, 402, Reason.LICENSE_REQUIRED, "invalid_request"),
        (FREE, None, "/articles/1", None, 401, Reason.LICENSE_REQUIRED, "invalid_request"),
        (PAID, LicenseCheck(LicenseStatus.INVALID, "expired"), "/articles/1", None, 401,
         Reason.LICENSE_INVALID, "invalid_token"),
        (PAID, LicenseCheck(LicenseStatus.INSUFFICIENT, "out-of-scope"), "/articles/1", None,
         403, Reason.LICENSE_INSUFFICIENT, "insufficient_scope"),
        (PAID, LicenseCheck(LicenseStatus.OVER_QUOTA, "over-quota", retry_after=60),
         "/articles/1", None, 429, Reason.LICENSE_QUOTA, None),
        # Granted, but a per-request price needs an accepted crawler-max-price.
        (PAID, granted("per-crawl"), "/articles/1", None, 402, Reason.LICENSE_REQUIRED,
         "invalid_request"),
        (PAID, granted("per-crawl"), "/articles/1", "USD 0.001", 402,
         Reason.LICENSE_REQUIRED, "invalid_request"),
        (PAID, granted("per-crawl"), "/articles/1", "EUR 1", 402, Reason.LICENSE_REQUIRED,
         "invalid_request"),
        (PAID, granted("per-crawl"), "/articles/1", "USD 0.002", 0, Reason.LICENSED, None),
        (PAID, granted("monthly"), "/articles/1", None, 0, Reason.LICENSED, None),
        (FREE, granted("free-search"), "/", None, 0, Reason.LICENSED, None),
    ],
)
def test_require_license_answers(
    selected: Selected, check: LicenseCheck | None, path: str, max_price: str | None,
    status: int, reason: Reason, challenge: str | None,
) -> None:
    d = decide(POLICY, selected, license=check, path=path, max_price=max_price)
    assert d.reason is reason
    assert d.forward is (status == 0)
    assert d.status == status
    link = '</license.xml>; rel="license"; type="application/rsl+xml"'
    if d.forward:
        assert ("Link", link) in d.response_headers
        return
    assert header(d, "Link") == link
    auth = header(d, "WWW-Authenticate")
    if challenge is None:
        assert auth is None
    else:
        assert auth is not None
        assert auth.startswith(f'License error="{challenge}"')
    if status in (401, 402):
        assert auth is not None
        assert 'authorization_uri="/.well-known/gatekeeper/token"' in auth
    body = json.loads(d.body)
    assert body["status"] == status
    assert body["rsl"] == "/license.xml"
    assert body["token_endpoint"] == "/.well-known/gatekeeper/token"


def test_a_charged_request_says_what_it_was_charged() -> None:
    d = decide(POLICY, PAID, license=granted("per-crawl"), path="/articles/1",
               max_price="USD 0.01")
    assert ("crawler-charged", "USD 0.002") in d.response_headers


def test_402_lists_only_the_licences_covering_the_path_and_quotes_a_price() -> None:
    on_articles = decide(POLICY, PAID, path="/articles/1")
    elsewhere = decide(POLICY, PAID, path="/about")
    assert [o["name"] for o in json.loads(on_articles.body)["licenses"]] == [
        "per-crawl", "monthly"]
    assert header(on_articles, "crawler-price") == "USD 0.002"
    assert [o["name"] for o in json.loads(elsewhere.body)["licenses"]] == ["monthly"]
    assert header(elsewhere, "crawler-price") is None  # no per-request offer here


def test_a_refused_price_says_why_in_crawler_error() -> None:
    missing = decide(POLICY, PAID, license=granted("per-crawl"), path="/articles/1")
    low = decide(POLICY, PAID, license=granted("per-crawl"), path="/articles/1",
                 max_price="USD 0.0001")
    assert header(missing, "crawler-error") == "MissingCrawlerPrice"
    assert header(low, "crawler-error") == "InvalidCrawlerMaxPrice"


def test_monitor_mode_forwards_an_unlicensed_request_as_a_dry_run() -> None:
    import dataclasses

    from gatekeeper.core.model import Mode

    monitored = dataclasses.replace(POLICY, mode=Mode.MONITOR)
    d = decide(monitored, PAID, path="/articles/1")
    assert d.forward
    assert d.reason is Reason.DRY_RUN
    assert d.would_status == 402


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("USD 0.05", ("USD", Decimal("0.05"))), ("usd 1", ("USD", Decimal(1))),
     ("USD", None), ("USD abc", None), ("USD -1", None), ("DOLLARS 1", None), ("", None),
     (None, None), ("USD NaN", None)],
)
def test_price_headers_parse_strictly(value: str | None, parsed: object) -> None:
    assert parse_price_header(value) == parsed


def test_a_max_price_in_another_currency_is_not_an_acceptance() -> None:
    price = Price(Decimal("0.002"), "USD")
    assert accepts(price, "USD 0.002")
    assert not accepts(price, "EUR 5")


def test_policy_without_licences_answers_401_not_402() -> None:
    policy = Policy(rules=())
    d = decide(policy, Selected(None, RequireLicense(("missing",))), path="/")
    assert d.status == 401
