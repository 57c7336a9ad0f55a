"""The licence server: RSL's Open License Protocol (OLP) for crawler vendors.

Three endpoints, added to an aiohttp application or router:

- `POST /token`: an OAuth 2.0 token endpoint (RFC 6749 §3.2). The client
  authenticates with HTTP Basic (`client_id:client_secret`, §2.3.1) and sends a
  form with `grant_type=rsl` (`license` and `resource`: the OLP grant) or
  `grant_type=client_credentials` (`resource`, optionally `license`: the RSL 1.0
  form). `license` is a licence name from the policy or an RSL `<license>`
  element, whose usage permits pick the licence. The answer is
  `{"access_token", "token_type": "License", "expires_in", "scope"}`, the token
  being a `gatekeeper.licensing.tokens` JWT bound to the licensee's crawler and
  Web Bot Auth key.
- `POST /introspect`: RFC 7662, with the same client credentials. A licensee sees
  only its own tokens; every other token, and every token not valid now, is
  `{"active": false}`. With `resource` (the OLP extension) the answer also says
  whether the token permits that resource.
- `GET /.well-known/jwks.json`: the keyring's public keys (optional: the proxy's
  documents may serve them already).

Errors are RFC 6749 §5.2 JSON objects (`error`, `error_description`) with
`Cache-Control: no-store`, the RFC 8707 `invalid_target` included. The same
object shape answers what OAuth has no code for: 405, 413 and 415 are
`invalid_request`, 429 is `temporarily_unavailable` with `Retry-After`, and an
unexpected exception is a logged `server_error` 500 without a traceback.

Hardening, applied per endpoint so it holds on any app or router: one token
bucket per endpoint and client IP (`gatekeeper.core.ratelimit`), checked before
anything costs CPU; a body cap (8 KiB) and a read timeout; only
`application/x-www-form-urlencoded`; scrypt checks in a thread, at most a few at a
time. The client secret is never logged, and no input is echoed unsanitised.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, unquote_plus, urlsplit
from xml.etree import ElementTree

from aiohttp import web

from gatekeeper.core.model import License, Policy
from gatekeeper.core.ratelimit import Bucket, LimitResult, take
from gatekeeper.edge.client_ip import TrustedProxies, client_ip
from gatekeeper.edge.responses import QuietResponse
from gatekeeper.edge.target import BadRequest, canonicalize, check_host
from gatekeeper.errors import GatekeeperError
from gatekeeper.licensing.keys import Keyring
from gatekeeper.licensing.licensees import Licensee, Licensees
from gatekeeper.licensing.tokens import (
    LicenseClaims,
    TokenRejected,
    TokenVerifier,
    grants,
    issue_token,
    new_token_id,
)
from gatekeeper.observe import logging as gk_logging

_log = gk_logging.get_logger("gatekeeper.licensing")

TOKEN_TYPE: Final = "License"  # RSL 1.0 §5: never "Bearer"
GRANT_RSL: Final = "rsl"  # the 2025 OLP drafts' grant
GRANT_CLIENT_CREDENTIALS: Final = "client_credentials"  # RSL 1.0's
RSL_MEDIA_TYPE: Final = "application/rsl+xml"
FORM: Final = "application/x-www-form-urlencoded"
_REALM: Final = 'Basic realm="gatekeeper licences", charset="UTF-8"'
_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# RFC 6749 §5.2: error_description is printable ASCII without '"' and '\'.
_DESCRIPTION_OK: Final = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}
_MAX_ID: Final = 64
_MAX_SECRET: Final = 256


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """The licence server's budgets; the defaults suit a vendor fetching a token a day."""

    max_body: int = 8 * 1024  # bytes of form per request
    read_timeout: float = 10.0  # seconds to receive the body
    rate: float = 1.0  # requests per second per client IP and endpoint, refilled
    burst: int = 20  # requests a client IP may make at once per endpoint
    max_lifetime: float = 86400.0  # cap on a token's life, whatever its licence allows
    tracked_clients: int = 10_000  # rate-limit buckets kept (least recently used dropped)
    concurrent_secret_checks: int = 4  # scrypt runs at once (16 MiB each)


DEFAULT_LIMITS: Final = ServerLimits()


class LicenceServerError(GatekeeperError):
    """The licence server cannot be set up as asked."""


