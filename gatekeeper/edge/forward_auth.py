"""Forward-auth: Gatekeeper decides, the proxy already at the edge forwards.

Why this exists: where nginx, Traefik or Envoy is the edge already (TLS, HTTP/2
and 3, static files, load balancing), a second, Python proxy in the data path
costs a hop and streams every byte once more. Here the front proxy only asks:
nginx `auth_request`, Traefik `forwardAuth` and Envoy's HTTP `ext_authz` send
the head of each request to this endpoint, act on the answer and forward the
request themselves. Bodies never pass through Gatekeeper. The decision is the
gate's (`Gate.decide`), the same one the reverse proxy executes.

One check:

- Only a trusted proxy (`trusted_proxies`, by socket peer) may ask; anyone else
  gets 403, and so does everyone when no proxy is trusted.
- The original request. Under `path_prefix` (Envoy's `path_prefix`): the
  method is the check's own, the target is its path minus the prefix, the host
  its `Host`, and no header can name another target. Otherwise: the target is
  `X-Original-URI` (nginx) or `X-Forwarded-Uri` (Traefik), the method
  `X-Original-Method` or `X-Forwarded-Method` (default GET), the host
  `X-Forwarded-Host`, else `Host`. Two different values for one of these (two
  header lines, or both spellings) are a 400: one of them did not come from the
  proxy. Without either target header and without a prefix, the check's own
  method and path are the original ones (Envoy without `path_prefix`). The
  client address comes through the trusted chain (`X-Forwarded-For`, then
  `Forwarded`, then `X-Real-IP`); every other header (User-Agent, signatures,
  licence tokens) is read as received. The target and host are checked and
  canonicalised exactly as the proxy does; a bad one gets the proxy's 400.
- The public documents (robots.txt, TDMRep, RSL, terms, JWKS) are never gated:
  allowed, as the proxy serves them whatever the policy says. A robots.txt or
  tdmrep.json that Gatekeeper does not write (`declarations.robots_txt: off`,
  `tdmrep: false`), which the proxy forwards to the origin ungated, is allowed
  with the declaration headers of any forwarded response.
- Allowed: 200, empty body, with `X-Gatekeeper-Action`, `-Rule`, `-Reason`,
  `-Crawler` and `-Identity` for the front proxy to pass upstream, and the
  headers the proxy would add to the client's response under their own names
  (the decision's `crawler-charged`/`Link`, and for GET and HEAD the declaration
  headers `Content-Usage`, `tdm-reservation`, `tdm-policy`, `Link`).
- Denied: the decision's status, headers and body, as the proxy answers them,
  plus `X-Gatekeeper-Status`. nginx's `auth_request` turns any status but 2xx,
  401 and 403 into a 500 and drops the body, so a check carrying
  `X-Gatekeeper-Front: nginx` (set by deploy/nginx/gatekeeper-forward-auth.conf)
  is denied with 403 whatever the status, the body moved into the
  `X-Gatekeeper-Body` header (one line: a trailing newline dropped, other line
  breaks and control characters made spaces), and nginx answers the client
  with `X-Gatekeeper-Status`. A client that sends that header through Traefik
  or Envoy only changes how its denial is spelled: a deny is never a 2xx.
- Cacheability: a decision that depended on nothing but the request's method,
  host, target, client address and user agent (an allow or a block, or their
  monitor-mode dry runs, with no rate limit, licence, monitor rule, behaviour
  score, pending identity check, store fallback or policy header condition
  involved) carries `X-Accel-Expires: <cache_ttl>` (nginx honours it) and
  `Cache-Control: private, max-age=<cache_ttl>`; every other answer
  `X-Accel-Expires: 0` and `Cache-Control: no-store`. A denial that sets its own
  `Cache-Control` keeps it.
- Each decision is observed once, with the status the client is answered (200
  for an allowed request: the origin's status is the front proxy's to log), the
  denial body's length and no upstream time; a refused check with
  `Observer.bad_request`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from gatekeeper.core.decision import Decision, Reason
from gatekeeper.core.evaluate import Selected
from gatekeeper.core.facts import RequestFacts
from gatekeeper.core.model import Allow, Block, Policy, Rule
from gatekeeper.edge import responses
from gatekeeper.edge.client_ip import TrustedProxies, canonical_ip, client_ip, normalise
from gatekeeper.edge.documents import Documents
from gatekeeper.edge.headers import gate_headers
from gatekeeper.edge.target import BadRequest, canonicalize, check_host
from gatekeeper.gate import Gate, Outcome
from gatekeeper.observe import logging as gk_logging
from gatekeeper.observe.record import Observation, Observer

if TYPE_CHECKING:
    from gatekeeper import wiring

DEFAULT_CACHE_TTL: Final = 5.0
FRONT_HEADER: Final = "X-Gatekeeper-Front"
STATUS_HEADER: Final = "X-Gatekeeper-Status"
BODY_HEADER: Final = "X-Gatekeeper-Body"
NO_CACHE: Final = (("X-Accel-Expires", "0"), ("Cache-Control", "no-store"))
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
# Printable ASCII but "%": what a header value may hold as it is.
_HEADER_SAFE: Final = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")

_log = gk_logging.get_logger("gatekeeper.forward_auth")


class ForwardAuth:
    """Answers forward-auth checks (`handle`); see the module docstring.

    `policy` is the serving policy's getter (the one the gate reads), used to
    tell whether a decision read headers other than the cache key's.
    """

    def __init__(
        self,
        gate: Gate,
        observer: Observer,
        trusted: TrustedProxies,
        policy: Callable[[], Policy],
        *,
        documents: Documents | None = None,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        path_prefix: str = "",
        fold_case: bool = False,
    ) -> None:
        if path_prefix and (not path_prefix.startswith("/") or path_prefix.endswith("/")):
            raise ValueError(f"path_prefix {path_prefix!r} must start with '/' and not end "
                             "with one")
        self._gate = gate
        self._observer = observer
        self._trusted = trusted
        self._policy = policy
        self._documents = documents
        self._prefix = path_prefix
        self._fold_case = fold_case  # `path_case: insensitive`: decide on the lower-cased path
        seconds = math.floor(cache_ttl) if math.isfinite(cache_ttl) else 0
        self._cache_for: tuple[tuple[str, str], ...] = (
            (("X-Accel-Expires", str(seconds)), ("Cache-Control", f"private, max-age={seconds}"))
            if seconds >= 1 else NO_CACHE)
        self._headers_read = _HeaderRules()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except Exception:  # fail closed: a bug is a 500, never an allow
            _log.exception("forward_auth_internal_error", method=request.method)
            self._observer.bad_request("internal_error", _peer(request), request.method, 500)
            return _refusal(500, "internal_error", nginx=False)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        peer = normalise(_peer(request))
        if not self._trusted.contains(peer):
            self._observer.bad_request("untrusted_peer", peer, request.method, 403)
            return _refusal(403, "untrusted_peer", nginx=False)
        headers = request.headers
        nginx = headers.get(FRONT_HEADER, "").lower() == "nginx"
        ip = _client(peer, headers, self._trusted)
        try:
            facts, authority = self._facts(request, ip)
        except BadRequest as exc:
            self._observer.bad_request(exc.reason, ip, request.method, exc.status)
            return _refusal(exc.status, exc.reason, nginx)
        documents = self._documents
        kind = documents.kind(facts.method, facts.path) if documents is not None else None
        if kind is not None:
            outcome = await self._gate.read_declaration(facts)
        else:
            try:
                outcome = await self._gate.decide(facts)
            except Exception:
                _log.exception("gate_failed", method=facts.method, path=facts.path)
                self._observer.bad_request("internal_error", ip, facts.method, 500)
                return _refusal(500, "internal_error", nginx=False)
        decision = outcome.decision
        cache = self._cache_for if self._cacheable(outcome, facts) else NO_CACHE
        if decision.forward:
            declared: tuple[tuple[str, str], ...] = ()
            # The proxy adds these to what it forwards, the origin's robots.txt included.
            forwarded = kind is None or (documents is not None and documents.origin_serves(kind))
            if documents is not None and forwarded and facts.method in ("GET", "HEAD"):
                declared = await documents.declared_headers(facts.host, facts.path,
                                                            facts.scheme, authority)
            resp = _allowed(outcome, declared, cache)
            status, sent = 200, 0
        else:
            resp = _denied(outcome, cache, nginx)
            status, sent = decision.status, len(decision.body)
        self._observer.observe(Observation(facts, outcome, status, sent,
                                           time.perf_counter() - started, document=kind or ""))
        return resp

    def _facts(self, request: web.BaseRequest, ip: str) -> tuple[RequestFacts, str]:
        """The original request's facts, and its host as addressed (for absolute URLs)."""
        headers = request.headers
        raw = request.raw_path
        prefix = self._prefix
        host_header: str | None
        if prefix and (raw == prefix or raw.startswith((prefix + "/", prefix + "?"))):
            # Envoy sends the original path after the prefix, the original method and
            # Host; target and host headers are not believed in this form.
            target = raw[len(prefix):]
            target = target if target.startswith("/") else "/" + target
            method, host_header = request.method, _single(headers, "Host")
        else:
            found = _single(headers, "X-Original-URI", "X-Forwarded-Uri")
            method = _single(headers, "X-Original-Method", "X-Forwarded-Method") or ""
            if found is not None:
                target, method = found, method or "GET"
            elif prefix:
                raise BadRequest("no_original_target", "no X-Original-URI or X-Forwarded-Uri, "
                                 "and the path is not under the path prefix")
            else:
                target, method = raw, method or request.method
            host_header = _single(headers, "X-Forwarded-Host") or _single(headers, "Host")
        if not _TOKEN.fullmatch(method):
            raise BadRequest("bad_method", "the original method is not an HTTP token")
        canonical = canonicalize(method, target, fold_case=self._fold_case)
        host = check_host(host_header)
        proto = (_single(headers, "X-Forwarded-Proto") or "").lower()
        facts = RequestFacts(
            method=method, host=host, path=canonical.path, query=canonical.query,
            headers=headers, client_ip=ip, now=time.time(),
            raw_path=target.partition("?")[0],
            scheme=proto if proto in ("http", "https") else request.scheme,
        )
        return facts, _authority(host_header or "", host)

    def _cacheable(self, outcome: Outcome, facts: RequestFacts) -> bool:
        """Whether the decision depended on the cache key's inputs alone."""
        decision = outcome.decision
        if (outcome.behaviour is not None or outcome.license is not None
                or outcome.store_fallback
                or decision.reason not in (Reason.ALLOWED, Reason.BLOCKED, Reason.DRY_RUN)):
            return False
        verification = outcome.verification
        if verification is not None and any(c.result == "pending" for c in verification.checks):
            return False  # the next request gets the lookup's answer
        selected = outcome.selected
        if selected is None:
            # No rule was evaluated: a public document, or an owner's opt-out.
            return decision.action in ("allow", "block")
        if not isinstance(selected.action, Allow | Block):
            return False  # rate limits, licences and monitor rules count every request
        return not self._headers_read(self._policy(), facts.host, selected)


