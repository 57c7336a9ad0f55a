"""pytest-benchmark of licence-token verification, what the gate does for every request
that carries `Authorization: License <token>` on a `require_license` rule.

`bench/run.sh` runs it after the decision core. The figures to read, each next to the
same baseline as the core benchmark (building the request's `RequestFacts`):

- verify, cached: a token presented again (the usual case: a crawler reuses its token
  for thousands of requests): a dictionary lookup plus the time and audience checks;
- verify, uncached: a token seen for the first time: the Ed25519 signature check and
  the claims decoding;
- scope check: crawler binding, licence paths and usages;
- reading the token from the `Authorization` header.

The verifier reads its keys the way the wiring does, through `Keyring.public_keys`
(a fresh copy of a small dict per call), so the cached figure includes that call.
"""

from __future__ import annotations

import itertools
import secrets
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from multidict import CIMultiDict, CIMultiDictProxy

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.facts import RequestFacts
from gatekeeper.licensing.tokens import (
    LicenseClaims,
    SigningKey,
    TokenVerifier,
    VerifiedToken,
    issue_token,
    scope_check,
    token_from_headers,
)
from gatekeeper.policy.loader import load_policy_text

if TYPE_CHECKING:
    from conftest import Measure

NOW = 1_800_000_000.0
KEY = SigningKey("bench-key", Ed25519PrivateKey.generate())
PUBLIC = {KEY.kid: KEY.private_key.public_key()}
POLICY = load_policy_text("""
version: 1
licenses:
  - name: ai-train-standard
    usages: [ai-train]
    paths: ["/articles/**"]
    price: {amount: 0.002, currency: USD, per: request}
rules: []
""", "bench.yaml", load_catalog())
LICENSE = POLICY.licenses[0]


def token(token_id: str) -> str:
    claims = LicenseClaims(
        issuer="https://news.example", audience=("news.example",), subject="acme",
        crawler="GPTBot", crawler_key=None, license="ai-train-standard",
        usages=("ai-train",), paths=(), not_before=NOW - 60, expires=NOW + 86_400,
        token_id=token_id,
    )
    return issue_token(claims, KEY)


def verifier(cache_size: int = 10_000) -> TokenVerifier:
    return TokenVerifier(lambda: dict(PUBLIC), issuer="https://news.example",
                         audience=("news.example",), cache_size=cache_size)


def test_baseline_request_facts(measure: Measure) -> None:
    headers = CIMultiDictProxy(CIMultiDict({"User-Agent": "GPTBot/1.2"}))
    measure(lambda: RequestFacts("GET", "news.example", "/articles/1", "", headers,
                                 "20.171.206.7", NOW), "baseline: building RequestFacts",
            baseline=True)


def test_verify_cached(measure: Measure) -> None:
    v = verifier()
    tokens = [token(secrets.token_hex(8)) for _ in range(64)]
    for t in tokens:
        v.verify(t, "news.example", NOW)
    cycle = itertools.cycle(tokens)
    measure(lambda: v.verify(next(cycle), "news.example", NOW), "verify, token cached")


def test_verify_uncached(measure: Measure) -> None:
    v = verifier(cache_size=0)
    tokens = itertools.cycle([token(secrets.token_hex(8)) for _ in range(64)])
    measure(lambda: v.verify(next(tokens), "news.example", NOW),
            "verify, token new (Ed25519 + claims)")


def test_scope_check(measure: Measure) -> None:
    verified = verifier().verify(token("scope"), "news.example", NOW)
    assert isinstance(verified, VerifiedToken)
    claims = verified.claims
    measure(lambda: scope_check(claims, crawler="GPTBot", crawler_key=None,
                                usages_needed=("ai-train",), path="/articles/1",
                                license=LICENSE), "scope check")


def test_token_from_headers(measure: Measure) -> None:
    headers = CIMultiDictProxy(CIMultiDict({
        "Host": "news.example",
        "User-Agent": "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; "
                      "GPTBot/1.2; +https://openai.com/gptbot)",
        "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        "Accept-Encoding": "gzip, deflate, br",
        "Authorization": f"License {token('header')}",
    }))
    assert token_from_headers(headers) is not None
    measure(lambda: token_from_headers(headers), "token from the Authorization header")