class OAuthError(GatekeeperError):
    """A refusal with an RFC 6749 §5.2 error code, sent to the client as JSON."""

    def __init__(self, error: str, description: str, status: int = 400,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})


# -- wiring ----------------------------------------------------------------------

def licence_server_routes(
    app_or_router: web.Application | web.UrlDispatcher,
    *,
    policy: Callable[[], Policy],
    licensees: Licensees,
    keyring: Keyring,
    issuer: str,
    audience: Sequence[str],
    clock: Callable[[], float] = time.time,
    limits: ServerLimits = DEFAULT_LIMITS,
    trusted_proxies: TrustedProxies | None = None,
    prefix: str = "",
    jwks_path: str | None = "/.well-known/jwks.json",
    on_issued: Callable[[LicenseClaims], None] | None = None,
) -> None:
    """Add `POST {prefix}/token`, `POST {prefix}/introspect` and `GET {jwks_path}`
    to `app_or_router` (`jwks_path` None: the JWKS is served elsewhere).

    `policy` returns the current policy (its licences are what tokens are sold
    for), `issuer` is the tokens' `iss`, `audience` the site's hosts (lower case,
    no port): a token names them all, and a `resource` must be on one of them.
    """
    hosts = tuple(dict.fromkeys(h.lower() for h in audience))
    if not hosts:
        raise LicenceServerError("the licence server needs the site's hosts (its audience)")
    server = _LicenceServer(policy, licensees, keyring, issuer, hosts, clock, limits,
                            trusted_proxies or TrustedProxies(), on_issued)
    router = app_or_router.router if isinstance(app_or_router, web.Application) \
        else app_or_router
    endpoints: dict[str, tuple[tuple[str, ...], _Handler]] = {
        prefix + "/token": (("POST",), server.token),
        prefix + "/introspect": (("POST",), server.introspect),
    }
    if jwks_path is not None:
        endpoints[jwks_path] = (("GET", "HEAD"), server.jwks)
    for path, (methods, handler) in endpoints.items():
        router.add_route("*", path, server.guarded(path, methods, handler))


_Handler = Callable[[web.Request], Awaitable[web.Response]]


class _ClientBuckets:
    """Token buckets per (endpoint, client IP), the least recently used dropped first."""

    def __init__(self, rate: float, burst: int, size: int) -> None:
        self._rate, self._burst, self._size = rate, burst, size
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()

    def take(self, key: str, now: float) -> LimitResult:
        bucket, result = take(self._buckets.get(key), self._rate, self._burst, now)
        self._buckets[key] = bucket
        self._buckets.move_to_end(key)
        if len(self._buckets) > self._size:
            # A dropped client starts again with a full bucket: the cap bounds memory,
            # and an attacker who can cycle this many addresses has other ways in.
            self._buckets.popitem(last=False)
        return result


