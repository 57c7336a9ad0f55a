"""Licence tokens: issue, verify, every refusal reason, scope, and the header forms.

Forged and tampered tokens are built by hand (base64url, JSON, HMAC, raw Ed25519), so
the refusals are not checked against the library that produced the good tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
)
from multidict import CIMultiDict

from gatekeeper.core.globs import compile_path_glob
from gatekeeper.core.model import License
from gatekeeper.licensing.tokens import (
    MAX_TOKEN_LENGTH,
    LicenseClaims,
    SigningKey,
    TokenError,
    TokenFailure,
    TokenRejected,
    TokenVerifier,
    VerifiedToken,
    issue_token,
    new_token_id,
    scope_check,
    token_from_headers,
)

NOW = 1_800_000_000.0
LEEWAY = 30.0
SITE_A = "news.example"
SITE_B = "shop.example"
ISSUER = "https://news.example"
THUMBPRINT = "poqkLGiymh_W0uP6PZFw-dvez3QJT5SolqXBCW38r0U"

PRIVATE = Ed25519PrivateKey.generate()
KEY = SigningKey("key-1", PRIVATE)
OTHER_PRIVATE = Ed25519PrivateKey.generate()
KEYS: dict[str, Ed25519PublicKey] = {"key-1": PRIVATE.public_key()}

CLAIMS = LicenseClaims(
    issuer=ISSUER,
    audience=(SITE_A, "www.news.example"),
    subject="acme-ai",
    crawler="GPTBot",
    crawler_key=None,
    license="ai-train-standard",
    usages=("ai-train",),
    paths=("/articles/**",),
    not_before=NOW - 60,
    expires=NOW + 3600,
    token_id="tok-0001",
)
LICENSE = License(
    name="ai-train-standard",
    usages=("ai-train", "search"),
    paths=(compile_path_glob("/articles/**"), compile_path_glob("/archive/**")),
)


def verifier(keys: Mapping[str, Ed25519PublicKey] = KEYS, *, issuer: str = ISSUER,
             audience: tuple[str, ...] = (SITE_A, "www.news.example"),
             cache_size: int = 10_000) -> TokenVerifier:
    return TokenVerifier(lambda: keys, issuer=issuer, audience=audience, leeway=LEEWAY,
                         cache_size=cache_size)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: Any) -> str:
    return b64(json.dumps(value).encode())


def payload_of(claims: LicenseClaims) -> dict[str, Any]:
    """The claims as a dict, decoded from a real token (the shape `issue_token` writes)."""
    body = issue_token(claims, KEY).split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return decoded


def signed(header: dict[str, Any], payload: dict[str, Any],
           key: Ed25519PrivateKey = PRIVATE) -> str:
    """A JWS made without PyJWT: any header, any payload, a real Ed25519 signature."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode()))}"


HEADER = {"alg": "EdDSA", "kid": "key-1", "typ": "JWT"}


def rejected(result: VerifiedToken | TokenRejected) -> TokenFailure:
    assert isinstance(result, TokenRejected), result
    return result.reason


# Round trip


def test_an_issued_token_verifies_and_carries_every_claim() -> None:
    claims = replace(CLAIMS, crawler_key=THUMBPRINT, paths=("/articles/*", "/archive/**"))
    result = verifier().verify(issue_token(claims, KEY), SITE_A, NOW)
    assert isinstance(result, VerifiedToken)
    assert result.claims == claims
    assert result.kid == "key-1"


def test_the_token_is_an_eddsa_jwt_with_the_documented_claim_names() -> None:
    token = issue_token(CLAIMS, KEY, issued_at=NOW - 90)
    head = token.split(".")[0]
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    assert header == {"alg": "EdDSA", "kid": "key-1", "typ": "JWT"}
    assert payload_of(CLAIMS) | {"iat": NOW - 90} == {
        "iss": ISSUER, "aud": [SITE_A, "www.news.example"], "sub": "acme-ai",
        "nbf": NOW - 60, "exp": NOW + 3600, "iat": NOW - 90, "jti": "tok-0001",
        "crawler": "GPTBot", "crawler_key": None, "license": "ai-train-standard",
        "usages": ["ai-train"], "paths": ["/articles/**"],
    }


def test_a_host_is_matched_whatever_its_case() -> None:
    claims = replace(CLAIMS, audience=("News.Example",))
    assert claims.audience == (SITE_A,)
    assert isinstance(verifier().verify(issue_token(claims, KEY), "NEWS.example", NOW),
                      VerifiedToken)


