"""Licence tokens: issued to a crawler vendor, verified offline at the edge.

A token is a JWT (RFC 7519) signed with Ed25519 (JWS `alg` `EdDSA`, RFC 8037), so any
replica verifies it with public keys alone. The protected header is exactly
`{"alg": "EdDSA", "kid": <key id>, "typ": "JWT"}`; the key id names a key of the
site's keyring (`gatekeeper.licensing.keys`). The claims:

- `iss`: the site that issued the token; must equal the verifier's issuer.
- `aud`: list of the hosts the token may be presented to (lower case, no port).
- `sub`: the licensee the token was issued to.
- `nbf`, `exp`, `iat`: not-before, expiry and issue time, NumericDate seconds.
- `jti`: the token id; revocation and the usage ledger name a token by it.
- `crawler`: the catalog name of the only crawler that may present the token.
- `crawler_key`: the RFC 7638 thumbprint of that crawler's Web Bot Auth key, or null.
  When set, the request must be signed with that key.
- `license`: the name of the policy licence the token was issued under.
- `usages`: the RSL usage values the token grants (a subset of the licence's).
- `paths`: path globs that narrow the licence's own paths; empty means the licence's.

`TokenVerifier.verify` is pure CPU (no I/O, the time is an argument) and stops at the
first failure: size and header, `alg` (exactly `EdDSA`: `none`, HMAC and RSA tokens are
refused before any key is touched, which defeats algorithm confusion), key id, signature,
claims, then not-before/expiry, issuer and audience. `scope_check` then compares the
claims with the request and the policy's licence. Revocation and quotas need the store,
so the caller checks them and reports `revoked` and `over-quota` with the same enum.
"""

from __future__ import annotations

import base64
import json
import math
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from gatekeeper.core.globs import GlobError, compile_path_glob
from gatekeeper.core.model import License, Pattern
from gatekeeper.errors import GatekeeperError

ALGORITHM: Final = "EdDSA"
TOKEN_TYPE: Final = "JWT"
# Far above any token Gatekeeper issues; caps the work an unauthenticated header can cause.
MAX_TOKEN_LENGTH: Final = 8192
AUTH_SCHEMES: Final = frozenset({"license", "bearer"})

_B64URL = re.compile(r"[A-Za-z0-9_-]+")
# RFC 9110 token68: base64url (what a JWT is) plus the base64 characters and padding.
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*")
# Key ids in details must stay short and printable: the header is attacker-controlled.
_PRINTABLE_ID = re.compile(r"[A-Za-z0-9._~+/=-]{1,64}")
# RSL 1.0 §3.4.1: `all` is any automated use, `ai-all` any AI use.
_AI_USAGES: Final = frozenset({"ai-all", "ai-train", "ai-input", "ai-index"})
# Only EdDSA is registered, so even a caller's mistake cannot enable another algorithm.
_JWS: Final = jwt.PyJWS(algorithms=[ALGORITHM])


class TokenFailure(StrEnum):
    """Why a token was refused; the values are bounded metric label values."""

    MALFORMED = "malformed"  # not a JWT, bad header or claims, unsupported header extension
    BAD_SIGNATURE = "bad-signature"  # tampered, or signed by another key under a known kid
    UNKNOWN_KEY = "unknown-key"  # kid not in the keyring (never issued, or removed)
    WRONG_ALG = "wrong-alg"  # alg other than EdDSA
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    WRONG_AUDIENCE = "wrong-audience"  # the request's host is not among the token's hosts
    WRONG_ISSUER = "wrong-issuer"
    WRONG_CRAWLER = "wrong-crawler"  # presented by another crawler, or signed by another key
    REVOKED = "revoked"  # set by the caller after the store's revocation check
    OUT_OF_SCOPE = "out-of-scope"  # the path or a needed usage is not granted
    OVER_QUOTA = "over-quota"  # set by the caller from the licence's limits
    UNKNOWN_LICENSE = "unknown-license"  # the licence is not (or no longer) in the policy


class TokenError(GatekeeperError):
    """Values a token cannot be issued with, or a verifier cannot be built from."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The private key that signs new tokens, and the key id verifiers know it by."""

    kid: str
    private_key: Ed25519PrivateKey = field(repr=False)


