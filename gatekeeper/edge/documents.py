"""The public documents the main listener answers itself, never gated.

Crawlers must be able to read what they may do and the terms they are asked to
accept, so these are served whatever the policy says about the client:

- `/robots.txt`: the origin's file merged with the groups the policy declares
  (`declarations.robots_txt: merge`), or only the generated part (`replace`).
- `/.well-known/tdmrep.json`: the TDMRep rules.
- The RSL licence document (`Policy.rsl_url`), the human-readable terms
  (`Policy.license_terms_url`; JSON with `Accept: application/json` or
  `?format=json`) and the public keys that verify licence tokens
  (`/.well-known/jwks.json`).

With `declarations.robots_txt: off` (or `declarations.tdmrep: false`) Gatekeeper
writes no robots.txt (no tdmrep.json): the front end forwards the request to the
origin unchanged, and still never gates it (`origin_serves`).

Only GET and HEAD are answered. Documents are rendered from the serving policy
and cached per policy, owners, host and origin robots.txt, so a reload or a new
origin file is seen by the next request. `response_headers` gives the
declaration headers (Content-Usage, tdm-reservation, tdm-policy, Link) that
forwarded responses carry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final, Protocol

from aiohttp import web

from gatekeeper.core.catalog import Crawler
from gatekeeper.core.declarations import JWKS_PATH, Plan, from_origin, plan, public_document
from gatekeeper.core.model import Policy
from gatekeeper.core.owners import NO_OWNERS, Owners, Stance
from gatekeeper.core.robots import PARSE_LIMIT, RobotsRules
from gatekeeper.core.rsl import RSL_MEDIA_TYPE, render_rsl
from gatekeeper.core.stance import section_index
from gatekeeper.core.tdmrep import render_tdmrep
from gatekeeper.core.terms import render_terms_html, render_terms_json
from gatekeeper.core.usage import Vocabularies
from gatekeeper.declare import offers_licences, robots_document
from gatekeeper.observe import logging as gk_logging

_MAX_CACHED: Final = 256
# Plans are keyed by what they depend on, not by host: hosts are chosen by clients.
_MAX_PLANS: Final = 16

_log = gk_logging.get_logger("gatekeeper.declarations")


class OriginSource(Protocol):
    """The origin's robots.txt per host (`gatekeeper.edge.origin_robots.OriginRobots`)."""

    async def rules(self, host: str) -> RobotsRules: ...

    def peek(self, host: str) -> RobotsRules | None: ...


