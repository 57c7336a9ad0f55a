"""The public documents the main listener answers itself, before any policy.

Crawlers must be able to read the terms they are asked to accept, so these are
never gated: the RSL licence document (`Policy.rsl_url`), the human-readable
terms (`Policy.license_terms_url`; JSON with `Accept: application/json` or
`?format=json`) and the public keys that verify licence tokens
(`/.well-known/jwks.json`). Every other path goes to the gate. Only GET and HEAD
are answered; documents are rendered from the serving policy and cached per
policy and host, so a reload is seen by the next request.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from aiohttp import web

from gatekeeper.core.model import Policy
from gatekeeper.core.owners import NO_OWNERS, Owners, Stance
from gatekeeper.core.rsl import RSL_MEDIA_TYPE, render_rsl
from gatekeeper.core.terms import render_terms_html, render_terms_json

JWKS_PATH: Final = "/.well-known/jwks.json"
_MAX_CACHED: Final = 256


class Documents:
    """Answers for the public document paths; `answer` returns None for other paths.

    `jwks` returns the current JWK Set (None when no signing key exists yet);
    `token_url` is where crawler vendors obtain tokens, as an absolute URL or a path
    on this site.
    """

    def __init__(self, policy: Callable[[], Policy], jwks: Callable[[], Mapping[str, object]
                 | None], token_url: str, owners: Callable[[], Owners] | None = None) -> None:
        self._policy = policy
        self._jwks = jwks
        self._token_url = token_url
        self._owners = owners or (lambda: NO_OWNERS)
        self._cache: dict[tuple[int, int, str, str], tuple[bytes, str]] = {}

    def paths(self) -> frozenset[str]:
        policy = self._policy()
        return frozenset({policy.rsl_url, policy.license_terms_url, JWKS_PATH})

    def answer(self, method: str, path: str, query: str, host: str, scheme: str,
               accept: str) -> web.Response | None:
        if method not in ("GET", "HEAD"):
            return None
        policy = self._policy()
        if path == JWKS_PATH:
            jwks = self._jwks()
            if jwks is None:
                return None  # no key: the origin may have its own file there
            return _response(method, json.dumps(jwks, sort_keys=True).encode(),
                             "application/jwk-set+json")
        if path not in (policy.rsl_url, policy.license_terms_url):
            return None
        wants_json = "format=json" in query or "application/json" in accept
        kind = "rsl" if path == policy.rsl_url else ("json" if wants_json else "html")
        owners = self._owners()
        key = (id(policy), id(owners), f"{scheme}://{host}", kind)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._render(policy, owners, f"{scheme}://{host}", kind)
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[key] = cached
        return _response(method, *cached)

    def _render(self, policy: Policy, owners: Owners, site: str,
                kind: str) -> tuple[bytes, str]:
        terms = _absolute(site, policy.license_terms_url)
        token = _absolute(site, self._token_url)
        rsl = _absolute(site, policy.rsl_url)
        if kind == "rsl":
            server = token.rsplit("/", 1)[0]  # the licence server's base
            # Declarations follow the authors: opted-out owners' paths are not offered.
            withheld = [p.text for o in owners.owners if o.stance is Stance.OPT_OUT
                        for p in o.paths]
            return render_rsl(policy, site=site, server=server, terms_url=terms,
                              withheld=withheld), RSL_MEDIA_TYPE
        jwks = _absolute(site, JWKS_PATH)
        if kind == "json":
            doc = render_terms_json(policy, site=site, rsl_url=rsl, token_url=token,
                                    jwks_url=jwks)
            return json.dumps(doc, sort_keys=True).encode(), "application/json"
        page = render_terms_html(policy, site=site, rsl_url=rsl, token_url=token, jwks_url=jwks)
        return page.encode(), "text/html; charset=utf-8"


def _absolute(site: str, url: str) -> str:
    return url if url.startswith(("http://", "https://")) else site + url


def _response(method: str, body: bytes, content_type: str) -> web.Response:
    # aiohttp sends no body for HEAD and keeps the Content-Length of the full one.
    return web.Response(body=body, headers={"Content-Type": content_type,
                                            "Cache-Control": "max-age=300"})


class Endpoints:
    """Routes answered by the main listener itself (the licence server's token and
    introspection endpoints), resolved before the gate. Unknown paths: None."""

    def __init__(self, router: web.UrlDispatcher, paths: frozenset[str]) -> None:
        self._router = router
        self._paths = paths

    async def answer(self, request: web.BaseRequest,
                     path: str) -> web.StreamResponse | None:
        if path not in self._paths:
            return None
        # The low-level server hands over a BaseRequest; the licence server's handlers
        # read only what it has (method, headers, body, peer), not routing state.
        match = await self._router.resolve(request)  # type: ignore[arg-type]
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
        handler = match.handler  # type: ignore[assignment]
        return await handler(request)
