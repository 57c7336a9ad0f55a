"""RFC 9421 / Web Bot Auth checks: published vectors, then an independent signer.

The signer below builds signature bases by hand from the RFC's rules and signs with
`cryptography` directly, so these tests do not check httpsig against itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from multidict import CIMultiDict

from gatekeeper.core.httpsig import (
    JwkError,
    SigFailure,
    SignatureRejected,
    SignedRequest,
    SignedResponse,
    build_signature_base,
    content_digest_matches,
    inspect_signature,
    jwk_thumbprint,
    key_from_jwk,
    normalize_origin,
    signature_agent_origin,
    verify_directory_signatures,
    verify_signature,
)

ROOT = Path(__file__).resolve().parents[3]
VECTORS = json.loads((ROOT / "tests/vectors/web-bot-auth/vectors.json").read_text())
REQUEST_VECTORS = VECTORS["web_bot_auth_request_vectors"]
TEST_KEY = VECTORS["keys"]["test-key-ed25519"]
TEST_KEYID, TEST_PUBLIC = key_from_jwk(TEST_KEY["public_jwk"])


def _vector_request(request: dict[str, Any],
                    extra: tuple[tuple[str, str], ...] = ()) -> SignedRequest:
    url = urlsplit(request["target_uri"])
    headers = request["headers"]
    pairs = list(headers.items()) if isinstance(headers, dict) else [tuple(h) for h in headers]
    return SignedRequest(request["method"], url.scheme, url.netloc, url.path, url.query,
                         CIMultiDict([*pairs, *extra]))


def _vector_id(vector: dict[str, Any]) -> str:
    return f"{vector['source']}-{vector['alg']}-{vector['label']}"


# Published vectors

@pytest.mark.parametrize("vector", REQUEST_VECTORS, ids=_vector_id)
def test_vector_signature_base_is_rebuilt_byte_for_byte(vector: dict[str, Any]) -> None:
    request = _vector_request(vector["request"])
    assert build_signature_base(request, vector["label"]) == vector["signature_base"].encode()


ED25519_VECTORS = [v for v in REQUEST_VECTORS if v["alg"] == "ed25519"]


@pytest.mark.parametrize("vector", ED25519_VECTORS, ids=_vector_id)
def test_ed25519_vector_verifies_at_its_verify_now(vector: dict[str, Any]) -> None:
    result = verify_signature(_vector_request(vector["request"]), {TEST_KEYID: TEST_PUBLIC},
                              vector["verify_now"])
    assert result.ok, result
    assert (result.keyid, result.label, result.nonce) == (TEST_KEYID, vector["label"],
                                                         vector["nonce"])
    assert (result.created, result.expires) == (vector["created"], vector["expires"])
    has_agent = vector["signature_agent_form"] != "absent"
    assert result.agent == ("https://signature-agent.test" if has_agent else None)


@pytest.mark.parametrize("vector", [v for v in REQUEST_VECTORS if v["alg"] != "ed25519"],
                         ids=_vector_id)
def test_rsa_pss_vector_is_refused_as_unsupported_alg(vector: dict[str, Any]) -> None:
    result = verify_signature(_vector_request(vector["request"]), {}, vector["verify_now"])
    assert result.reason is SigFailure.UNSUPPORTED_ALG


def test_rust_vector_is_expired_on_a_real_clock() -> None:
    vector = next(v for v in REQUEST_VECTORS if v["source"] == "cf-rust")
    result = verify_signature(_vector_request(vector["request"]), {TEST_KEYID: TEST_PUBLIC},
                              vector["expires"] + 3600)
    assert result.reason is SigFailure.EXPIRED


def test_rfc9421_b26_base_is_rebuilt_and_its_signature_checks() -> None:
    vector = VECTORS["rfc9421_b26_ed25519"]
    request = _vector_request(vector["request"], (("Signature-Input", vector["signature_input"]),
                                                  ("Signature", vector["signature"])))
    base = build_signature_base(request, vector["label"])
    assert base == vector["signature_base"].encode()
    signature = base64.b64decode(vector["signature"].split(":")[1])
    TEST_PUBLIC.verify(signature, base)  # raises if it does not match


def test_rfc9421_b26_fails_the_web_bot_auth_profile_for_lack_of_a_tag() -> None:
    vector = VECTORS["rfc9421_b26_ed25519"]
    request = _vector_request(vector["request"], (("Signature-Input", vector["signature_input"]),
                                                  ("Signature", vector["signature"])))
    assert verify_signature(request, {TEST_KEYID: TEST_PUBLIC}, 1618884480).reason \
        is SigFailure.WRONG_TAG


def _directory_vector() -> tuple[SignedResponse, bytes, int]:
    vector = VECTORS["directory_response_vector"]
    url = urlsplit(vector["request"]["target_uri"])
    request = SignedRequest("GET", url.scheme, url.netloc, url.path, "",
                            vector["request"]["headers"])
    response = SignedResponse(vector["response"]["status"], vector["response"]["headers"],
                              request)
    return response, vector["response"]["body"].encode(), vector["verify_now"]


def test_directory_response_vector_base_is_rebuilt_byte_for_byte() -> None:
    response, _, _ = _directory_vector()
    expected = VECTORS["directory_response_vector"]["signature_base"].encode()
    assert build_signature_base(response, "binding") == expected


def test_directory_response_vector_proves_its_key() -> None:
    response, body, now = _directory_vector()
    assert verify_directory_signatures(response, body, {TEST_KEYID: TEST_PUBLIC}, now) == {
        TEST_KEYID: 4889289600}


def test_directory_proof_fails_when_the_body_is_not_the_digested_one() -> None:
    response, body, now = _directory_vector()
    assert verify_directory_signatures(response, body + b" ", {TEST_KEYID: TEST_PUBLIC}, now) == {}


def test_directory_proof_fails_when_served_from_another_authority() -> None:
    response, body, now = _directory_vector()
    moved = replace(response, request=replace(response.request, authority="copycat.test"))
    assert verify_directory_signatures(moved, body, {TEST_KEYID: TEST_PUBLIC}, now) == {}


def test_directory_proof_created_in_the_future_is_refused() -> None:
    response, body, _ = _directory_vector()
    assert verify_directory_signatures(response, body, {TEST_KEYID: TEST_PUBLIC},
                                       1735689600 - 3600) == {}


@pytest.mark.parametrize("vector", VECTORS["jwk_thumbprint_vectors"],
                         ids=lambda v: v["thumbprint"][:8])
def test_jwk_thumbprint_vectors(vector: dict[str, Any]) -> None:
    jwk = vector.get("jwk") or VECTORS["keys"]["test-key-rsa-pss"]["public_jwk"]
    assert jwk_thumbprint(jwk) == vector["thumbprint"]


def test_key_from_jwk_gives_thumbprint_and_the_raw_key() -> None:
    thumbprint, key = key_from_jwk(TEST_KEY["public_jwk"])
    assert thumbprint == TEST_KEY["jwk_thumbprint_sha256_b64url"]
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert raw.hex() == TEST_KEY["public_raw_hex"]


@pytest.mark.parametrize("jwk", [
    {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
    {"kty": "OKP", "crv": "X25519", "x": TEST_KEY["public_jwk"]["x"]},
    {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"},
    {"kty": "OKP", "crv": "Ed25519", "x": TEST_KEY["public_jwk"]["x"] + "="},
    {"kty": "OKP", "crv": "Ed25519"},
    TEST_KEY["private_jwk"],
], ids=["rsa", "x25519", "short", "padded", "no-x", "private"])
def test_key_from_jwk_refuses_what_is_not_an_ed25519_public_key(jwk: dict[str, Any]) -> None:
    with pytest.raises(JwkError):
        key_from_jwk(jwk)


@pytest.mark.parametrize("vector", VECTORS["signature_agent_parsing_vectors"]["vectors"],
                         ids=lambda v: v["name"])
def test_signature_agent_vectors_name_an_origin_only_for_the_directory_type(
        vector: dict[str, Any]) -> None:
    expected = "https://signature-agent.test" if vector["name"] == "directory-default" else None
    assert signature_agent_origin({"Signature-Agent": vector["header"]}) == expected


# The independent signer

NOW = 1_800_000_000
AGENT = "https://agent.example"
PRIVATE = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"gatekeeper test key").digest())
OTHER = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"someone else").digest())
NONCE = base64.b64encode(hashlib.sha512(b"nonce").digest()).decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def keyid_of(private: Ed25519PrivateKey) -> str:
    x = _b64url(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    text = '{"crv":"Ed25519","kty":"OKP","x":"' + x + '"}'
    return _b64url(hashlib.sha256(text.encode()).digest())


KEYS = {keyid_of(PRIVATE): PRIVATE.public_key()}
DEFAULT_COVERED = ('"@method"', '"@authority"', '"@path"', '"signature-agent";key="agent1"')


@dataclass(frozen=True)
class Draft:
    """What the test signer signs; every field can be varied per test."""

    method: str = "GET"
    authority: str = "example.com"
    path: str = "/articles/1"
    query: str = ""
    covered: tuple[str, ...] = DEFAULT_COVERED
    created: int = NOW - 5
    expires: int | None = NOW + 60
    nonce: str | None = NONCE
    tag: str | None = "web-bot-auth"
    alg: str | None = "ed25519"
    agent: str = AGENT  # the value of member agent1
    agent_field: str | None = f'agent1="{AGENT}"'
    extra: dict[str, str] = field(default_factory=dict)
    label: str = "sig1"
    key: Ed25519PrivateKey = PRIVATE
    keyid: str = keyid_of(PRIVATE)

    def value(self, identifier: str) -> str:
        query = f"?{self.query}" if self.query else ""
        derived = {
            '"@method"': self.method,
            '"@authority"': self.authority,
            '"@scheme"': "https",
            '"@path"': self.path,
            '"@query"': f"?{self.query}",
            '"@request-target"': f"{self.path}{query}",
            '"@target-uri"': f"https://{self.authority}{self.path}{query}",
            '"signature-agent"': self.agent_field or "",
            '"signature-agent";key="agent1"': f'"{self.agent}"',
        }
        if identifier in derived:
            return derived[identifier]
        return {k.lower(): v for k, v in self.extra.items()}[identifier.strip('"')]

    def params(self) -> str:
        text = f"({' '.join(self.covered)});created={self.created}"
        text += f";expires={self.expires}" if self.expires is not None else ""
        text += f';keyid="{self.keyid}"'
        text += f';alg="{self.alg}"' if self.alg else ""
        text += f';nonce="{self.nonce}"' if self.nonce else ""
        return text + (f';tag="{self.tag}"' if self.tag else "")

    def base(self) -> str:
        lines = [f"{c}: {self.value(c)}" for c in self.covered]
        return "\n".join([*lines, f'"@signature-params": {self.params()}'])

    def headers(self) -> dict[str, str]:
        signature = base64.b64encode(self.key.sign(self.base().encode())).decode()
        headers = {"Signature-Input": f"{self.label}={self.params()}",
                   "Signature": f"{self.label}=:{signature}:", **self.extra}
        if self.agent_field is not None:
            headers["Signature-Agent"] = self.agent_field
        return headers

    def request(self, headers: Mapping[str, str] | None = None) -> SignedRequest:
        return SignedRequest(self.method, "https", self.authority, self.path, self.query,
                             self.headers() if headers is None else headers)


def test_independently_signed_request_verifies_with_every_result_field() -> None:
    result = verify_signature(Draft().request(), KEYS, NOW)
    assert result.ok, result
    assert result.keyid == keyid_of(PRIVATE)
    assert (result.label, result.nonce, result.agent) == ("sig1", NONCE, AGENT)
    assert (result.created, result.expires) == (NOW - 5, NOW + 60)


@pytest.mark.parametrize("covered", [
    ('"@target-uri"', '"signature-agent";key="agent1"'),
    ('"@authority"', '"@scheme"', '"@query"', '"@request-target"', '"signature-agent"'),
    ('"signature-agent";key="agent1"', '"@authority"', '"x-purpose"'),
], ids=["target-uri", "derived-and-whole-field", "header"])
def test_independently_signed_component_sets_verify(covered: tuple[str, ...]) -> None:
    draft = Draft(covered=covered, query="a=1&b=%20", extra={"X-Purpose": "search"})
    result = verify_signature(draft.request(), KEYS, NOW)
    assert result.ok, result
    assert result.agent == AGENT


def test_signed_request_without_signature_agent_verifies_with_no_agent() -> None:
    draft = Draft(agent_field=None, covered=('"@authority"', '"@path"'))
    result = verify_signature(draft.request(), KEYS, NOW)
    assert result.ok
    assert result.agent is None


def test_legacy_string_signature_agent_is_accepted() -> None:
    draft = Draft(agent_field=f'"{AGENT}"', covered=('"@authority"', '"signature-agent"'))
    result = verify_signature(draft.request(), KEYS, NOW)
    assert result.ok, result
    assert result.agent == AGENT


def test_header_names_are_case_insensitive_and_repeated_fields_fold() -> None:
    draft = Draft(covered=('"@authority"', '"signature-agent";key="agent1"', '"x-list"'),
                  extra={"X-List": "a, b"})
    headers = CIMultiDict((k.upper(), v) for k, v in draft.headers().items() if k != "X-List")
    headers.add("x-list", "a")
    headers.add("X-LIST", " b ")
    assert verify_signature(draft.request(headers), KEYS, NOW).ok


def test_the_web_bot_auth_signature_is_chosen_among_several() -> None:
    ours = Draft().headers()
    foreign = Draft(label="cdn", tag="cdn-hop", key=OTHER).headers()
    headers = {**ours,
               "Signature-Input": f"{foreign['Signature-Input']}, {ours['Signature-Input']}",
               "Signature": f"{foreign['Signature']}, {ours['Signature']}"}
    result = verify_signature(Draft().request(headers), KEYS, NOW)
    assert result.ok
    assert result.label == "sig1"


def test_signature_within_the_skew_window_verifies() -> None:
    assert verify_signature(Draft(created=NOW + 30).request(), KEYS, NOW).ok


def _tampered(**changes: str) -> SignedRequest:
    """A request signed as one thing and then changed: request parts are lower-case
    arguments (`path=`), headers are capitalised ones (`**{"X-Purpose": ...}`)."""
    draft = Draft(covered=(*DEFAULT_COVERED, '"x-purpose"'), extra={"X-Purpose": "search"})
    header_changes = {k: v for k, v in changes.items() if k[0].isupper()}
    parts = {k: v for k, v in changes.items() if k[0].islower()}
    request = draft.request({**draft.headers(), **header_changes})
    return SignedRequest(parts.get("method", request.method), "https",
                         parts.get("authority", request.authority),
                         parts.get("path", request.path), request.query, request.headers)


@pytest.mark.parametrize(("request_", "keys", "now", "reason"), [
    (_tampered(path="/articles/2"), KEYS, NOW, SigFailure.BAD_SIGNATURE),
    (_tampered(authority="evil.example"), KEYS, NOW, SigFailure.BAD_SIGNATURE),
    (_tampered(method="POST"), KEYS, NOW, SigFailure.BAD_SIGNATURE),
    (_tampered(**{"X-Purpose": "ai-train"}), KEYS, NOW, SigFailure.BAD_SIGNATURE),
    (_tampered(**{"Signature-Agent": 'agent1="https://evil.example"'}), KEYS, NOW,
     SigFailure.BAD_SIGNATURE),
    (Draft(expires=NOW - 61, created=NOW - 100).request(), KEYS, NOW, SigFailure.EXPIRED),
    (Draft(created=NOW - 301, expires=NOW + 3600).request(), KEYS, NOW, SigFailure.EXPIRED),
    (Draft(created=NOW + 61, expires=NOW + 400).request(), KEYS, NOW, SigFailure.NOT_YET_VALID),
    (Draft(nonce=None).request(), KEYS, NOW, SigFailure.NO_NONCE),
    (Draft(tag="something-else").request(), KEYS, NOW, SigFailure.WRONG_TAG),
    (Draft(tag=None).request(), KEYS, NOW, SigFailure.WRONG_TAG),
    (Draft(key=OTHER).request(), KEYS, NOW, SigFailure.BAD_SIGNATURE),
    (Draft(key=OTHER, keyid=keyid_of(OTHER)).request(), KEYS, NOW, SigFailure.UNKNOWN_KEY),
    (Draft(covered=('"@path"', '"signature-agent";key="agent1"')).request(), KEYS, NOW,
     SigFailure.MISSING_COMPONENT),
    (Draft(covered=('"@authority"', '"@path"')).request(), KEYS, NOW,
     SigFailure.MISSING_COMPONENT),
    (Draft(alg="rsa-pss-sha512").request(), KEYS, NOW, SigFailure.UNSUPPORTED_ALG),
    (Draft(expires=None).request(), KEYS, NOW, SigFailure.MALFORMED),
    (Draft(created=NOW, expires=NOW - 1).request(), KEYS, NOW, SigFailure.MALFORMED),
], ids=["path", "authority", "method", "covered-header", "signature-agent", "expired",
        "too-old", "not-yet-valid", "no-nonce", "wrong-tag", "no-tag", "wrong-key",
        "unknown-key", "no-authority", "agent-not-covered", "rsa-alg", "no-expires",
        "expires-before-created"])
def test_failures_report_their_reason(request_: SignedRequest, keys: dict[str, Any],
                                      now: int, reason: SigFailure) -> None:
    result = verify_signature(request_, keys, now)
    assert not result.ok
    assert result.reason is reason, result.detail


def test_covered_header_that_is_absent_is_a_missing_component() -> None:
    draft = Draft(covered=(*DEFAULT_COVERED, '"x-purpose"'), extra={"X-Purpose": "search"})
    headers = {k: v for k, v in draft.headers().items() if k != "X-Purpose"}
    assert verify_signature(draft.request(headers), KEYS, NOW).reason \
        is SigFailure.MISSING_COMPONENT


def test_covered_signature_agent_member_that_is_absent_is_a_missing_component() -> None:
    headers = {**Draft().headers(), "Signature-Agent": f'other="{AGENT}"'}
    assert verify_signature(Draft().request(headers), KEYS, NOW).reason \
        is SigFailure.MISSING_COMPONENT


def test_unsupported_derived_component_is_malformed() -> None:
    draft = Draft(covered=(*DEFAULT_COVERED, '"@query-param";name="a"'), query="a=1")
    # The signer cannot build this base by hand either; any signature will do.
    headers = Draft(covered=draft.covered[:-1]).headers()
    headers["Signature-Input"] = f"sig1={draft.params()}"
    assert verify_signature(draft.request(headers), KEYS, NOW).reason is SigFailure.MALFORMED


@pytest.mark.parametrize(("headers", "reason"), [
    ({}, SigFailure.MISSING),
    ({"Signature": "sig1=:AAAA:"}, SigFailure.MALFORMED),
    ({"Signature-Input": "sig1=(", "Signature": "sig1=:AAAA:"}, SigFailure.MALFORMED),
    ({"Signature-Input": 'sig1=("@authority");tag="web-bot-auth"', "Signature": "sig2=:AAAA:"},
     SigFailure.MALFORMED),
    ({"Signature-Input": 'sig1=("@authority");tag="web-bot-auth", sig1=("@path")',
      "Signature": "sig1=:AAAA:"}, SigFailure.MALFORMED),
    ({"Signature-Input": 'sig1=("@authority" "@authority");created=1;expires=2;keyid="k";'
                         'nonce="n";tag="web-bot-auth"', "Signature": "sig1=:AAAA:"},
     SigFailure.MALFORMED),
    ({"Signature-Input": 'sig1=("@authority");created=?1;expires=2;keyid="k";nonce="n";'
                         'tag="web-bot-auth"', "Signature": "sig1=:AAAA:"}, SigFailure.MALFORMED),
    ({"Signature-Input": 'sig1=("Host" "@authority");created=1;expires=2;keyid="k";nonce="n";'
                         'tag="web-bot-auth"', "Signature": "sig1=:AAAA:"}, SigFailure.MALFORMED),
], ids=["none", "signature-alone", "unparsable", "label-mismatch", "duplicate-label",
        "duplicate-component", "boolean-created", "upper-case-field"])
def test_broken_signature_fields_are_missing_or_malformed(headers: dict[str, str],
                                                          reason: SigFailure) -> None:
    request = SignedRequest("GET", "https", "example.com", "/", "", headers)
    assert verify_signature(request, KEYS, 10).reason is reason


def test_failed_result_keeps_what_was_parsed_for_the_logs() -> None:
    result = verify_signature(Draft(created=NOW - 400, expires=NOW + 60).request(), KEYS, NOW)
    assert result.reason is SigFailure.EXPIRED
    assert (result.keyid, result.nonce, result.label) == (keyid_of(PRIVATE), NONCE, "sig1")


def test_inspection_needs_no_key_and_stops_before_key_lookup() -> None:
    candidate = inspect_signature(Draft().request(), NOW)
    assert candidate.failure is None
    assert candidate.base == Draft().base().encode()
    assert candidate.agent == AGENT
    assert candidate.agent_header


def test_signature_agent_of_another_discovery_type_names_no_agent() -> None:
    draft = Draft(agent_field=f'agent1="{AGENT}/jwks.json";type=jwks_uri',
                  covered=('"@authority"', '"signature-agent"'))
    result = verify_signature(draft.request(), KEYS, NOW)
    assert result.ok
    assert result.agent is None


@pytest.mark.parametrize(("headers", "origin"), [
    ({"Signature-Agent": 'a="https://Crawler.Example:443/"'}, "https://crawler.example"),
    ({"signature-agent": '"https://crawler.example:8443"'}, "https://crawler.example:8443"),
    ({"Signature-Agent": 'a="http://crawler.example"'}, None),
    ({"Signature-Agent": 'a="https://crawler.example/keys"'}, None),
    ({"Signature-Agent": 'a="https://a.example", b="https://b.example"'}, None),
    ({"Signature-Agent": "a=1"}, None),
    ({}, None),
], ids=["dictionary", "legacy-with-port", "http", "path", "ambiguous", "not-a-string",
        "absent"])
def test_signature_agent_origin(headers: dict[str, str], origin: str | None) -> None:
    assert signature_agent_origin(headers) == origin


@pytest.mark.parametrize(("value", "origin"), [
    ("https://example.com", "https://example.com"),
    ("HTTPS://EXAMPLE.com:443", "https://example.com"),
    ("https://[::1]:8443/", "https://[::1]:8443"),
    ("https://example.com:0", None),
    ("https://user@example.com", None),
    ("https://example.com?x", None),
])
def test_normalize_origin(value: str, origin: str | None) -> None:
    assert normalize_origin(value) == origin


def test_content_digest_needs_a_known_algorithm_that_matches() -> None:
    body = b'{"keys":[]}'
    sha256 = base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert content_digest_matches(f"sha-256=:{sha256}:", body)
    assert not content_digest_matches(f"sha-256=:{sha256}:", body + b"\n")
    assert not content_digest_matches("md5=:AAAA:", body)


def test_build_signature_base_names_an_unknown_label() -> None:
    with pytest.raises(SignatureRejected, match="no member 'nope'"):
        build_signature_base(Draft().request(), "nope")


# The worked example in docs/web-bot-auth.md

DOCS_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
DOCS_EXAMPLE = Draft(
    authority="news.example", path="/articles/42", created=1_767_225_600,
    expires=1_767_225_900, key=DOCS_KEY, keyid=keyid_of(DOCS_KEY),
    nonce=base64.b64encode(hashlib.sha512(b"gatekeeper docs example").digest()).decode(),
    agent="https://crawler.example", agent_field='agent1="https://crawler.example"',
    covered=('"@method"', '"@authority"', '"@path"', '"signature-agent";key="agent1"'),
)


def test_worked_example_in_the_docs_is_current_and_verifies() -> None:
    docs = (ROOT / "docs/web-bot-auth.md").read_text()
    for name, value in DOCS_EXAMPLE.headers().items():
        assert f"{name}: {value}" in docs, name
    assert keyid_of(DOCS_KEY) in docs
    request = DOCS_EXAMPLE.request()
    result = verify_signature(request, {keyid_of(DOCS_KEY): DOCS_KEY.public_key()},
                              1_767_225_610)
    assert result.ok, result
    assert result.agent == "https://crawler.example"


def test_directory_example_in_the_docs_proves_its_key() -> None:
    lines = (ROOT / "docs/web-bot-auth.md").read_text().splitlines()
    start = lines.index("HTTP/1.1 200 OK")
    end = lines.index("", start)  # the blank line between header and body
    headers = dict(line.split(": ", 1) for line in lines[start + 1:end])
    body = lines[end + 1].encode()
    request = SignedRequest("GET", "https", "crawler.example",
                            "/.well-known/http-message-signatures-directory")
    keyid = keyid_of(DOCS_KEY)
    proofs = verify_directory_signatures(SignedResponse(200, headers, request), body,
                                         {keyid: DOCS_KEY.public_key()}, 1_767_225_600)
    assert proofs == {keyid: 1_767_826_800}
