"""Web Bot Auth checks on RFC 9421 HTTP Message Signatures, without I/O or clock reads.

Parses `Signature-Input`, `Signature` and `Signature-Agent` (RFC 9651 structured
fields), rebuilds the RFC 9421 signature base for the components Gatekeeper can
compute, checks the Web Bot Auth profile (tag, Ed25519, freshness, nonce, coverage of
`@authority` and `Signature-Agent`) and verifies Ed25519 signatures against keys the
caller supplies. Key discovery is `gatekeeper.verify.keydir`; the replay check is
`gatekeeper.verify.webbotauth`.

Checks run cheapest first and stop at the first failure, so a request that would
fail anyway never causes a key-directory fetch: parse, tag, algorithm, coverage,
nonce, time window, signature base, then (with keys) key lookup and the signature.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Final

import http_sf
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from http_sf.types import BareItemType, DictionaryType, InnerListType, ItemType

from gatekeeper.errors import GatekeeperError

WEB_BOT_AUTH_TAG: Final = "web-bot-auth"
DIRECTORY_TAG: Final = "http-message-signatures-directory"
ED25519: Final = "ed25519"
# Nonces become replay-cache keys; a bound keeps one request from storing a megabyte.
MAX_NONCE_LENGTH: Final = 256

_FIELD_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_HTTPS_ORIGIN = re.compile(
    r"https://(?P<host>[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?/?",
    re.IGNORECASE,
)
_DEFAULT_PORTS: Final = {"http": "80", "https": "443"}
# RFC 7638 section 3.2: the required members per key type, the only ones hashed.
_THUMBPRINT_MEMBERS: Final = {
    "OKP": ("crv", "kty", "x"),
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "oct": ("k", "kty"),
}


class SigFailure(StrEnum):
    """Why a signature did not verify; the values are bounded metric label values."""

    MISSING = "missing"  # neither Signature-Input nor Signature
    MALFORMED = "malformed"  # unparsable fields, bad parameter types, unsupported component
    WRONG_TAG = "wrong-tag"  # no signature carries the required tag
    UNSUPPORTED_ALG = "unsupported-alg"  # alg present and not ed25519
    MISSING_COMPONENT = "missing-component"  # required coverage absent, covered field absent
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    NO_NONCE = "no-nonce"
    UNKNOWN_KEY = "unknown-key"  # no key for keyid, or the agent is not allowed
    BAD_SIGNATURE = "bad-signature"
    REPLAYED = "replayed"  # set by the verifier's replay cache
    DIRECTORY_ERROR = "directory-error"  # set by the verifier when key discovery failed


class SignatureRejected(GatekeeperError):
    """A signature failed a check; `reason` says which, `detail` says how."""

    def __init__(self, reason: SigFailure, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class JwkError(GatekeeperError):
    """A JSON Web Key is not one Gatekeeper can use."""


def _fold_headers(headers: Mapping[str, str]) -> dict[str, str]:
    # RFC 9421 section 2.1: a field sent on several lines is one value, the trimmed
    # line values joined with ", ". Iterating items() sees every line of a multidict.
    folded: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        value = value.strip()
        folded[key] = f"{folded[key]}, {value}" if key in folded else value
    return folded


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """The parts of a request a signature can cover, as the signer sent them.

    `authority` is the Host the client used (not an upstream's), `path` the raw target
    path before any canonicalisation, `query` the raw query without its `?` ("" when
    absent). Header names are case-insensitive: they are lower-cased here, and repeated
    fields (from a multidict) are folded into one value.
    """

    method: str
    scheme: str
    authority: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _fold_headers(self.headers))


@dataclass(frozen=True, slots=True)
class SignedResponse:
    """A response whose signature may cover components of `request` (the `req` flag)."""

    status: int
    headers: Mapping[str, str]
    request: SignedRequest

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _fold_headers(self.headers))


Message = SignedRequest | SignedResponse


@dataclass(frozen=True, slots=True)
class Component:
    """One covered component: a field name or derived `@name`, with its parameters."""

    name: str
    params: Mapping[str, BareItemType] = field(default_factory=dict)

    @property
    def identifier(self) -> str:
        """The serialized component identifier, as it appears in the signature base."""
        return http_sf.ser((self.name, dict(self.params)))


@dataclass(frozen=True, slots=True)
class SigResult:
    ok: bool
    reason: SigFailure | None = None
    keyid: str | None = None
    label: str | None = None
    nonce: str | None = None
    agent: str | None = None  # the covered Signature-Agent origin, e.g. "https://chatgpt.com"
    created: int | None = None
    expires: int | None = None
    detail: str = ""  # for logs and `gatekeeper explain`; never a metric label
    # Accepted while the replay cache was unreachable: a documented store fallback.
    replay_unchecked: bool = False


@dataclass(frozen=True, slots=True)
class Candidate:
    """A signature that passed every check that needs no key (or the first it failed).

    Splitting here lets the caller find the key (a directory fetch) only for
    signatures that are otherwise acceptable.
    """

    failure: SigFailure | None = None
    detail: str = ""
    label: str | None = None
    keyid: str | None = None
    nonce: str | None = None
    created: int | None = None
    expires: int | None = None
    agent: str | None = None
    agent_header: bool = False  # a Signature-Agent field was sent (covered or not)
    components: tuple[Component, ...] = ()
    base: bytes = b""
    signature: bytes = b""

    def result(self, reason: SigFailure | None, detail: str = "") -> SigResult:
        return SigResult(
            ok=reason is None, reason=reason, keyid=self.keyid, label=self.label,
            nonce=self.nonce, agent=self.agent, created=self.created,
            expires=self.expires, detail=detail or self.detail,
        )


@dataclass(frozen=True, slots=True)
class _Parsed:
    """One Signature-Input member and its Signature value, syntax-checked."""

    label: str
    components: tuple[Component, ...]
    params: Mapping[str, BareItemType]
    params_value: str  # the serialized member: the `@signature-params` line's value
    signature: bytes


def _malformed(detail: str) -> SignatureRejected:
    return SignatureRejected(SigFailure.MALFORMED, detail)


def _refuse_duplicate(key: str, context: str) -> None:
    # RFC 8941 lets the last duplicate win; for a signature that ambiguity is an attack.
    raise _malformed(f"duplicate {context} key {key!r}")


def _parse_dictionary(value: str, what: str) -> DictionaryType:
    try:
        parsed = http_sf.parse(value.encode("ascii"), tltype="dictionary",
                               on_duplicate_key=_refuse_duplicate)
    except (http_sf.StructuredFieldError, UnicodeEncodeError) as exc:
        raise _malformed(f"{what} is not a structured-field dictionary: {exc}") from None
    if not isinstance(parsed, dict):
        raise _malformed(f"{what} is not a structured-field dictionary")
    return parsed


def _inner_list(member: ItemType | InnerListType) -> tuple[list[ItemType], dict[str, BareItemType]]:
    if isinstance(member, tuple) and len(member) == 2 and isinstance(member[0], list):
        items, params = member
        if isinstance(params, dict):
            return items, params
    raise _malformed("a Signature-Input member is not an inner list")


def _components(items: list[ItemType]) -> tuple[Component, ...]:
    components: list[Component] = []
    seen: set[str] = set()
    for item in items:
        if not (isinstance(item, tuple) and isinstance(item[0], str) and isinstance(item[1], dict)):
            raise _malformed("a covered component is not a string")
        name, params = item[0], item[1]
        if name == "@signature-params":
            raise _malformed("@signature-params cannot be covered")
        if not name.startswith("@") and not _FIELD_NAME.fullmatch(name):
            raise _malformed(f"covered field name {name!r} is not a lower-case field name")
        component = Component(name, params)
        if component.identifier in seen:
            raise _malformed(f"{component.identifier} is covered twice")
        seen.add(component.identifier)
        components.append(component)
    return tuple(components)


def _signature_members(message: Message) -> tuple[DictionaryType, DictionaryType]:
    inputs = message.headers.get("signature-input")
    values = message.headers.get("signature")
    if inputs is None and values is None:
        raise SignatureRejected(SigFailure.MISSING, "no Signature-Input or Signature field")
    if inputs is None or values is None:
        raise _malformed("Signature-Input and Signature must be sent together")
    return (_parse_dictionary(inputs, "Signature-Input"), _parse_dictionary(values, "Signature"))


def _parse_member(label: str, member: ItemType | InnerListType,
                  values: DictionaryType) -> _Parsed:
    items, params = _inner_list(member)
    signature = values.get(label)
    if not (isinstance(signature, tuple) and isinstance(signature[0], bytes)):
        raise _malformed(f"Signature has no byte-sequence member {label!r}")
    return _Parsed(label, _components(items), params, http_sf.ser([(items, params)]),
                   signature[0])


def _select(message: Message, required_tag: str) -> _Parsed:
    inputs, values = _signature_members(message)
    for label, member in inputs.items():
        _, params = _inner_list(member)
        # Several signatures may ride on one request (a CDN's, the agent's); the first
        # carrying our tag is the one this profile judges, the others are not ours.
        if params.get("tag") == required_tag:
            return _parse_member(label, member, values)
    raise SignatureRejected(SigFailure.WRONG_TAG, f"no signature has tag={required_tag!r}")


def _int_param(params: Mapping[str, BareItemType], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    # bool is an int in Python, and `?1` is not a time.
    if type(value) is not int or value < 0:
        raise _malformed(f"{name} must be a non-negative integer")
    return value


def _str_param(params: Mapping[str, BareItemType], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _malformed(f"{name} must be a string")
    return value


# Signature base (RFC 9421 section 2.5)

def _authority(request: SignedRequest) -> str:
    # RFC 9421 section 2.2.3: lower-case, and the scheme's default port left out.
    authority = request.authority.lower()
    host, sep, port = authority.rpartition(":")
    if sep and port == _DEFAULT_PORTS.get(request.scheme.lower()):
        return host
    return authority


def _derived(name: str, message: Message) -> str:
    if isinstance(message, SignedResponse):
        if name == "@status":
            return f"{message.status:03d}"
        raise _malformed(f"{name} on a response needs the req flag")
    query = f"?{message.query}" if message.query else ""
    path = message.path or "/"
    if name == "@method":
        return message.method
    if name == "@authority":
        return _authority(message)
    if name == "@scheme":
        return message.scheme.lower()
    if name == "@target-uri":
        return f"{message.scheme.lower()}://{_authority(message)}{path}{query}"
    if name == "@request-target":
        return f"{path}{query}"
    if name == "@path":
        return path
    if name == "@query":
        # RFC 9421 section 2.2.7: an absent query is the "?" alone.
        return f"?{message.query}"
    raise _malformed(f"covered component {name} is not supported")


def _component_value(component: Component, message: Message) -> str:
    params = dict(component.params)
    if params.pop("req", False):
        if not isinstance(message, SignedResponse):
            raise _malformed("the req flag is only valid on a response")
        message = message.request
    if component.name.startswith("@"):
        if params:
            raise _malformed(f"unsupported parameters on {component.identifier}")
        return _derived(component.name, message)
    key = params.pop("key", None)
    if params:
        raise _malformed(f"unsupported parameters on {component.identifier}")
    value = message.headers.get(component.name)
    if value is None:
        raise SignatureRejected(SigFailure.MISSING_COMPONENT,
                                f"covered field {component.name} is not in the message")
    if key is None:
        return value
    if not isinstance(key, str):
        raise _malformed(f"the key parameter of {component.identifier} is not a string")
    members = _parse_dictionary(value, component.name)
    if key not in members:
        raise SignatureRejected(SigFailure.MISSING_COMPONENT,
                                f"{component.name} has no member {key!r}")
    return http_sf.ser([members[key]])


def _base(message: Message, parsed: _Parsed) -> bytes:
    lines = []
    for component in parsed.components:
        value = _component_value(component, message)
        if "\n" in value or "\r" in value:
            raise _malformed(f"{component.identifier} contains a line break")
        lines.append(f"{component.identifier}: {value}")
    lines.append(f'"@signature-params": {parsed.params_value}')
    # Header values reach Python decoded with surrogateescape; this restores their bytes.
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def build_signature_base(message: Message, label: str) -> bytes:
    """The RFC 9421 signature base of the signature `label` carried by `message`.

    Raises `SignatureRejected` when the fields do not parse or a component cannot be
    computed.
    """
    inputs, values = _signature_members(message)
    member = inputs.get(label)
    if member is None:
        raise _malformed(f"Signature-Input has no member {label!r}")
    return _base(message, _parse_member(label, member, values))


# Signature-Agent

def normalize_origin(value: str) -> str | None:
    """`value` as a lower-case https origin without default port, or None if it is not one.

    An empty path or "/" is accepted (the draft allows "/"); any other path, a query,
    a fragment or user info means the value is not an origin.
    """
    match = _HTTPS_ORIGIN.fullmatch(value.strip())
    if match is None:
        return None
    host = match["host"].lower()
    port = match["port"]
    if port is None:
        return f"https://{host}"
    number = int(port)
    if not 0 < number < 65536:
        return None
    return f"https://{host}" if number == 443 else f"https://{host}:{number}"


def _member_origin(member: ItemType | InnerListType) -> str | None:
    if not (isinstance(member, tuple) and isinstance(member[0], str)
            and isinstance(member[1], dict)):
        return None
    value, params = member[0], member[1]
    # A type other than the default `directory` (jwks_uri, cimd) names another
    # discovery mechanism, which Gatekeeper does not implement: such a member
    # identifies no origin whose directory we could fetch.
    kind = params.get("type")
    if kind is not None and str(kind) != "directory":
        return None
    return normalize_origin(value)


def _agent_members(value: str) -> tuple[DictionaryType, bool]:
    """The Signature-Agent members, and whether the field used the legacy string form."""
    # Older drafts (and deployments still live) send a bare sf-string,
    # `Signature-Agent: "https://agent.example"`, instead of a dictionary. We accept it
    # for compatibility; the two forms differ in the first character.
    if value.lstrip().startswith('"'):
        try:
            item = http_sf.parse(value.encode("ascii"), tltype="item")
        except (http_sf.StructuredFieldError, UnicodeEncodeError) as exc:
            raise _malformed(f"Signature-Agent is not a string: {exc}") from None
        if not (isinstance(item, tuple) and isinstance(item[0], str)):
            raise _malformed("Signature-Agent is not a string")
        return {"": item}, True
    return _parse_dictionary(value, "Signature-Agent"), False


def signature_agent_origin(headers: Mapping[str, str]) -> str | None:
    """The https origin a request's Signature-Agent names, when it names exactly one."""
    value = _fold_headers(headers).get("signature-agent")
    if value is None:
        return None
    try:
        members, _ = _agent_members(value)
    except SignatureRejected:
        return None
    if len(members) != 1:
        return None
    return _member_origin(next(iter(members.values())))


def _covered_agent(message: SignedRequest, parsed: _Parsed) -> str | None:
    """The origin of the Signature-Agent member this signature covers, if it names one."""
    value = message.headers["signature-agent"]
    members, legacy = _agent_members(value)
    covered = [c for c in parsed.components if c.name == "signature-agent"]
    keys = [key for c in covered if isinstance(key := c.params.get("key"), str)]
    if legacy:
        return _member_origin(members[""]) if any(not c.params for c in covered) else None
    # The draft says the member keyed by the signature's label is covered; published
    # vectors cover `agent2` from signature `sig2`. Prefer the label, accept another
    # covered member: a signature is only ever attributed to a member it covers.
    chosen: str | None = None
    if parsed.label in keys:
        chosen = parsed.label
    elif keys:
        chosen = keys[0]
    elif any(not c.params for c in covered):
        # The whole field is covered: it names an agent only if it is unambiguous.
        if parsed.label in members:
            chosen = parsed.label
        elif len(members) == 1:
            chosen = next(iter(members))
    member = members.get(chosen) if chosen is not None else None
    return _member_origin(member) if member is not None else None


# The Web Bot Auth request profile

def _check_profile(parsed: _Parsed, message: SignedRequest) -> None:
    alg = _str_param(parsed.params, "alg")
    if alg is not None and alg != ED25519:
        raise SignatureRejected(SigFailure.UNSUPPORTED_ALG,
                                f"alg={alg!r}; only ed25519 is supported")
    names = {c.name for c in parsed.components if not c.params}
    # The draft asks for @authority or @target-uri: both bind the signature to the site.
    if not names & {"@authority", "@target-uri"}:
        raise SignatureRejected(SigFailure.MISSING_COMPONENT,
                                "the signature covers neither @authority nor @target-uri")
    if "signature-agent" in message.headers and not any(
            c.name == "signature-agent" for c in parsed.components):
        raise SignatureRejected(SigFailure.MISSING_COMPONENT,
                                "Signature-Agent is present but not covered")


def _check_time(created: int, expires: int | None, now: float,
                max_skew: float, max_age: float) -> None:
    if expires is not None and expires < created:
        raise _malformed("expires is before created")
    if created > now + max_skew:
        raise SignatureRejected(SigFailure.NOT_YET_VALID, f"created {created} is in the future")
    if expires is not None and expires + max_skew < now:
        raise SignatureRejected(SigFailure.EXPIRED, f"expired at {expires}")
    # The window is [created - skew, created + max_age]: its length, max_age + skew,
    # is how long the replay cache must remember a nonce.
    if now - created > max_age:
        raise SignatureRejected(SigFailure.EXPIRED,
                                f"created {created} is older than {max_age:g} s")


def inspect_signature(request: SignedRequest, now: float, *, max_skew: float = 60.0,
                      max_age: float = 300.0,
                      required_tag: str = WEB_BOT_AUTH_TAG) -> Candidate:
    """Run every check that needs no key; `Candidate.failure` is the first one failed."""
    candidate = Candidate(agent_header="signature-agent" in request.headers)
    try:
        parsed = _select(request, required_tag)
        candidate = replace(candidate, label=parsed.label, components=parsed.components,
                            signature=parsed.signature)
        keyid = _str_param(parsed.params, "keyid")
        nonce = _str_param(parsed.params, "nonce")
        created = _int_param(parsed.params, "created")
        expires = _int_param(parsed.params, "expires")
        candidate = replace(candidate, keyid=keyid, nonce=nonce, created=created,
                            expires=expires)
        if keyid is None or created is None or expires is None:
            raise _malformed("keyid, created and expires are required")
        _check_profile(parsed, request)
        if not nonce:
            raise SignatureRejected(SigFailure.NO_NONCE, "the signature has no nonce")
        if len(nonce) > MAX_NONCE_LENGTH:
            raise _malformed(f"nonce longer than {MAX_NONCE_LENGTH} characters")
        _check_time(created, expires, now, max_skew, max_age)
        base = _base(request, parsed)
        agent = _covered_agent(request, parsed) if candidate.agent_header else None
        return replace(candidate, base=base, agent=agent)
    except SignatureRejected as rejected:
        return replace(candidate, failure=rejected.reason, detail=rejected.detail)


def _ed25519_valid(key: Ed25519PublicKey, signature: bytes, base: bytes) -> bool:
    try:
        key.verify(signature, base)
    except InvalidSignature:
        return False
    return True


def verify_candidate(candidate: Candidate, keys: Mapping[str, Ed25519PublicKey]) -> SigResult:
    """Finish `inspect_signature`'s work: find the key by keyid and check the signature."""
    if candidate.failure is not None:
        return candidate.result(candidate.failure)
    key = keys.get(candidate.keyid or "")
    if key is None:
        return candidate.result(SigFailure.UNKNOWN_KEY, f"no key with keyid {candidate.keyid!r}")
    if not _ed25519_valid(key, candidate.signature, candidate.base):
        return candidate.result(SigFailure.BAD_SIGNATURE, "the signature does not match")
    return candidate.result(None)


def verify_signature(request: SignedRequest, keys: Mapping[str, Ed25519PublicKey], now: float,
                     *, max_skew: float = 60.0, max_age: float = 300.0,
                     required_tag: str = WEB_BOT_AUTH_TAG) -> SigResult:
    """Verify the request's Web Bot Auth signature with `keys` (keyid -> key) at `now`."""
    candidate = inspect_signature(request, now, max_skew=max_skew, max_age=max_age,
                                  required_tag=required_tag)
    return verify_candidate(candidate, keys)


# The directory response's possession proofs

def content_digest_matches(value: str, body: bytes) -> bool:
    """True when the Content-Digest field (RFC 9530) has a sha-256/sha-512 digest and
    every such digest it carries matches `body`."""
    try:
        digests = _parse_dictionary(value, "Content-Digest")
    except SignatureRejected:
        return False
    checked = False
    for name, algorithm in (("sha-256", hashlib.sha256), ("sha-512", hashlib.sha512)):
        member = digests.get(name)
        if member is None:
            continue
        if not (isinstance(member, tuple) and isinstance(member[0], bytes)):
            return False
        if member[0] != algorithm(body).digest():
            return False
        checked = True
    return checked


def _directory_proof(response: SignedResponse, body: bytes, parsed: _Parsed,
                     keys: Mapping[str, Ed25519PublicKey], now: float,
                     max_skew: float) -> tuple[str, int] | None:
    keyid = _str_param(parsed.params, "keyid")
    created = _int_param(parsed.params, "created")
    expires = _int_param(parsed.params, "expires")
    alg = _str_param(parsed.params, "alg")
    if keyid is None or created is None or expires is None or keyid not in keys:
        return None
    if alg is not None and alg != ED25519:
        return None
    identifiers = {c.identifier for c in parsed.components}
    if not {'"@authority";req', '"content-digest"'} <= identifiers:
        return None
    # A future `created` would outrank every later fetch (draft, domain binding).
    if created > now + max_skew or expires + max_skew < now or expires < created:
        return None
    digest = response.headers.get("content-digest")
    if digest is None or not content_digest_matches(digest, body):
        return None
    if not _ed25519_valid(keys[keyid], parsed.signature, _base(response, parsed)):
        return None
    return keyid, expires


def verify_directory_signatures(response: SignedResponse, body: bytes,
                                keys: Mapping[str, Ed25519PublicKey], now: float, *,
                                max_skew: float = 60.0) -> dict[str, int]:
    """The keys that proved possession on a key-directory response: keyid -> `expires`.

    A proof is a signature with tag `http-message-signatures-directory` by one of the
    directory's own keys, covering `"@authority";req` (the directory's host, so the
    key set cannot be re-served elsewhere) and `content-digest`, which must match
    `body`. Signatures that fail any check are ignored, not fatal: the result is the
    set that passed.
    """
    try:
        inputs, values = _signature_members(response)
    except SignatureRejected:
        return {}
    proven: dict[str, int] = {}
    for label, member in inputs.items():
        try:
            _, params = _inner_list(member)
            if params.get("tag") != DIRECTORY_TAG:
                continue
            proof = _directory_proof(response, body, _parse_member(label, member, values),
                                     keys, now, max_skew)
        except SignatureRejected:
            continue
        if proof is not None:
            proven[proof[0]] = proof[1]
    return proven


# JSON Web Keys

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    if not _B64URL.fullmatch(text):
        raise JwkError("not unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    # Only the canonical spelling: another one would give the same key another thumbprint.
    if _b64url(data) != text:
        raise JwkError("not canonical base64url")
    return data


def jwk_thumbprint(jwk: Mapping[str, object]) -> str:
    """The RFC 7638 SHA-256 thumbprint of `jwk`, base64url without padding."""
    kty = jwk.get("kty")
    names = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if names is None:
        raise JwkError(f"unsupported key type {kty!r}")
    members: dict[str, str] = {}
    for name in names:
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise JwkError(f"a {kty} key needs a string {name!r}")
        members[name] = value
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def key_from_jwk(jwk: Mapping[str, object]) -> tuple[str, Ed25519PublicKey]:
    """(RFC 7638 thumbprint, key) of an Ed25519 public JWK (kty OKP, crv Ed25519)."""
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise JwkError("not an Ed25519 key (kty OKP, crv Ed25519)")
    if "d" in jwk:
        raise JwkError("the JWK holds private key material")
    x = jwk.get("x")
    if not isinstance(x, str):
        raise JwkError("an OKP key needs a string 'x'")
    raw = _b64url_decode(x)
    if len(raw) != 32:
        raise JwkError("an Ed25519 public key is 32 bytes")
    return jwk_thumbprint(jwk), Ed25519PublicKey.from_public_bytes(raw)