class _LicenceServer:
    def __init__(
        self, policy: Callable[[], Policy], licensees: Licensees, keyring: Keyring,
        issuer: str, audience: tuple[str, ...], clock: Callable[[], float],
        limits: ServerLimits, trusted: TrustedProxies,
        on_issued: Callable[[LicenseClaims], None] | None = None,
    ) -> None:
        self._policy = policy
        self._licensees = licensees
        self._keyring = keyring
        self._issuer = issuer
        self._audience = audience
        self._clock = clock
        self._limits = limits
        self._trusted = trusted
        self._on_issued = on_issued  # told of each token issued (its claims, never the token)
        self._buckets = _ClientBuckets(limits.rate, limits.burst, limits.tracked_clients)
        self._secret_checks = asyncio.Semaphore(limits.concurrent_secret_checks)
        self._verifier = TokenVerifier(keyring.public_keys, issuer=issuer, audience=audience)

    # -- the endpoints ------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        licensee = await self._client(request)
        grant = form.get("grant_type")
        if grant is None:
            raise OAuthError("invalid_request", "grant_type is required")
        if grant not in (GRANT_RSL, GRANT_CLIENT_CREDENTIALS):
            raise OAuthError("unsupported_grant_type",
                             "grant_type must be client_credentials or rsl")
        if licensee.disabled:
            raise OAuthError("unauthorized_client", "this client may not obtain tokens")
        wanted = form.get("license")
        if grant == GRANT_RSL and wanted is None:
            raise OAuthError("invalid_request", "grant_type rsl needs a license parameter")
        license_type = form.get("license_type", RSL_MEDIA_TYPE)
        if license_type != RSL_MEDIA_TYPE:
            raise OAuthError("invalid_request", f"license_type must be {RSL_MEDIA_TYPE}")
        host, path = _resource(form.get("resource"), self._audience)
        moment = self._clock()
        now = math.floor(moment)  # whole seconds in the token, as JWT libraries expect
        chosen, usages = _choose_license(licensee, self._policy(), path, wanted,
                                         form.get("scope"))
        lifetime = max(1, int(min(chosen.validity, self._limits.max_lifetime)))
        claims = LicenseClaims(
            issuer=self._issuer, audience=self._audience, subject=licensee.id,
            crawler=licensee.crawler, crawler_key=licensee.key_thumbprint,
            license=chosen.name, usages=usages, paths=(), not_before=now,
            expires=now + lifetime, token_id=new_token_id(),
        )
        token = issue_token(claims, self._keyring.active_signing_key(moment))
        # What `gatekeeper token revoke` needs (id and expiry), never the token itself.
        _log.info("licence_token_issued", client_id=licensee.id, license=chosen.name,
                  jti=claims.token_id, exp=int(claims.expires), host=host)
        if self._on_issued is not None:
            self._on_issued(claims)
        return _json(200, {"access_token": token, "token_type": TOKEN_TYPE,
                           "expires_in": lifetime, "scope": chosen.name})

    async def introspect(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        licensee = await self._client(request)
        if licensee.disabled:
            raise OAuthError("unauthorized_client", "this client may not introspect tokens")
        token = form.get("token")
        if token is None:
            raise OAuthError("invalid_request", "token is required")
        return _json(200, self._introspection(licensee, token, form.get("resource")))

    async def jwks(self, request: web.Request) -> web.Response:
        # Public and the same for everyone: verifiers may cache it for a while,
        # but not so long that a rotated-in key goes unseen.
        return _json(200, self._keyring.jwks(), cache="public, max-age=300")

    # -- what every endpoint does ---------------------------------------------------

    def guarded(self, name: str, methods: tuple[str, ...], handler: _Handler) -> _Handler:
        """`handler` behind the method check, the rate limit and the error boundary."""

        async def endpoint(request: web.Request) -> web.Response:
            try:
                if request.method not in methods:
                    raise OAuthError("invalid_request", f"use {' or '.join(methods)}", 405,
                                     {"Allow": ", ".join(methods)})
                ip = client_ip(request.remote or "", request.headers, self._trusted).ip
                limit = self._buckets.take(f"{name}|{ip}", self._clock())
                if not limit.allowed:
                    wait = str(max(1, math.ceil(limit.retry_after)))
                    raise OAuthError("temporarily_unavailable", "too many requests; retry later",
                                     429, {"Retry-After": wait})
                return await handler(request)
            except OAuthError as exc:
                response = _error(exc)
            except asyncio.CancelledError:
                raise
            except GatekeeperError as exc:
                # An operator's problem (no active signing key, an unreadable
                # licensees file): its message says what to fix, no traceback needed.
                _log.error("licence_server_unavailable", endpoint=name, error=str(exc))
                response = _error(OAuthError("server_error", "internal error", 500))
            except Exception:
                # The one place a bug surfaces: logged with its traceback here, and
                # the client gets a fixed message that says nothing about the code.
                _log.exception("licence_server_error", endpoint=name, method=request.method)
                response = _error(OAuthError("server_error", "internal error", 500))
            if response.status in (405, 408, 413, 415):
                response.force_close()  # the unread body cannot frame a next request
            return response

        return endpoint

    async def _form(self, request: web.Request) -> dict[str, str]:
        if request.content_length is not None and request.content_length > self._limits.max_body:
            raise OAuthError("invalid_request", "request body too large", 413)
        if request.content_type != FORM:
            raise OAuthError("invalid_request", f"the body must be {FORM}", 415)
        body = await self._read(request)
        return _parse_form(body)

    async def _read(self, request: web.Request) -> bytes:
        cap = self._limits.max_body
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._limits.read_timeout):
                while size <= cap:
                    chunk = await request.content.read(cap + 1 - size)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
        except TimeoutError:
            raise OAuthError("invalid_request", "request body not received in time", 408) from None
        if size > cap:
            raise OAuthError("invalid_request", "request body too large", 413)
        return b"".join(chunks)

    async def _client(self, request: web.Request) -> Licensee:
        """The authenticated licensee, or `invalid_client` (401 with a Basic challenge)."""
        credentials = _basic_credentials(request.headers.getall("Authorization", []))
        licensee = None
        if credentials is not None:
            client_id, secret = credentials
            async with self._secret_checks:
                licensee = await asyncio.to_thread(self._licensees.authenticate,
                                                   client_id, secret)
        if licensee is None:
            raise OAuthError("invalid_client", "client authentication failed", 401,
                             {"WWW-Authenticate": _REALM})
        return licensee

    def _introspection(self, caller: Licensee, token: str, resource: str | None
                       ) -> dict[str, object]:
        inactive: dict[str, object] = {"active": False}
        verified = self._verifier.verify(token, self._audience[0], self._clock())
        if isinstance(verified, TokenRejected):
            return inactive
        claims = verified.claims
        # RFC 7662 §4: a caller learns nothing about tokens that are not its own.
        if claims.subject != caller.id or self._licensees.is_revoked(claims.token_id):
            return inactive
        licence = _licences(self._policy()).get(claims.license)
        if licence is None or claims.license not in caller.licenses:
            # Withdrawn from the policy, or no longer sold to this client.
            return inactive
        answer: dict[str, object] = {
            "active": True, "token_type": TOKEN_TYPE, "scope": " ".join(claims.usages),
            "client_id": claims.subject, "sub": claims.subject, "aud": list(claims.audience),
            "iss": claims.issuer, "exp": int(claims.expires), "iat": int(claims.not_before),
            "nbf": int(claims.not_before), "jti": claims.token_id, "license": claims.license,
            "crawler": claims.crawler,
        }
        if claims.crawler_key is not None:
            answer["crawler_key"] = claims.crawler_key
        if resource is not None:
            answer["resource"] = resource
            reason = _resource_refusal(claims, licence, resource)
            answer["permitted"] = reason is None
            if reason is not None:
                answer["reason"] = reason
        return answer