def test_a_single_string_audience_is_accepted() -> None:
    token = signed(HEADER, payload_of(CLAIMS) | {"aud": SITE_A})
    assert isinstance(verifier().verify(token, SITE_A, NOW), VerifiedToken)


@pytest.mark.parametrize("now", [CLAIMS.not_before - LEEWAY, CLAIMS.expires + LEEWAY - 1])
def test_the_leeway_admits_small_clock_differences(now: float) -> None:
    assert isinstance(verifier().verify(issue_token(CLAIMS, KEY), SITE_A, now), VerifiedToken)


# Every refusal reason the verifier produces


def _tampered_payload() -> str:
    head, _, signature = issue_token(CLAIMS, KEY).split(".")
    widened = payload_of(CLAIMS) | {"usages": ["all"], "paths": []}
    return f"{head}.{segment(widened)}.{signature}"


def _tampered_signature() -> str:
    head, body, signature = issue_token(CLAIMS, KEY).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[0] ^= 1
    return f"{head}.{body}.{b64(bytes(raw))}"


def _hmac_forgery(secret: bytes) -> str:
    """The classic confusion attack: HS256 keyed with the public key the site publishes."""
    signing_input = f"{segment(HEADER | {'alg': 'HS256'})}.{segment(payload_of(CLAIMS))}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


PUBLIC_RAW = PRIVATE.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
PUBLIC_PEM = PRIVATE.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

# (case, token maker, host, time, reason); one rule per row.
REFUSALS: list[tuple[str, Callable[[], str], str, float, TokenFailure]] = [
    ("expired", lambda: issue_token(CLAIMS, KEY), SITE_A, CLAIMS.expires + LEEWAY,
     TokenFailure.EXPIRED),
    ("not yet valid", lambda: issue_token(CLAIMS, KEY), SITE_A,
     CLAIMS.not_before - LEEWAY - 1, TokenFailure.NOT_YET_VALID),
    ("site A's token at site B", lambda: issue_token(CLAIMS, KEY), SITE_B, NOW,
     TokenFailure.WRONG_AUDIENCE),
    ("another issuer", lambda: issue_token(replace(CLAIMS, issuer="https://evil.example"),
                                           KEY), SITE_A, NOW, TokenFailure.WRONG_ISSUER),
    ("tampered payload", _tampered_payload, SITE_A, NOW, TokenFailure.BAD_SIGNATURE),
    ("tampered signature", _tampered_signature, SITE_A, NOW, TokenFailure.BAD_SIGNATURE),
    ("another key under a known kid", lambda: signed(HEADER, payload_of(CLAIMS),
                                                     OTHER_PRIVATE),
     SITE_A, NOW, TokenFailure.BAD_SIGNATURE),
    ("signed by an unknown key", lambda: issue_token(CLAIMS, SigningKey("key-9",
                                                                        OTHER_PRIVATE)),
     SITE_A, NOW, TokenFailure.UNKNOWN_KEY),
    ("alg none", lambda: f"{segment(HEADER | {'alg': 'none'})}."
                         f"{segment(payload_of(CLAIMS))}.",
     SITE_A, NOW, TokenFailure.WRONG_ALG),
    ("HS256 keyed with the raw public key", lambda: _hmac_forgery(PUBLIC_RAW), SITE_A, NOW,
     TokenFailure.WRONG_ALG),
    ("HS256 keyed with the public key PEM", lambda: _hmac_forgery(PUBLIC_PEM), SITE_A, NOW,
     TokenFailure.WRONG_ALG),
    ("RS256", lambda: signed(HEADER | {"alg": "RS256"}, payload_of(CLAIMS)), SITE_A, NOW,
     TokenFailure.WRONG_ALG),
    ("alg in another case", lambda: signed(HEADER | {"alg": "eddsa"}, payload_of(CLAIMS)),
     SITE_A, NOW, TokenFailure.WRONG_ALG),
    ("no alg", lambda: signed({"kid": "key-1"}, payload_of(CLAIMS)), SITE_A, NOW,
     TokenFailure.WRONG_ALG),
    ("no kid", lambda: signed({"alg": "EdDSA"}, payload_of(CLAIMS)), SITE_A, NOW,
     TokenFailure.MALFORMED),
    ("critical extension", lambda: signed(HEADER | {"crit": ["exp"]}, payload_of(CLAIMS)),
     SITE_A, NOW, TokenFailure.MALFORMED),
    ("unencoded payload", lambda: signed(HEADER | {"b64": False, "crit": ["b64"]},
                                         payload_of(CLAIMS)),
     SITE_A, NOW, TokenFailure.MALFORMED),
    ("another typ", lambda: signed(HEADER | {"typ": "at+jwt"}, payload_of(CLAIMS)),
     SITE_A, NOW, TokenFailure.MALFORMED),
    ("two segments", lambda: ".".join(issue_token(CLAIMS, KEY).split(".")[:2]), SITE_A, NOW,
     TokenFailure.MALFORMED),
    ("not base64url", lambda: "e30!.e30.AA", SITE_A, NOW, TokenFailure.MALFORMED),
    ("header not JSON", lambda: f"{b64(b'{nope')}.e30.AA", SITE_A, NOW,
     TokenFailure.MALFORMED),
    ("header not an object", lambda: f"{segment([1])}.e30.AA", SITE_A, NOW,
     TokenFailure.MALFORMED),
    ("too long", lambda: "a" * (MAX_TOKEN_LENGTH + 1), SITE_A, NOW, TokenFailure.MALFORMED),
    ("claims not JSON", lambda: (lambda i: f"{i}.{b64(PRIVATE.sign(i.encode()))}")(
        f"{segment(HEADER)}.{b64(b'[')}"), SITE_A, NOW, TokenFailure.MALFORMED),
    ("exp a string", lambda: signed(HEADER, payload_of(CLAIMS) | {"exp": "soon"}),
     SITE_A, NOW, TokenFailure.MALFORMED),
    ("exp a boolean", lambda: signed(HEADER, payload_of(CLAIMS) | {"exp": True}),
     SITE_A, NOW, TokenFailure.MALFORMED),
    ("iat a string", lambda: signed(HEADER, payload_of(CLAIMS) | {"iat": "now"}),
     SITE_A, NOW, TokenFailure.MALFORMED),
    ("no licence", lambda: signed(HEADER, {k: v for k, v in payload_of(CLAIMS).items()
                                           if k != "license"}),
     SITE_A, NOW, TokenFailure.MALFORMED),
    ("usages not a list", lambda: signed(HEADER, payload_of(CLAIMS) | {"usages": "ai-train"}),
     SITE_A, NOW, TokenFailure.MALFORMED),
    ("crawler_key a number", lambda: signed(HEADER, payload_of(CLAIMS) | {"crawler_key": 7}),
     SITE_A, NOW, TokenFailure.MALFORMED),
    ("a path glob that cannot compile", lambda: signed(HEADER, payload_of(CLAIMS)
                                                       | {"paths": ["no-slash"]}),
     SITE_A, NOW, TokenFailure.MALFORMED),
]