class _HeaderRules:
    """Whether evaluation tried a rule with header conditions before settling on the
    selected one: such a decision depends on headers no cache key holds."""

    __slots__ = ("_any", "_policy")

    def __init__(self) -> None:
        self._policy: Policy | None = None
        self._any = False

    def __call__(self, policy: Policy, host: str, selected: Selected) -> bool:
        if policy is not self._policy:
            rules = [*policy.rules, *(r for s in policy.host_sections for r in s.rules)]
            self._any = any(rule.match.headers for rule in rules)
            self._policy = policy
        if not self._any:
            return False
        # The order `select` tries rules in: the first host section that matches, then
        # the top-level rules. A selected rule that is not found (the policy was
        # reloaded meanwhile) means every rule counts.
        for section in policy.host_sections:
            if any(p.match(host) for p in section.hosts):
                found, read = _tried(section.rules, selected.rule)
                if found or read:
                    return read
                break
        return _tried(policy.rules, selected.rule)[1]


def _tried(rules: Iterable[Rule], selected: Rule | None) -> tuple[bool, bool]:
    """(whether `selected` is among `rules`, whether a rule with header conditions
    comes before it or is it)."""
    read = False
    for rule in rules:
        read = read or bool(rule.match.headers)
        if rule is selected:
            return True, read
    return False, read