@dataclass(frozen=True, slots=True)
class LicenseClaims:
    """What a token says. Hosts are stored lower-case; times are epoch seconds."""

    issuer: str
    audience: tuple[str, ...]
    subject: str
    crawler: str
    crawler_key: str | None
    license: str
    usages: tuple[str, ...]
    paths: tuple[str, ...]
    not_before: float
    expires: float
    token_id: str
    # Compiled once per token: verified claims are cached, so scope checks reuse them.
    compiled_paths: tuple[Pattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("issuer", "subject", "crawler", "license", "token_id"):
            if not getattr(self, name):
                raise TokenError(f"{name} must not be empty")
        if self.crawler_key == "":
            raise TokenError("crawler_key must be a key thumbprint or None, not empty")
        hosts = tuple(host.lower() for host in self.audience)
        if not hosts or not all(hosts):
            raise TokenError("audience must name at least one host")
        if not (math.isfinite(self.not_before) and math.isfinite(self.expires)):
            raise TokenError("not_before and expires must be finite numbers")
        if self.expires <= self.not_before:
            raise TokenError("expires must be later than not_before")
        object.__setattr__(self, "audience", hosts)
        object.__setattr__(self, "compiled_paths", _compile_paths(self.paths))


def new_token_id() -> str:
    """A fresh `jti`: 128 random bits in hex.

    Hex, not base64url: an id that began with `-` would be read as an option by
    `gatekeeper token revoke`, and an operator revoking a leaked token must not stumble.
    """
    return secrets.token_hex(16)


def _compile_paths(paths: tuple[str, ...]) -> tuple[Pattern, ...]:
    compiled = []
    for text in paths:
        try:
            compiled.append(compile_path_glob(text))
        except GlobError as exc:
            raise TokenError(f"paths: {text!r}: {exc}") from None
    return tuple(compiled)


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token whose signature, times, issuer and audience held."""

    claims: LicenseClaims
    kid: str


@dataclass(frozen=True, slots=True)
class TokenRejected:
    """Why a token was refused. `detail` is for the log and the 401 body: never the token."""

    reason: TokenFailure
    detail: str


@dataclass(frozen=True, slots=True)
class _Cached:
    token: VerifiedToken
    key: Ed25519PublicKey  # the key that verified it: a replaced or removed key voids it


class _Malformed(Exception):
    """Internal: the header or claims cannot be read; the message is the detail."""


# Issuing


def issue_token(claims: LicenseClaims, key: SigningKey, *,
                issued_at: float | None = None) -> str:
    """The signed compact JWT for `claims`. `iat` is `issued_at`, default `not_before`."""
    payload = {
        "iss": claims.issuer,
        "aud": list(claims.audience),
        "sub": claims.subject,
        "nbf": _numeric_date(claims.not_before),
        "exp": _numeric_date(claims.expires),
        "iat": _numeric_date(claims.not_before if issued_at is None else issued_at),
        "jti": claims.token_id,
        "crawler": claims.crawler,
        "crawler_key": claims.crawler_key,
        "license": claims.license,
        "usages": list(claims.usages),
        "paths": list(claims.paths),
    }
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return _JWS.encode(body, key.private_key, algorithm=ALGORITHM,
                       headers={"kid": key.kid, "typ": TOKEN_TYPE})


def _numeric_date(value: float) -> int | float:
    # Whole seconds as integers: what other JWT libraries write and expect to read.
    return int(value) if float(value).is_integer() else value


# Verifying


class TokenVerifier:
    """Checks tokens against the keyring's public keys, for one site.

    A token is accepted on a host only when the token names that host and the host is
    one of the site's (`audience`): a token for site A is refused by site B even when
    both trust the same keys.

    Verified tokens are cached by their full text (not by `jti`: an attacker can copy a
    `jti` into a forged token, but not a signature). Only tokens whose signature held are
    cached, so forged tokens cannot evict real ones; time, issuer and audience are
    checked on every presentation, and an entry is void once its key is removed.
    """

    def __init__(
        self,
        keys: Callable[[], Mapping[str, Ed25519PublicKey]],
        *,
        issuer: str,
        audience: Iterable[str],
        leeway: float = 30.0,
        cache_size: int = 10_000,
    ) -> None:
        hosts = frozenset(host.lower() for host in audience)
        if not issuer:
            raise TokenError("the verifier needs the site's issuer name")
        if not hosts or not all(hosts):
            raise TokenError("the verifier needs the site's hosts (its token audience)")
        if not (math.isfinite(leeway) and leeway >= 0):
            raise TokenError(f"leeway must be zero or more seconds, not {leeway!r}")
        if cache_size < 0:
            raise TokenError(f"cache_size must be zero or more, not {cache_size!r}")
        self._keys = keys
        self._issuer = issuer
        self._audience = hosts
        self._leeway = leeway
        self._cache_size = cache_size
        self._cache: OrderedDict[str, _Cached] = OrderedDict()

    @property
    def cached_tokens(self) -> int:
        return len(self._cache)

    def verify(self, token: str, host: str, now: float) -> VerifiedToken | TokenRejected:
        """Whether `token` may be used on `host` (lower case, no port) at `now`."""
        cached = self._cache.get(token)
        if cached is not None and self._keys().get(cached.token.kid) is cached.key:
            self._cache.move_to_end(token)
            return self._check(cached.token, host, now)
        if cached is not None:
            del self._cache[token]
        decoded = self._decode(token)
        if isinstance(decoded, TokenRejected):
            return decoded
        if self._cache_size:
            self._cache[token] = decoded
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return self._check(decoded.token, host, now)

    def _decode(self, token: str) -> _Cached | TokenRejected:
        """Header, key, signature and claims: the part that is the same on every use."""
        if len(token) > MAX_TOKEN_LENGTH:
            return TokenRejected(TokenFailure.MALFORMED,
                                 f"token longer than {MAX_TOKEN_LENGTH} characters")
        try:
            header = _header(token)
        except _Malformed as exc:
            return TokenRejected(TokenFailure.MALFORMED, str(exc))
        alg = header.get("alg")
        if alg != ALGORITHM:
            return TokenRejected(TokenFailure.WRONG_ALG,
                                 f"alg {_shown(alg)}; only {ALGORITHM} is accepted")
        if "crit" in header or "b64" in header:
            return TokenRejected(TokenFailure.MALFORMED,
                                 "critical header extensions are not supported")
        if header.get("typ", TOKEN_TYPE) != TOKEN_TYPE:
            return TokenRejected(TokenFailure.MALFORMED,
                                 f"typ {_shown(header.get('typ'))}; expected {TOKEN_TYPE}")
        kid = header.get("kid")
        if not isinstance(kid, str):
            return TokenRejected(TokenFailure.MALFORMED, "the header names no key id (kid)")
        key = self._keys().get(kid)
        if key is None:
            return TokenRejected(TokenFailure.UNKNOWN_KEY,
                                 f"key id {_shown(kid)} is not in the site's keyring")
        try:
            payload = _JWS.decode_complete(token, key, algorithms=[ALGORITHM])["payload"]
        except jwt.InvalidSignatureError:
            return TokenRejected(TokenFailure.BAD_SIGNATURE,
                                 f"the signature does not verify with key {kid}")
        except jwt.PyJWTError as exc:
            # PyJWT's messages describe the defect, never quote the token.
            return TokenRejected(TokenFailure.MALFORMED, str(exc))
        try:
            claims = _claims(payload)
        except _Malformed as exc:
            return TokenRejected(TokenFailure.MALFORMED, str(exc))
        return _Cached(VerifiedToken(claims, kid), key)

    def _check(self, verified: VerifiedToken, host: str, now: float
               ) -> VerifiedToken | TokenRejected:
        """The checks that depend on the moment and the request."""
        claims = verified.claims
        if now >= claims.expires + self._leeway:
            return TokenRejected(TokenFailure.EXPIRED, f"expired at {_when(claims.expires)}")
        if now + self._leeway < claims.not_before:
            return TokenRejected(TokenFailure.NOT_YET_VALID,
                                 f"valid from {_when(claims.not_before)}")
        if claims.issuer != self._issuer:
            return TokenRejected(TokenFailure.WRONG_ISSUER,
                                 f"issued by {claims.issuer!r}, not {self._issuer!r}")
        host = host.lower()
        if host not in claims.audience or host not in self._audience:
            return TokenRejected(TokenFailure.WRONG_AUDIENCE,
                                 f"not valid for host {host!r}")
        return verified


def _header(token: str) -> dict[str, object]:
    head = token.partition(".")[0]
    if not _B64URL.fullmatch(head):
        raise _Malformed("not a JWT: the header is not base64url")
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, RecursionError):
        raise _Malformed("not a JWT: the header is not JSON") from None
    if not isinstance(header, dict):
        raise _Malformed("not a JWT: the header is not a JSON object")
    return header


def _claims(payload: bytes) -> LicenseClaims:
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        raise _Malformed("the claims are not JSON") from None
    if not isinstance(data, dict):
        raise _Malformed("the claims are not a JSON object")
    aud = data.get("aud")
    # RFC 7519 allows a single string; Gatekeeper writes a list.
    audience = (aud,) if isinstance(aud, str) else _strings(data, "aud")
    crawler_key = data.get("crawler_key")
    if crawler_key is not None and not isinstance(crawler_key, str):
        raise _Malformed("claim 'crawler_key' must be a string or null")
    if "iat" in data:
        _number(data, "iat")
    try:
        return LicenseClaims(
            issuer=_string(data, "iss"),
            audience=audience,
            subject=_string(data, "sub"),
            crawler=_string(data, "crawler"),
            crawler_key=crawler_key,
            license=_string(data, "license"),
            usages=_strings(data, "usages"),
            paths=_strings(data, "paths"),
            not_before=_number(data, "nbf"),
            expires=_number(data, "exp"),
            token_id=_string(data, "jti"),
        )
    except TokenError as exc:
        raise _Malformed(f"invalid claims: {exc}") from None


def _string(data: Mapping[str, object], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise _Malformed(f"claim {name!r} must be a string")
    return value


def _strings(data: Mapping[str, object], name: str) -> tuple[str, ...]:
    value = data.get(name)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _Malformed(f"claim {name!r} must be a list of strings")
    return tuple(value)


def _number(data: Mapping[str, object], name: str) -> float:
    value = data.get(name)
    # bool is an int in Python, but `true` is no NumericDate.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Malformed(f"claim {name!r} must be a number of seconds")
    return float(value)


def _shown(value: object) -> str:
    """A header value fit for a log line: short and printable, or a placeholder."""
    if isinstance(value, str) and _PRINTABLE_ID.fullmatch(value):
        return repr(value)
    return "(absent)" if value is None else "(unprintable value)"


def _when(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{seconds:.0f}"


# Scope


def scope_check(
    claims: LicenseClaims,
    *,
    crawler: str | None,
    crawler_key: str | None,
    usages_needed: Iterable[str],
    path: str,
    license: License,
) -> TokenFailure | None:
    """Whether a verified token covers this request; None when it does.

    `crawler` is the request's catalog crawler name (as the catalog spells it) and
    `crawler_key` the thumbprint of the Web Bot Auth key that signed the request, if
    any. `license` is the policy's licence named by `claims.license`: the token grants
    no more than the licence does today, so narrowing a licence narrows its tokens.
    """
    if claims.crawler != crawler:
        return TokenFailure.WRONG_CRAWLER
    if claims.crawler_key is not None and claims.crawler_key != crawler_key:
        return TokenFailure.WRONG_CRAWLER
    if claims.license != license.name:
        return TokenFailure.UNKNOWN_LICENSE
    if not license.covers(path):
        return TokenFailure.OUT_OF_SCOPE
    if claims.compiled_paths and not any(p.match(path) for p in claims.compiled_paths):
        return TokenFailure.OUT_OF_SCOPE
    for usage in usages_needed:
        if not (grants(claims.usages, usage) and grants(license.usages, usage)):
            return TokenFailure.OUT_OF_SCOPE
    return None


def grants(granted: Iterable[str], usage: str) -> bool:
    """Whether the usages `granted` permit `usage` (RSL 1.0 §3.4.1: `all` is any
    automated use, `ai-all` any AI use)."""
    for value in granted:
        if value in (usage, "all") or (value == "ai-all" and usage in _AI_USAGES):
            return True
    return False


# The Authorization header


def token_from_headers(headers: Mapping[str, str]) -> str | None:
    """The token of `Authorization: License <token>` or `Bearer <token>`, else None.

    The scheme is case-insensitive (RFC 9110). One Authorization header holding one
    token68 and nothing else; anything else (another scheme, parameters, a second token
    or header) is None, as if no token were sent. Never read from the query string,
    where tokens end up in logs and caches.
    """
    values = [value for name, value in headers.items() if name.lower() == "authorization"]
    if len(values) != 1:
        return None
    parts = values[0].split()
    if len(parts) != 2 or parts[0].lower() not in AUTH_SCHEMES:
        return None
    token = parts[1]
    return token if _TOKEN68.fullmatch(token) else None