@pytest.mark.parametrize(("token", "host", "now", "reason"),
                         [row[1:] for row in REFUSALS], ids=[row[0] for row in REFUSALS])
def test_each_defect_is_refused_with_its_reason(token: Callable[[], str], host: str,
                                                now: float, reason: TokenFailure) -> None:
    assert rejected(verifier().verify(token(), host, now)) is reason


@pytest.mark.parametrize(("token", "host", "now"), [row[1:4] for row in REFUSALS],
                         ids=[row[0] for row in REFUSALS])
def test_a_refusal_never_quotes_the_token(token: Callable[[], str], host: str,
                                          now: float) -> None:
    text = token()
    result = verifier().verify(text, host, now)
    assert isinstance(result, TokenRejected)
    assert result.detail
    pieces = [piece for piece in text.split(".") if len(piece) >= 8]
    assert all(piece not in result.detail for piece in pieces), result.detail


def test_a_host_the_site_does_not_serve_is_refused_even_when_the_token_names_it() -> None:
    token = issue_token(replace(CLAIMS, audience=(SITE_A, SITE_B)), KEY)
    assert rejected(verifier(audience=(SITE_A,)).verify(token, SITE_B, NOW)) \
        is TokenFailure.WRONG_AUDIENCE


def test_an_unprintable_key_id_is_not_echoed() -> None:
    token = signed(HEADER | {"kid": "x\n" * 40}, payload_of(CLAIMS))
    result = verifier().verify(token, SITE_A, NOW)
    assert isinstance(result, TokenRejected)
    assert result.reason is TokenFailure.UNKNOWN_KEY
    assert "\n" not in result.detail


# The cache


def test_a_cached_token_is_still_refused_once_expired() -> None:
    check = verifier()
    token = issue_token(CLAIMS, KEY)
    assert isinstance(check.verify(token, SITE_A, NOW), VerifiedToken)
    assert check.cached_tokens == 1
    assert rejected(check.verify(token, SITE_A, CLAIMS.expires + LEEWAY)) \
        is TokenFailure.EXPIRED
    assert rejected(check.verify(token, SITE_B, NOW)) is TokenFailure.WRONG_AUDIENCE