# -- the token request ---------------------------------------------------------------

def _choose_license(licensee: Licensee, policy: Policy, path: str, license: str | None,
                    scope: str | None) -> tuple[License, tuple[str, ...]]:
    """The policy licence to issue under, and the usages the token grants.

    `license` is a licence name or an RSL `<license>` element; `scope`, when
    given, is a licence name too. Without either, the client's first licence
    (in the order the operator gave) that covers the resource is chosen.

    A named licence the client was not granted is `invalid_grant`: in OLP the
    licence is the grant the client presents, and RFC 6749 §5.2 calls a grant
    "issued to another client" invalid (`unauthorized_client` is about grant
    types, which every licensee may use). Via `scope` it is `invalid_scope`.
    A licence that does not cover the resource is `invalid_target` (RFC 8707)."""
    offered = _licences(policy)
    xml = license if license is not None and _is_xml(license) else None
    name = None if xml is not None else license
    if scope is not None:
        if scope not in licensee.licenses or scope not in offered:
            raise OAuthError("invalid_scope", "scope must name a licence granted to this client")
        if name is not None and name != scope:
            raise OAuthError("invalid_scope", "scope and license name different licences")
        name = scope
    elif name is not None and (name not in licensee.licenses or name not in offered):
        raise OAuthError("invalid_grant", "that licence is not granted to this client")
    candidates = [offered[name]] if name is not None else \
        [offered[n] for n in licensee.licenses if n in offered]
    if not candidates:
        raise OAuthError("invalid_grant", "none of this client's licences is on offer")
    covering = [lic for lic in candidates if lic.covers(path)]
    if not covering:
        raise OAuthError("invalid_target", "no licence of this client covers that resource")
    requested = _requested_usages(xml) if xml is not None else None
    if requested is None:
        return covering[0], covering[0].usages
    for lic in covering:
        if all(grants(lic.usages, usage) for usage in requested):
            return lic, tuple(sorted(requested))
    raise OAuthError("invalid_grant", "no licence of this client permits the requested usages")


def _licences(policy: Policy) -> dict[str, License]:
    return {lic.name: lic for lic in policy.licenses}


