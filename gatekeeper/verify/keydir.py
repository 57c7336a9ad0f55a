"""Web Bot Auth key directories: pinned keys plus keys fetched from the agent's origin.

A directory is `<origin>/.well-known/http-message-signatures-directory`, a JWK Set
served as `application/http-message-signatures-directory+json`. Fetches are HTTPS
only, never follow redirects, are bounded in time and size, coalesce per origin and
are cached (`Cache-Control: max-age` clamped to [60 s, ttl]; failures for
`negative_ttl`). Callers ask only for origins they allow (the catalog's
`signature_agents`), so the set of fetched hosts is the operator's list, not the
client's choice; that is why there is no private-address filter here.

By default a directory must prove possession: each key is kept only if the response
carries a valid `tag="http-message-signatures-directory"` signature by that key
covering `"@authority";req` and `content-digest`. The draft only RECOMMENDS these
proofs; an unsigned directory could be a copy of someone else's keys re-served under
another name, so it is refused unless `require_signed_directory=False`.

Nothing here raises to the caller: a failure yields no fetched keys (pinned keys
still apply) and a message in `last_error(origin)`. A failure never evicts keys from
an earlier good fetch; they keep serving for up to `ttl` past their freshness, so an
agent's outage does not revoke its keys everywhere at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ssl import SSLContext
from typing import Final

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gatekeeper.core.httpsig import (
    JwkError,
    SignedRequest,
    SignedResponse,
    key_from_jwk,
    normalize_origin,
    verify_directory_signatures,
)
from gatekeeper.errors import GatekeeperError

WELL_KNOWN_PATH: Final = "/.well-known/http-message-signatures-directory"
MEDIA_TYPE: Final = "application/http-message-signatures-directory+json"
MIN_FRESHNESS: Final = 60.0
# The RFC 9421 example key (B.1.4): public, so anyone can sign with it. The draft says
# verifiers SHOULD reject known test keys found in directories.
PUBLIC_TEST_KEYIDS: Final = frozenset({"poqkLGiymh_W0uP6PZFw-dvez3QJT5SolqXBCW38r0U"})

JWK = Mapping[str, object]


class KeyDirectoryError(GatekeeperError):
    """Pinned keys are invalid (raised at construction), or a fetch failed (kept internal)."""


@dataclass(frozen=True, slots=True)
class _Key:
    key: Ed25519PublicKey
    not_before: float | None = None
    expires: float | None = None

    def usable(self, now: float) -> bool:
        return ((self.not_before is None or self.not_before <= now)
                and (self.expires is None or now < self.expires))


@dataclass(frozen=True, slots=True)
class _Entry:
    keys: Mapping[str, _Key]
    fresh_until: float


def _time_member(jwk: JWK, name: str) -> float | None:
    value = jwk.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JwkError(f"{name} must be a number")
    return float(value)


def _read_jwk(jwk: JWK) -> tuple[str, _Key]:
    thumbprint, key = key_from_jwk(jwk)
    return thumbprint, _Key(key, _time_member(jwk, "nbf"), _time_member(jwk, "exp"))


def _max_age(cache_control: str | None) -> float | None:
    if cache_control is None:
        return None
    for directive in cache_control.split(","):
        name, _, value = directive.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            return 0.0
        if name == "max-age":
            try:
                return float(int(value.strip().strip('"')))
            except ValueError:
                return None
    return None


class KeyDirectory:
    """Ed25519 keys per Signature-Agent origin, from pinned JWKs and the origin's directory."""

    def __init__(
        self,
        session: aiohttp.ClientSession | Callable[[], aiohttp.ClientSession],
        *,
        pinned: Mapping[str, Sequence[JWK]] | None = None,
        ssl: SSLContext | None = None,
        ttl: float = 3600.0,
        negative_ttl: float = 300.0,
        timeout: float = 3.0,
        max_bytes: int = 64 * 1024,
        max_keys: int = 32,
        max_skew: float = 60.0,
        require_signed_directory: bool = True,
    ) -> None:
        if isinstance(session, aiohttp.ClientSession):
            self._session: aiohttp.ClientSession | None = session
            self._factory: Callable[[], aiohttp.ClientSession] | None = None
        else:
            # Built on first use: a ClientSession must be created inside the running loop.
            self._session, self._factory = None, session
        self._ssl = ssl
        self._ttl = max(ttl, MIN_FRESHNESS)
        self._negative_ttl = negative_ttl
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._max_keys = max_keys
        self._max_skew = max_skew
        self._require_signed = require_signed_directory
        self._pinned = self._read_pinned(pinned or {})
        self._cache: dict[str, _Entry] = {}
        self._retry_at: dict[str, float] = {}
        self._errors: dict[str, str] = {}
        self._inflight: dict[str, asyncio.Future[Mapping[str, _Key]]] = {}

    @staticmethod
    def _read_pinned(pinned: Mapping[str, Sequence[JWK]]) -> dict[str, dict[str, _Key]]:
        result: dict[str, dict[str, _Key]] = {}
        for origin, jwks in pinned.items():
            normal = normalize_origin(origin)
            if normal is None:
                raise KeyDirectoryError(f"pinned keys: {origin!r} is not an https origin")
            keys = result.setdefault(normal, {})
            for i, jwk in enumerate(jwks):
                try:
                    thumbprint, key = _read_jwk(jwk)
                except JwkError as exc:
                    raise KeyDirectoryError(f"pinned keys for {origin}[{i}]: {exc}") from None
                keys[thumbprint] = key
        return result

    async def keys_for(self, origin: str, now: float) -> Mapping[str, Ed25519PublicKey]:
        """The usable keys (thumbprint -> key) for `origin` at `now`: pinned plus fetched."""
        normal = normalize_origin(origin)
        if normal is None:
            self._errors[origin] = "not an https origin; only https directories are fetched"
            return {}
        fetched = await self._fetched(normal, now)
        merged = {**fetched, **self._pinned.get(normal, {})}
        return {kid: entry.key for kid, entry in merged.items() if entry.usable(now)}

    def last_error(self, origin: str) -> str | None:
        """Why the last fetch for `origin` failed, or None after a success."""
        return self._errors.get(normalize_origin(origin) or origin)

    async def close(self) -> None:
        """Close the session if this directory built it from a factory."""
        if self._factory is not None and self._session is not None:
            await self._session.close()
            self._session = None

    async def _fetched(self, origin: str, now: float) -> Mapping[str, _Key]:
        entry = self._cache.get(origin)
        if entry is not None and now < entry.fresh_until:
            return entry.keys
        if now < self._retry_at.get(origin, float("-inf")):
            return self._stale(origin, now)
        future = self._inflight.get(origin)
        if future is None:
            future = asyncio.ensure_future(self._refresh(origin, now))
            self._inflight[origin] = future
            future.add_done_callback(lambda done: self._forget(origin, done))
        # Shielded: a caller that gives up (its request timed out) must not cancel the
        # fetch other requests for the same origin are waiting on.
        return await asyncio.shield(future)

    def _forget(self, origin: str, done: asyncio.Future[Mapping[str, _Key]]) -> None:
        if self._inflight.get(origin) is done:
            del self._inflight[origin]

    def _stale(self, origin: str, now: float) -> Mapping[str, _Key]:
        entry = self._cache.get(origin)
        if entry is not None and now < entry.fresh_until + self._ttl:
            return entry.keys
        return {}

    async def _refresh(self, origin: str, now: float) -> Mapping[str, _Key]:
        try:
            keys, fresh_for = await self._fetch(origin, now)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # by contract nothing escapes to a request; it is recorded
            self._errors[origin] = _describe(exc)
            self._retry_at[origin] = now + self._negative_ttl
            return self._stale(origin, now)
        self._cache[origin] = _Entry(keys, now + fresh_for)
        self._retry_at.pop(origin, None)
        if keys:
            self._errors.pop(origin, None)
        else:
            # A good answer without keys is evidence (the agent withdrew them), so it
            # replaces the cache; the message explains the unknown keyids that follow.
            self._errors[origin] = "the directory lists no usable Ed25519 key"
        return keys

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            assert self._factory is not None
            self._session = self._factory()
        return self._session

    async def _fetch(self, origin: str, now: float) -> tuple[dict[str, _Key], float]:
        async with asyncio.timeout(self._timeout):
            async with self._client().get(
                origin + WELL_KNOWN_PATH,
                # Content-Digest covers the bytes as sent: ask for them uncompressed.
                headers={"Accept": MEDIA_TYPE, "Accept-Encoding": "identity"},
                allow_redirects=False,
                ssl=self._ssl if self._ssl is not None else True,
            ) as response:
                if response.status != 200:
                    raise KeyDirectoryError(f"HTTP {response.status} from the directory")
                if response.content_type != MEDIA_TYPE:
                    raise KeyDirectoryError(
                        f"content type {response.content_type!r}, expected {MEDIA_TYPE}")
                body = await self._read_body(response)
                signed = SignedResponse(
                    response.status, response.headers,
                    SignedRequest("GET", "https", origin.removeprefix("https://"),
                                  WELL_KNOWN_PATH))
        keys = self._parse(body)
        max_age = _max_age(signed.headers.get("cache-control"))
        fresh_for = min(max(self._ttl if max_age is None else max_age, MIN_FRESHNESS), self._ttl)
        if self._require_signed:
            keys, fresh_for = self._proven(signed, body, keys, now, fresh_for)
        return keys, fresh_for

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        length = response.content_length
        if length is not None and length > self._max_bytes:
            raise KeyDirectoryError(f"directory of {length} bytes exceeds {self._max_bytes}")
        body = bytearray()
        async for chunk in response.content.iter_chunked(16 * 1024):
            body += chunk
            if len(body) > self._max_bytes:
                raise KeyDirectoryError(f"directory exceeds {self._max_bytes} bytes")
        return bytes(body)

    def _parse(self, body: bytes) -> dict[str, _Key]:
        try:
            document = json.loads(body)
        except ValueError:
            raise KeyDirectoryError("the directory is not JSON") from None
        jwks = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(jwks, list):
            raise KeyDirectoryError('the directory has no "keys" list')
        if len(jwks) > self._max_keys:
            raise KeyDirectoryError(f"the directory lists {len(jwks)} keys, over {self._max_keys}")
        keys: dict[str, _Key] = {}
        for jwk in jwks:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue
            try:
                thumbprint, key = _read_jwk(jwk)
            except JwkError:
                continue  # other key types (RSA, EC) are valid JWKs Gatekeeper cannot use
            # At the well-known URI a kid, when present, must be the thumbprint.
            if jwk.get("kid", thumbprint) != thumbprint or thumbprint in PUBLIC_TEST_KEYIDS:
                continue
            keys[thumbprint] = key
        return keys

    def _proven(self, response: SignedResponse, body: bytes, keys: dict[str, _Key],
                now: float, fresh_for: float) -> tuple[dict[str, _Key], float]:
        if "signature-input" not in response.headers:
            raise KeyDirectoryError("the directory response is not signed "
                                    "(require_signed_directory is on)")
        proofs = verify_directory_signatures(
            response, body, {kid: k.key for kid, k in keys.items()}, now,
            max_skew=self._max_skew)
        if not proofs:
            raise KeyDirectoryError("no key in the directory proved possession with a valid "
                                    "http-message-signatures-directory signature")
        # Only keys that signed are bound to this origin; and the binding holds only
        # until its proof expires.
        proven = {kid: key for kid, key in keys.items() if kid in proofs}
        return proven, max(1.0, min(fresh_for, min(proofs.values()) - now))


def _describe(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "the directory fetch timed out"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, KeyDirectoryError):
        return text
    return f"{type(exc).__name__}: {text}"