class Documents:
    """Answers for the public document paths; see the module docstring.

    `jwks` returns the current JWK Set (None when no signing key exists yet);
    `token_url` is where crawler vendors obtain tokens, as an absolute URL or a path
    on this site; `crawlers` and `vocab` are what declarations are derived over;
    `robots_compliance` whether the gate judges requests by the origin's robots.txt
    (without it, `robots:` rules never match, and the declarations say so).
    """

    def __init__(self, policy: Callable[[], Policy], jwks: Callable[[], Mapping[str, object]
                 | None], token_url: str, owners: Callable[[], Owners] | None = None, *,
                 crawlers: Iterable[Crawler] = (), vocab: Vocabularies | None = None,
                 on_new_plan: Callable[[], None] | None = None,
                 robots_compliance: bool = True) -> None:
        self._policy = policy
        self._robots_compliance = robots_compliance
        self._jwks = jwks
        self._token_url = token_url
        self._owners = owners or (lambda: NO_OWNERS)
        self._crawlers = tuple(crawlers)
        self._vocab = vocab
        # Called after a plan is computed: the wiring freezes long-lived objects then.
        self._on_new_plan = on_new_plan
        self._origin: OriginSource | None = None
        # Keyed by the ids of the policy and owners they were made from; each entry also
        # holds those objects, so no id can be reused by another object while cached.
        self._cache: dict[tuple[int, int, str, str], tuple[bytes, str, object]] = {}
        self._plans: dict[tuple[int, int, int, str], tuple[Plan, object]] = {}
        self._building: dict[tuple[int, int, int, str], asyncio.Future[Plan]] = {}
        self._reported: set[tuple[int, str]] = set()

    def attach_origin(self, origin: OriginSource | None) -> None:
        """Where the origin's robots.txt is read (set once the upstream pool exists)."""
        self._origin = origin

    def kind(self, method: str, path: str) -> str | None:
        """Which public document `path` is ("robots.txt", "tdmrep.json", "license.xml",
        "terms", "jwks.json"), never gated, or None for paths the gate decides. Answer
        it with `answer` unless `origin_serves` says to forward it."""
        kind = public_document(self._policy(), method, path)
        if kind == "jwks.json" and self._jwks() is None:
            return None  # no signing key yet: the path is the origin's
        return kind

    def origin_serves(self, kind: str) -> bool:
        """Whether the public document `kind` is forwarded to the origin (ungated,
        observed as the document) rather than answered here: robots.txt with
        `declarations.robots_txt: off`, tdmrep.json with `declarations.tdmrep: false`."""
        return from_origin(self._policy(), kind, generated=self._vocab is not None)

    async def answer(self, kind: str, method: str, query: str, host: str, scheme: str,
                     accept: str, authority: str = "") -> web.Response:
        """The document `kind` names (see `kind`); `host` is the canonical host and
        `authority` the host and port as addressed (default: `host`), for URLs."""
        policy = self._policy()
        site = f"{scheme}://{authority or host}"
        if kind == "robots.txt":
            return await self._robots(policy, host, site)
        if kind == "tdmrep.json":
            doc = render_tdmrep(self.plan(policy, host, self._peek(host)),
                                _absolute(site, policy.license_terms_url))
            return _response(method, doc, "application/json")
        if kind == "jwks.json":
            jwks = self._jwks() or {}
            return _response(method, json.dumps(jwks, sort_keys=True).encode(),
                             "application/jwk-set+json")
        wants_json = "format=json" in query or "application/json" in accept
        form = "rsl" if kind == "license.xml" else ("json" if wants_json else "html")
        owners = self._owners()
        key = (id(policy), id(owners), site, form)
        cached = self._cache.get(key)
        if cached is None:
            cached = (*self._render(policy, owners, site, form), (policy, owners))
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[key] = cached
        return _response(method, cached[0], cached[1])

    def response_headers(self, host: str, path: str, scheme: str,
                         authority: str = "") -> tuple[tuple[str, str], ...]:
        """The declaration headers for a forwarded response on `path`; no I/O."""
        found = self._headers(host, path, scheme, authority, build=True)
        assert found is not None
        return found

    def ready_headers(self, host: str, path: str, scheme: str,
                      authority: str = "") -> tuple[tuple[str, str], ...] | None:
        """`response_headers`, or None while the plan is not built (`build_plan`)."""
        return self._headers(host, path, scheme, authority, build=False)

    async def declared_headers(self, host: str, path: str, scheme: str,
                               authority: str = "") -> tuple[tuple[str, str], ...]:
        """`response_headers` for a front end on the event loop: a plan not built yet
        (after a reload, say) is derived in a worker thread (`build_plan`)."""
        found = self.ready_headers(host, path, scheme, authority)
        if found is None:
            await self.build_plan(host)
            found = self.response_headers(host, path, scheme, authority)
        return found

    def _headers(self, host: str, path: str, scheme: str, authority: str,
                 build: bool) -> tuple[tuple[str, str], ...] | None:
        if self._vocab is None:
            return ()
        policy = self._policy()
        declarations = policy.declarations
        if not (declarations.tdmrep or declarations.content_usage or offers_licences(policy)):
            return ()  # nothing to declare: no plan needed
        site = f"{scheme}://{authority or host}"
        rsl = _absolute(site, policy.rsl_url)
        terms = _absolute(site, policy.license_terms_url)
        origin = self._peek(host)
        if not build:
            cached = self._plans.get(self._key(policy, self._owners(), host, origin))
            return cached[0].headers_for(path, rsl, terms) if cached is not None else None
        return self.plan(policy, host, origin).headers_for(path, rsl, terms)

    def plan(self, policy: Policy, host: str, origin: RobotsRules | None) -> Plan:
        """The declarations for `host` (cached; see `gatekeeper.core.declarations`)."""
        assert self._vocab is not None
        owners = self._owners()
        key = self._key(policy, owners, host, origin)
        cached = self._plans.get(key)
        if cached is not None:
            return cached[0]
        return self._keep(key, self._derive(policy, host, origin, owners), policy, owners)

    async def build_plan(self, host: str) -> None:
        """Build the current plan for `host` in a worker thread, once however many
        requests wait for it. A new plan (a policy reload, a new origin robots.txt, new
        owners) takes tens of milliseconds to derive, more for a large origin file: on
        the event loop, every request and health check would wait that long."""
        assert self._vocab is not None
        policy, owners, origin = self._policy(), self._owners(), self._peek(host)
        key = self._key(policy, owners, host, origin)
        if key in self._plans:
            return
        pending = self._building.get(key)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(
                self._derive, policy, host, origin, owners))
            self._building[key] = pending
            pending.add_done_callback(lambda _: self._building.pop(key, None))
        found = await asyncio.shield(pending)
        if key not in self._plans:
            self._keep(key, found, policy, owners)

    def _derive(self, policy: Policy, host: str, origin: RobotsRules | None,
                owners: Owners) -> Plan:
        assert self._vocab is not None
        return plan(policy, self._crawlers, self._vocab, host=host, origin=origin,
                    owners=owners, jwks=self._jwks() is not None,
                    robots_compliance=self._robots_compliance)

    def _key(self, policy: Policy, owners: Owners, host: str,
             origin: RobotsRules | None) -> tuple[int, int, int, str]:
        text = origin.text if origin is not None else ""
        return (id(policy), id(owners), section_index(policy, host), text)

    def _keep(self, key: tuple[int, int, int, str], found: Plan, policy: Policy,
              owners: Owners) -> Plan:
        if len(self._plans) >= _MAX_PLANS:
            self._plans.pop(next(iter(self._plans)))
        self._plans[key] = (found, (policy, owners))
        self._report(policy, found)
        if self._on_new_plan is not None:
            self._on_new_plan()
        return found

    def _report(self, policy: Policy, found: Plan) -> None:
        for conflict in found.conflicts:
            self._warn_once(policy, "robots_txt_conflict", conflict)

    def _warn_once(self, policy: Policy, event: str, detail: str) -> None:
        """Once per policy: the documents are rendered for every request for them."""
        if (id(policy), detail) not in self._reported:
            if len(self._reported) >= _MAX_CACHED:
                self._reported.clear()
            self._reported.add((id(policy), detail))
            _log.warning(event, detail=detail)

    def _peek(self, host: str) -> RobotsRules | None:
        origin = self._origin.peek(host) if self._origin is not None else None
        return origin if origin is not None and origin.source == "parsed" else None

    async def _robots(self, policy: Policy, host: str, site: str) -> web.Response:
        origin: RobotsRules | None = None
        if self._origin is not None:
            origin = await self._origin.rules(host)
            if origin.source == "disallow-all":
                # The origin's file is unreachable and no recent copy exists: RFC 9309
                # crawlers read a 5xx as "disallow everything", which is what we know.
                return web.Response(status=503, text="robots.txt is unavailable\n",
                                    headers={"Retry-After": "60"})
            if origin.source != "parsed":
                origin = None
        doc = robots_document(policy, self.plan(policy, host, origin), origin, site)
        if doc.over_limit:
            self._warn_once(policy, "robots_txt_over_limit",
                            f"generated groups take {doc.generated_size} bytes, over the "
                            f"{PARSE_LIMIT} parsers must read: gatekeeper check says why")
        for conflict in doc.usage_conflicts:
            self._warn_once(policy, "robots_txt_conflict", conflict)
        return _response("GET", doc.text.encode(), "text/plain; charset=utf-8")

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