def test_a_cached_token_stops_verifying_when_its_key_is_removed() -> None:
    keys = dict(KEYS)
    check = TokenVerifier(lambda: keys, issuer=ISSUER, audience=[SITE_A])
    token = issue_token(CLAIMS, KEY)
    assert isinstance(check.verify(token, SITE_A, NOW), VerifiedToken)
    del keys["key-1"]
    assert rejected(check.verify(token, SITE_A, NOW)) is TokenFailure.UNKNOWN_KEY
    assert check.cached_tokens == 0


LATER_CHECKS = {TokenFailure.EXPIRED, TokenFailure.NOT_YET_VALID, TokenFailure.WRONG_ISSUER,
                TokenFailure.WRONG_AUDIENCE}


def test_only_tokens_with_a_good_signature_are_cached() -> None:
    check = verifier()
    signature_held = set()
    for _, make, host, now, reason in REFUSALS:
        token = make()
        check.verify(token, host, now)
        if reason in LATER_CHECKS:
            signature_held.add(token)
    assert check.cached_tokens == len(signature_held) > 0


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens whose signature was checked (the library call a cache hit skips)."""
    seen: list[str] = []
    original = jwt.PyJWS.decode_complete

    def counting(self: jwt.PyJWS, token: str | bytes, *args: Any,
                 **kwargs: Any) -> dict[str, Any]:
        seen.append(str(token))
        return original(self, token, *args, **kwargs)

    monkeypatch.setattr(jwt.PyJWS, "decode_complete", counting)
    return seen


def test_a_token_seen_before_is_not_decoded_again(decodes: list[str]) -> None:
    check = verifier()
    token = issue_token(CLAIMS, KEY)
    for _ in range(3):
        assert isinstance(check.verify(token, SITE_A, NOW), VerifiedToken)
    assert decodes == [token]


def test_the_cache_keeps_the_most_recently_used_tokens(decodes: list[str]) -> None:
    check = verifier(cache_size=2)
    first, second, third = (issue_token(replace(CLAIMS, token_id=f"t{n}"), KEY)
                            for n in range(3))
    for token in (first, second, first, third, first, second):
        assert isinstance(check.verify(token, SITE_A, NOW), VerifiedToken)
    # `second` was the least recently used when `third` came, so it was decoded again.
    assert decodes == [first, second, third, second]
    assert check.cached_tokens == 2


def test_a_zero_cache_size_verifies_every_time() -> None:
    check = verifier(cache_size=0)
    token = issue_token(CLAIMS, KEY)
    assert isinstance(check.verify(token, SITE_A, NOW), VerifiedToken)
    assert isinstance(check.verify(token, SITE_A, NOW), VerifiedToken)
    assert check.cached_tokens == 0


# Claims and verifier construction


@pytest.mark.parametrize(("change", "message"), [
    ({"issuer": ""}, "issuer"),
    ({"audience": ()}, "audience"),
    ({"audience": ("",)}, "audience"),
    ({"token_id": ""}, "token_id"),
    ({"crawler_key": ""}, "crawler_key"),
    ({"expires": NOW - 60}, "later"),
    ({"expires": float("inf")}, "finite"),
    ({"paths": ("/a/**x",)}, "paths"),
])
def test_claims_that_make_no_sense_cannot_be_issued(change: dict[str, Any],
                                                    message: str) -> None:
    with pytest.raises(TokenError, match=message):
        replace(CLAIMS, **change)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"issuer": ""}, "issuer"),
    ({"audience": []}, "hosts"),
    ({"leeway": -1.0}, "leeway"),
    ({"cache_size": -1}, "cache_size"),
])
def test_a_verifier_needs_an_issuer_hosts_and_sane_limits(kwargs: dict[str, Any],
                                                          message: str) -> None:
    settings: dict[str, Any] = {"issuer": ISSUER, "audience": [SITE_A]} | kwargs
    with pytest.raises(TokenError, match=message):
        TokenVerifier(lambda: KEYS, **settings)


# Scope


def _scope(claims: LicenseClaims = CLAIMS, *, crawler: str | None = "GPTBot",
           crawler_key: str | None = None, usages: tuple[str, ...] = ("ai-train",),
           path: str = "/articles/2026/story", license: License = LICENSE
           ) -> TokenFailure | None:
    return scope_check(claims, crawler=crawler, crawler_key=crawler_key,
                       usages_needed=usages, path=path, license=license)


BOUND = replace(CLAIMS, crawler_key=THUMBPRINT)
EVERYWHERE = replace(CLAIMS, paths=())
ALL_AI = License("ai-train-standard", usages=("ai-all",))

SCOPES: list[tuple[str, Callable[[], TokenFailure | None], TokenFailure | None]] = [
    ("covered", lambda: _scope(), None),
    ("another crawler", lambda: _scope(crawler="ClaudeBot"), TokenFailure.WRONG_CRAWLER),
    ("crawler names compare exactly", lambda: _scope(crawler="gptbot"),
     TokenFailure.WRONG_CRAWLER),
    ("no crawler recognised", lambda: _scope(crawler=None), TokenFailure.WRONG_CRAWLER),
    ("bound key signed the request", lambda: _scope(BOUND, crawler_key=THUMBPRINT), None),
    ("bound key, another key signed", lambda: _scope(BOUND, crawler_key="other"),
     TokenFailure.WRONG_CRAWLER),
    ("bound key, request unsigned", lambda: _scope(BOUND), TokenFailure.WRONG_CRAWLER),
    ("unbound token, any signing key", lambda: _scope(crawler_key="other"), None),
    ("licence of another name", lambda: _scope(license=replace(LICENSE, name="x")),
     TokenFailure.UNKNOWN_LICENSE),
    ("path outside the licence", lambda: _scope(EVERYWHERE, path="/premium/report"),
     TokenFailure.OUT_OF_SCOPE),
    ("path in the licence, outside the token", lambda: _scope(path="/archive/2025"),
     TokenFailure.OUT_OF_SCOPE),
    ("no token paths: the licence's paths", lambda: _scope(EVERYWHERE, path="/archive/2025"),
     None),
    ("licence without paths covers every path",
     lambda: _scope(EVERYWHERE, path="/x", license=replace(LICENSE, paths=None)), None),
    ("usage not granted by the token", lambda: _scope(usages=("search",)),
     TokenFailure.OUT_OF_SCOPE),
    ("usage no longer in the licence",
     lambda: _scope(license=replace(LICENSE, usages=("search",))), TokenFailure.OUT_OF_SCOPE),
    ("one of two usages missing", lambda: _scope(usages=("ai-train", "ai-input")),
     TokenFailure.OUT_OF_SCOPE),
    ("no usage needed", lambda: _scope(usages=()), None),
    ("ai-all grants ai-input",
     lambda: _scope(replace(CLAIMS, usages=("ai-all",)), usages=("ai-input",),
                    license=ALL_AI), None),
    ("ai-all does not grant search",
     lambda: _scope(replace(CLAIMS, usages=("ai-all",)), usages=("search",),
                    license=replace(ALL_AI, usages=("all",))), TokenFailure.OUT_OF_SCOPE),
    ("all grants search",
     lambda: _scope(replace(CLAIMS, usages=("all",)), usages=("search",),
                    license=replace(ALL_AI, usages=("all",))), None),
]


@pytest.mark.parametrize(("check", "expected"), [row[1:] for row in SCOPES],
                         ids=[row[0] for row in SCOPES])
def test_scope_check_compares_the_claims_with_the_request_and_the_licence(
        check: Callable[[], TokenFailure | None], expected: TokenFailure | None) -> None:
    assert check() is expected


# The Authorization header


HEADERS: list[tuple[list[tuple[str, str]], str | None]] = [
    ([("Authorization", "License x")], "x"),
    ([("Authorization", "Bearer x")], "x"),
    ([("Authorization", "bearer x")], "x"),
    ([("Authorization", "LICENSE eyJ.eyJ.sig-_")], "eyJ.eyJ.sig-_"),
    ([("authorization", "License  x ")], "x"),
    ([("Authorization", "Basic x")], None),
    ([("Authorization", "License a b")], None),
    ([("Authorization", "License x"), ("Authorization", "License y")], None),
    ([("Authorization", "License x"), ("authorization", "Bearer x")], None),
    ([("Authorization", "")], None),
    ([("Authorization", "License")], None),
    ([("Authorization", "License x, realm=y")], None),
    ([("Authorization", 'License token="x"')], None),
    ([], None),
    ([("X-License", "License x")], None),
]


@pytest.mark.parametrize(("headers", "token"), HEADERS)
def test_the_token_comes_from_one_authorization_header_only(
        headers: list[tuple[str, str]], token: str | None) -> None:
    assert token_from_headers(CIMultiDict(headers)) == token


def test_a_plain_dict_of_headers_is_read_whatever_the_name_case() -> None:
    assert token_from_headers({"authorization": "License x"}) == "x"


def test_token_ids_are_hex_so_no_id_reads_as_a_command_line_option() -> None:
    ids = {new_token_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 32 and i == i.lower() and int(i, 16) >= 0 for i in ids)