def _is_xml(value: str) -> bool:
    return value.lstrip().startswith("<")


def _requested_usages(xml: str) -> frozenset[str] | None:
    """The usage tokens an RSL `<license>` element permits; None when it names none.

    Only the usage permits choose among the client's licences: price and terms
    were agreed when the operator added the licensee. Document type declarations
    are refused before parsing, which rules out entity expansion."""
    if "<!doctype" in xml.lower() or "<!entity" in xml.lower():
        raise OAuthError("invalid_request", "license must not contain a DOCTYPE")
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        raise OAuthError("invalid_request", "license is not a well-formed XML element") from None
    if _local(root.tag) != "license":
        raise OAuthError("invalid_request", "license must be an RSL <license> element")
    usages: set[str] = set()
    for element in root:
        if _local(element.tag) == "permits" and element.get("type", "usage") == "usage":
            usages.update((element.text or "").split())
    return frozenset(usages) or None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _resource(resource: str | None, audience: tuple[str, ...]) -> tuple[str, str]:
    """(host, canonical path) of a `resource` on one of the site's hosts (RFC 8707)."""
    if resource is None:
        raise OAuthError("invalid_request", "resource is required")
    host, path, refusal = _parse_resource(resource)
    if refusal is not None:
        raise OAuthError("invalid_target", refusal)
    if host not in audience:
        raise OAuthError("invalid_target", "resource is not on a host this server licenses")
    return host, path


def _parse_resource(resource: str) -> tuple[str, str, str | None]:
    try:
        parts = urlsplit(resource)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return "", "", "resource must be an absolute http or https URL"
        if parts.fragment or "#" in resource:
            return "", "", "resource must not have a fragment"
        if "@" in parts.netloc:
            return "", "", "resource must not carry user information"
        host = check_host(parts.netloc)
        target = canonicalize("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query
                                                               else ""))
    except (ValueError, BadRequest):
        return "", "", "resource is not a valid URL"
    return host, target.path, None


def _resource_refusal(claims: LicenseClaims, licence: License, resource: str) -> str | None:
    host, path, refusal = _parse_resource(resource)
    if refusal is not None:
        return refusal
    if host not in claims.audience:
        return "the token is not valid on that host"
    if not licence.covers(path) or (
            claims.compiled_paths and not any(p.match(path) for p in claims.compiled_paths)):
        return "the licence does not cover that path"
    return None


# -- the wire ------------------------------------------------------------------------

def _parse_form(body: bytes) -> dict[str, str]:
    """The form's parameters; empty ones count as absent (RFC 6749 §3.1)."""
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, encoding="utf-8",
                          errors="strict", max_num_fields=32)
    except ValueError:
        raise OAuthError("invalid_request", "the form is not valid urlencoded UTF-8") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            # RFC 6749 §3.1: parameters must not be repeated.
            raise OAuthError("invalid_request", f"parameter {_printable(name)} is repeated")
        if value:
            form[name] = value
    return form


def _basic_credentials(values: Sequence[str]) -> tuple[str, str] | None:
    """(client_id, client_secret) from exactly one `Authorization: Basic` header.

    RFC 6749 §2.3.1 form-encodes both before base64; clients that skip that
    send the same bytes for the characters ids and secrets are made of."""
    if len(values) != 1:
        return None
    scheme, _, encoded = values[0].strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    raw_id, colon, raw_secret = decoded.partition(":")
    client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
    if not colon or not client_id or not secret or len(client_id) > _MAX_ID \
            or len(secret) > _MAX_SECRET:
        return None
    return client_id, secret


def _printable(text: str, limit: int = 40) -> str:
    cleaned = "".join(c if c in _DESCRIPTION_OK else "?" for c in text[:limit])
    return f"'{cleaned}'"


def _error(exc: OAuthError) -> web.Response:
    description = "".join(c if c in _DESCRIPTION_OK else "?" for c in exc.description)
    response = _json(exc.status, {"error": exc.error, "error_description": description})
    response.headers.update(exc.headers)
    return response


def _json(status: int, doc: Mapping[str, object], cache: str | None = None) -> web.Response:
    headers = dict(_NO_STORE) if cache is None else {"Cache-Control": cache}
    headers["Content-Type"] = "application/json"
    body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    return QuietResponse(status=status, body=body, headers=headers)