# -- answers -------------------------------------------------------------------------


def _allowed(outcome: Outcome, declared: tuple[tuple[str, str], ...],
             cache: tuple[tuple[str, str], ...]) -> web.Response:
    headers = _about(outcome)
    for name, value in gate_headers(outcome.decision.response_headers, declared):
        # One line per name (a second `Link` joined to the first, as RFC 9110 allows):
        # nginx before 1.23 reads only the first line of a header into a variable.
        known = headers.get(name)
        headers[name] = value if known is None else f"{known}, {value}"
    headers.extend(cache)
    return responses.QuietResponse(status=200, headers=headers)


def _denied(outcome: Outcome, cache: tuple[tuple[str, str], ...], nginx: bool) -> web.Response:
    decision = outcome.decision
    headers = _about(outcome)
    for name, value in decision.headers:
        headers.add(name, value)
    headers[STATUS_HEADER] = str(decision.status)
    own_cache_control = "Cache-Control" in headers
    for name, value in cache:
        if not (own_cache_control and name == "Cache-Control"):
            headers.add(name, value)
    if nginx:
        headers[BODY_HEADER] = header_body(decision.body)
        return responses.QuietResponse(status=403, headers=headers)
    return responses.QuietResponse(status=decision.status, body=decision.body, headers=headers)


def _refusal(status: int, reason: str, nginx: bool) -> web.Response:
    """A check refused before a decision (untrusted peer, bad target, internal error)."""
    answer = responses.error_answer(status, reason)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in answer.headers:
        if name != "Cache-Control":
            headers.add(name, value)
    headers.extend(NO_CACHE)
    headers[STATUS_HEADER] = str(status)
    if nginx and status != 500:
        headers[BODY_HEADER] = header_body(answer.body)
        return responses.QuietResponse(status=403, headers=headers)
    return responses.QuietResponse(status=status, body=answer.body, headers=headers)


def _about(outcome: Outcome) -> CIMultiDict[str]:
    """What the front proxy can pass upstream: who this is and what was decided."""
    decision: Decision = outcome.decision
    headers: CIMultiDict[str] = CIMultiDict()
    headers["X-Gatekeeper-Action"] = decision.action
    headers["X-Gatekeeper-Rule"] = header_value(decision.rule)
    headers["X-Gatekeeper-Reason"] = decision.reason.value
    headers["X-Gatekeeper-Crawler"] = header_value(outcome.classification.name)
    headers["X-Gatekeeper-Identity"] = outcome.identity.value
    return headers


def header_value(text: str) -> str:
    """`text` as a header value: printable ASCII as it is, anything else
    percent-encoded (UTF-8), and so is "%" then."""
    if text.isascii() and text.isprintable():
        return text
    return quote(text, safe=_HEADER_SAFE)


def header_body(body: bytes) -> str:
    """A denial body as one header line: one trailing newline dropped, line breaks
    and other control characters turned into spaces."""
    text = body.decode("utf-8", "replace")
    if text.endswith("\n"):
        text = text[:-1]
    return _CONTROL.sub(" ", text)


# -- the request ---------------------------------------------------------------------


def _single(headers: MultiMapping[str], *names: str) -> str | None:
    """The one value the named headers agree on; None when none is present, and a
    400 when they disagree (two lines, or two spellings with different values)."""
    value: str | None = None
    for name in names:
        for line in headers.getall(name, ()):
            if value is not None and line != value:
                raise BadRequest("conflicting_forwarded",
                                 f"conflicting values for {' / '.join(names)}")
            value = line
    return value


def _client(peer: str, headers: MultiMapping[str], trusted: TrustedProxies) -> str:
    """The client address through the trusted chain; `X-Real-IP` from a trusted peer
    when neither `X-Forwarded-For` nor `Forwarded` is there."""
    if "X-Forwarded-For" not in headers and "Forwarded" not in headers:
        real = headers.get("X-Real-IP")
        if real is not None:
            return canonical_ip(real.strip()) or peer
    return client_ip(peer, headers, trusted).ip


def _authority(raw: str, host: str) -> str:
    """Host and port as the client addressed the site, for absolute URLs."""
    _, colon, port = raw.rpartition(":")
    if colon and port.isdigit() and not raw.endswith("]"):
        return f"{host}:{port}"
    return host


def _peer(request: web.BaseRequest) -> str:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if peer else "0.0.0.0"


# -- the application -----------------------------------------------------------------


def forward_auth_app(
    c: wiring.Components,
    observer: Observer | None = None,
    *,
    cache_ttl: float | None = None,
    path_prefix: str = "",
) -> web.Application:
    """The forward-auth listener: every method and path is a check (see the module
    docstring). `cache_ttl` defaults to the `forward_auth_cache_ttl` setting (5 s
    where there is none); `path_prefix` is Envoy's `path_prefix`. When robots.txt
    compliance is on, the origin's robots.txt is read from `upstream` as the proxy
    does, with a client session that lives as long as the application."""
    # Imported here: wiring imports the edge, and only this factory needs these.
    from gatekeeper.edge.origin_robots import OriginRobots
    from gatekeeper.edge.server import new_session

    settings = c.settings
    if not c.trusted:
        from gatekeeper.errors import SettingsError

        raise SettingsError("forward-auth needs trusted_proxies: the addresses the front "
                            "proxy (nginx, Traefik, Envoy) connects from")
    ttl = cache_ttl if cache_ttl is not None else float(
        getattr(settings, "forward_auth_cache_ttl", DEFAULT_CACHE_TTL))
    from gatekeeper.wiring import public_documents

    documents = public_documents(c)
    auth = ForwardAuth(c.gate, observer or c.recorder, c.trusted, c.holder.get,
                       documents=documents, cache_ttl=ttl, path_prefix=path_prefix,
                       fold_case=settings.path_case == "insensitive")
    app = web.Application()
    app.router.add_route("*", r"/{tail:[\s\S]*}", auth.handle)
    sessions: list[aiohttp.ClientSession] = []
    robots: list[OriginRobots] = []

    async def attach(_: web.Application) -> None:
        if not settings.upstream:
            return
        session = new_session(settings)
        sessions.append(session)
        robots.append(OriginRobots(session, settings.upstream, ttl=settings.robots_ttl))
        documents.attach_origin(robots[-1])
        if settings.robots_compliance:
            c.gate.attach_robots(robots[-1])

    async def detach(_: web.Application) -> None:
        c.gate.attach_robots(None)
        documents.attach_origin(None)
        for source in robots:
            await source.close()
        for session in sessions:
            await session.close()

    app.on_startup.append(attach)
    app.on_cleanup.append(detach)
    return app
