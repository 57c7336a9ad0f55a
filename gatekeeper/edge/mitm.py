"""Gatekeeper as a mitmproxy addon: the same gate, with mitmproxy as the HTTP front end.

What it is for:

- Reverse mode, in front of a site, where mitmproxy is already the edge (or its
  HTTP/2, HTTP/3 and TLS handling is wanted)::

      mitmdump -s "$(python -c 'import gatekeeper.edge.mitm as m; print(m.__file__)')" \\
          --mode reverse:http://127.0.0.1:8000 --listen-port 8080 \\
          --set gatekeeper_policy=/etc/gatekeeper/policy.yaml

  (`python -m gatekeeper.edge.mitm` prints the same path.) The upstream is the
  reverse mode's target; an `upstream` in the settings is overridden by it.
- A forward proxy (`--mode regular`) for testing a crawler against a policy: point
  the crawler at mitmproxy (and trust mitmproxy's CA for HTTPS) and every request
  it makes is decided as if the sites were behind Gatekeeper. Only what mitmproxy
  parses as HTTP is gated: hosts passed through undecrypted (`ignore_hosts`,
  `tcp_hosts`) and raw TCP/UDP are not. In forward mode there is no single origin
  to read robots.txt from, so robots.txt compliance is off and the served
  /robots.txt holds only the policy's groups, unless `upstream` is set in the
  settings (then that origin's robots.txt is used for every host).

Options (`--set name=value`): `gatekeeper_policy` (policy file; "" for the
embedded default), `gatekeeper_config` (a settings YAML, as `gatekeeper run
--config`), `gatekeeper_trusted_proxies` (CIDRs whose forwarded headers are
believed; repeat the option for several) and `gatekeeper_state_dir` (keys,
licensees, ledger). Every other setting comes from the settings file or the
`GATEKEEPER_*` environment, with the same precedence as `gatekeeper run`
(options act as the command line). They are read once, at start-up: the policy
file is still reloaded when it changes, as in `gatekeeper run`.

Per request, the same steps as the aiohttp proxy (`gatekeeper.edge.proxy`), with
the same answers: the client address through the trusted proxies; the framing,
`Expect`, target and `Host` checks (a bad request gets the proxy's 4xx and
nothing is forwarded); the public documents (robots.txt, TDMRep, the RSL and
terms documents, JWKS) answered here, or forwarded ungated where the origin
serves them (`declarations.robots_txt: off`, `tdmrep: false`); the gate's
decision; a denied request answered with the decision's status, headers and
body; an allowed one forwarded to the canonical path with the hop-by-hop and
spoofable identity headers stripped and Gatekeeper's `X-Forwarded-*`/`Forwarded`
added (`upstream_request_headers`); the decision's response headers and the
declaration headers on the response; one `Observation` per request.

What differs from the aiohttp proxy:

- The decision is taken in `requestheaders`, before mitmproxy reads the body:
  a request mitmproxy streams is sent upstream before the `request` hook runs,
  so deciding there would forward first and decide after.
- mitmproxy buffers bodies by default. The addon streams every allowed request
  body and every response itself (per flow, counting the bytes), so nothing
  allowed is held in memory. A denied request's body is still read, and
  buffered, before mitmproxy can send the answer (the proxy answers at once and
  closes): bound it with mitmproxy's `body_size_limit`. Do not set
  `stream_large_bodies`: mitmproxy cannot answer a flow whose request body it
  has started to stream, and such a request fails with a reset instead of the
  decision's answer (it is never forwarded).
- mitmproxy checks the request itself first (`validate_inbound_headers`, its own
  parser): what it refuses gets mitmproxy's error page, not the proxy's JSON. An
  upstream that cannot be reached is mitmproxy's 502 page too.
- `keep_host_header` is switched on: the gate decides on, and the upstream gets,
  the `Host` the client sent, as with the proxy.
- `Expect: 100-continue` is answered by mitmproxy, also for a request that
  will be denied.
- The licence server's token and introspection endpoints are not served here
  (they are aiohttp handlers): with signing keys and `site_hosts` configured,
  requests to them are answered 501 and not forwarded. The admin listener
  (metrics, readiness) is not started; metrics are recorded but not exposed.
- WebSocket upgrades are gated like any request and then handled by mitmproxy.
- Gatekeeper's log lines go to standard output as with `gatekeeper run`;
  mitmproxy's own logging is left as it was.

docs/mitmproxy.md has the details; tests/integration/test_frontends.py runs
tests/vectors/frontends.yaml through this addon and the proxy and compares them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from email.utils import formatdate
from typing import Final

import aiohttp
from aiohttp import web
from mitmproxy import addonmanager, ctx, exceptions, http
from mitmproxy.proxy import mode_specs
from multidict import CIMultiDict, CIMultiDictProxy

from gatekeeper import settings as gk_settings
from gatekeeper import wiring
from gatekeeper.core.facts import RequestFacts
from gatekeeper.edge import responses, server
from gatekeeper.edge.client_ip import client_ip
from gatekeeper.edge.documents import Documents
from gatekeeper.edge.headers import (
    add_gate_headers,
    connection_tokens,
    downstream_response_headers,
    is_websocket_upgrade,
    request_framing,
    upstream_request_headers,
)
from gatekeeper.edge.origin_robots import OriginRobots
from gatekeeper.edge.target import BadRequest, canonicalize, check_host
from gatekeeper.errors import GatekeeperError
from gatekeeper.gate import Outcome
from gatekeeper.ledger.file import FileLedger
from gatekeeper.observe import logging as gk_logging
from gatekeeper.observe.record import Observation
from gatekeeper.policy.reload import watch
from gatekeeper.settings import Settings
from gatekeeper.verify.range_update import RangeRefresher

OPTIONS: Final = frozenset({
    "gatekeeper_policy", "gatekeeper_config", "gatekeeper_trusted_proxies",
    "gatekeeper_state_dir",
})
METADATA_KEY: Final = "gatekeeper"
# Forward modes have no single origin; `wiring.build` wants an upstream all the same.
NO_UPSTREAM: Final = "http://forward-proxy.invalid"

_log = gk_logging.get_logger("gatekeeper.mitm")


class _Flow:
    """What the addon remembers about one forwarded flow, in `flow.metadata`.

    Not a dataclass: mitmproxy runs a script file without registering it in
    `sys.modules`, where `dataclass` looks its module up."""

    __slots__ = ("connection", "document", "facts", "forwarded_at", "gate_duration", "observed",
                 "outcome", "sent", "started", "streamed")

    def __init__(self, facts: RequestFacts, outcome: Outcome, started: float,
                 forwarded_at: float, connection: str, gate_duration: float,
                 document: str = "") -> None:
        self.facts = facts
        self.outcome = outcome
        self.document = document  # the public document forwarded (the origin's robots.txt)
        self.started = started  # perf_counter() when the request head was decided on
        self.gate_duration = gate_duration  # seconds until it went back to mitmproxy
        self.forwarded_at = forwarded_at  # wall clock when it went back to mitmproxy
        # The client's own `close`/`keep-alive` (not sent upstream); "" when none.
        self.connection = connection
        self.sent = 0  # response body bytes relayed to the client
        self.streamed = False
        self.observed = False


class GatekeeperAddon:
    """The gate as a mitmproxy addon; see the module docstring."""

    def __init__(self) -> None:
        self._c: wiring.Components | None = None
        self._documents: Documents | None = None
        self._licence_paths: frozenset[str] = frozenset()
        self._session: aiohttp.ClientSession | None = None
        self._robots: OriginRobots | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._refresher: RangeRefresher | None = None
        self._ledger: FileLedger | None = None
        self._forward_origin = True  # False: no single upstream (forward modes)
        self._started = False

    # -- mitmproxy lifecycle ---------------------------------------------------------

    def load(self, loader: addonmanager.Loader) -> None:
        loader.add_option("gatekeeper_policy", str, "",
                          "Gatekeeper policy file; empty for the embedded default policy.")
        loader.add_option("gatekeeper_config", str, "",
                          "Gatekeeper settings YAML (as `gatekeeper run --config`).")
        loader.add_option(
            "gatekeeper_trusted_proxies", Sequence[str], [],  # type: ignore[arg-type, unused-ignore]
            "CIDRs of proxies in front of mitmproxy whose X-Forwarded-For is believed.")
        loader.add_option("gatekeeper_state_dir", str, "",
                          "Gatekeeper state directory (keys, licensees, ledger).")

    def configure(self, updated: set[str]) -> None:
        if not ctx.options.keep_host_header:
            # The gate decides on the client's Host, and forwards it (as the proxy does).
            # mitmproxy's OptManager.update is not annotated.
            ctx.options.update(keep_host_header=True)  # type: ignore[no-untyped-call, unused-ignore]
        if not (updated & (OPTIONS | {"mode"})):
            return
        if self._c is not None:
            raise _options_error(
                "gatekeeper: options are read once, at start-up; restart mitmproxy to change them")
        try:
            settings = self._settings()
            _configure_logging(settings)
            self._c = wiring.build(settings)
        except GatekeeperError as exc:
            # Until this is fixed every request is refused (see `requestheaders`).
            raise _options_error(f"gatekeeper: {exc}") from exc
        c = self._c
        self._documents = wiring.public_documents(c)
        if c.licensing.keyring is not None and c.settings.site_hosts:
            prefix = wiring.LICENCE_SERVER_PREFIX
            self._licence_paths = frozenset({prefix + "/token", prefix + "/introspect"})

    def _settings(self) -> Settings:
        opts = ctx.options
        flags: dict[str, object] = {
            "policy": str(opts.gatekeeper_policy) or None,
            "trusted_proxies": tuple(str(x) for x in opts.gatekeeper_trusted_proxies) or None,
            "state_dir": str(opts.gatekeeper_state_dir) or None,
        }
        target = reverse_target(list(opts.mode))
        if target is not None:
            flags["upstream"] = target
        settings = gk_settings.resolve(str(opts.gatekeeper_config) or None, flags)
        if not settings.upstream:
            self._forward_origin = False
            settings = settings.with_overrides(
                {"upstream": NO_UPSTREAM, "robots_compliance": False}, "mitmproxy forward mode")
        return settings

    async def running(self) -> None:
        c = self._c
        if c is None or self._started:
            return
        self._started = True
        self._watcher = asyncio.create_task(watch(
            c.holder, c.settings.policy_watch_interval, lambda r: wiring.record_reload(c, r)))
        self._refresher = wiring.range_refresher(c)
        if self._refresher is not None:
            self._refresher.start()
        self._ledger = await wiring.open_ledger(c)
        if self._forward_origin:
            self._session = server.new_session(c.settings)
            self._robots = OriginRobots(self._session, c.settings.upstream,
                                        ttl=c.settings.robots_ttl)
            assert self._documents is not None
            self._documents.attach_origin(self._robots)
            if c.settings.robots_compliance:
                c.gate.attach_robots(self._robots)
        wiring.freeze_long_lived()
        _log.info("started", front_end="mitmproxy", upstream=c.settings.upstream,
                  policy=c.holder.current.source)

    async def done(self) -> None:
        c, self._c = self._c, None
        if c is None:
            return
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._refresher is not None:
            await self._refresher.stop()
        c.gate.attach_robots(None)
        if self._documents is not None:
            self._documents.attach_origin(None)
        if self._robots is not None:
            await self._robots.close()
        if self._session is not None:
            await self._session.close()
        c.recorder.ledger = None
        if self._ledger is not None:
            await self._ledger.close()
        await c.identity.close()
        await c.store.close()
        _log.info("stopped", front_end="mitmproxy")

    # -- requests --------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Decide on the head, before mitmproxy reads (or streams) the body."""
        started = time.perf_counter()
        c = self._c
        if c is None:  # the settings or the policy did not load: fail closed
            _answer(flow, responses.error_answer(503, "gate_unavailable"))
            return
        try:
            await self._decide(flow, c, started)
        except Exception:  # fail closed: a bug answers 500, it never forwards
            _log.exception("mitm_internal_error", method=flow.request.method)
            c.recorder.bad_request("internal_error", _peer(flow), flow.request.method, 500)
            _answer(flow, responses.error_answer(500, "internal_error"))

    async def _decide(self, flow: http.HTTPFlow, c: wiring.Components, started: float) -> None:
        request = flow.request
        incoming = _multidict(request.headers.fields)
        address = client_ip(_peer(flow), incoming, c.trusted)
        scheme = "https" if flow.client_conn.tls_established else "http"
        try:
            facts, declared = self._facts(flow, incoming, address.ip, scheme, c.settings)
        except BadRequest as exc:
            c.recorder.bad_request(exc.reason, address.ip, request.method, exc.status)
            _answer(flow, responses.error_answer(exc.status, exc.reason))
            return
        if facts.path in self._licence_paths:
            c.recorder.bad_request("not_implemented", address.ip, request.method, 501)
            _answer(flow, responses.error_answer(501, "licence_server_not_served_here"))
            return
        documents = self._documents
        kind = documents.kind(request.method, facts.path) if documents is not None else None
        if documents is not None and kind is not None and not documents.origin_serves(kind):
            outcome = await c.gate.read_declaration(facts)
            resp = await documents.answer(kind, request.method, facts.query, facts.host,
                                          scheme, incoming.get("Accept", ""))
            size = resp.content_length or 0 if request.method != "HEAD" else 0
            c.recorder.observe(Observation(facts, outcome, resp.status, size,
                                           time.perf_counter() - started, document=kind))
            flow.response = _document_response(resp, request.method)
            request.stream = False
            return
        # A public document the origin serves is forwarded as it is: never gated.
        outcome = await (c.gate.read_declaration(facts) if kind is not None
                         else c.gate.decide(facts))
        decision = outcome.decision
        if not decision.forward:
            c.recorder.observe(Observation(facts, outcome, decision.status, len(decision.body),
                                           time.perf_counter() - started))
            _answer(flow, responses.decision_answer(decision))
            return
        headers = upstream_request_headers(
            incoming, client_ip=facts.client_ip, host=facts.host, proto=scheme,
            forwarded_for_chain=address.chain,
            strip_license_tokens=not c.settings.forward_license_tokens,
        )
        if outcome.license is not None and not c.settings.forward_license_tokens:
            # The gate read a licence token here (maybe as Bearer): it was for the gate.
            headers.popall("Authorization", None)
        # mitmproxy frames the body it relays by these, as the client framed it.
        if declared is not None:
            headers["Content-Length"] = str(declared)
        elif "chunked" in incoming.get("Transfer-Encoding", "").lower():
            headers["Transfer-Encoding"] = "chunked"
        if "Expect" in incoming:  # 100-continue (checked): mitmproxy answers it, then drops it
            headers["Expect"] = incoming["Expect"]
        if is_websocket_upgrade(incoming):
            # mitmproxy relays the client's handshake itself: it needs these.
            headers["Connection"] = "Upgrade"
            headers["Upgrade"] = incoming.get("Upgrade", "websocket")
        request.headers = _mitm_headers(headers.items())
        request.path = facts.path + ("?" + facts.query if facts.query else "")
        request.stream = True  # streamed as it arrives, never buffered
        persistence = ", ".join(t for t in sorted(connection_tokens(incoming))
                                if t in ("close", "keep-alive"))
        flow.metadata[METADATA_KEY] = _Flow(facts, outcome, started, time.time(), persistence,
                                            time.perf_counter() - started, kind or "")

    def _facts(
        self, flow: http.HTTPFlow, headers: CIMultiDict[str], ip: str, scheme: str,
        settings: Settings,
    ) -> tuple[RequestFacts, int | None]:
        """The facts of a well-formed request and its declared body length;
        BadRequest for anything an upstream could read differently (as the proxy)."""
        request = flow.request
        declared = request_framing(request.http_version == "HTTP/1.0", headers)
        if declared is not None and declared > settings.max_body_size:
            raise BadRequest("body_too_large", "request body is larger than allowed", 413)
        expect = headers.get("Expect")
        if expect is not None and expect.lower() != "100-continue":
            raise BadRequest("expectation_failed", "only 100-continue is supported", 417)
        raw_target = request.path
        target = canonicalize(request.method, raw_target,
                              fold_case=settings.path_case == "insensitive")
        host = check_host(request.host_header)
        facts = RequestFacts(
            method=request.method, host=host, path=target.path, query=target.query,
            headers=CIMultiDictProxy(headers), client_ip=ip, now=time.time(),
            raw_path=raw_target.partition("?")[0], scheme=scheme,
        )
        return facts, declared

    # -- responses -------------------------------------------------------------------

    async def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = flow.metadata.get(METADATA_KEY)
        response = flow.response
        if not isinstance(state, _Flow) or response is None or self._c is None:
            return
        incoming = _multidict(response.headers.fields)
        headers = downstream_response_headers(incoming)
        for value in incoming.getall("Transfer-Encoding", ()):
            headers.add("Transfer-Encoding", value)  # how mitmproxy frames what it relays
        if response.status_code == 101:
            # The handshake mitmproxy relays (a WebSocket): the client checks these.
            for name in ("Connection", "Upgrade"):
                for value in incoming.getall(name, ()):
                    headers.add(name, value)
        facts = state.facts
        declared: tuple[tuple[str, str], ...] = ()
        if self._documents is not None and facts.method in ("GET", "HEAD"):
            declared = await self._documents.declared_headers(facts.host, facts.path,
                                                              facts.scheme)
        add_gate_headers(headers, state.outcome.decision.response_headers, declared)
        response.headers = _mitm_headers(headers.items())
        if state.connection:
            # The request went upstream without it; mitmproxy reads it from the same
            # request to decide whether the client's connection stays open.
            flow.request.headers["Connection"] = state.connection
        state.streamed = True
        response.stream = _counting(state)

    def response(self, flow: http.HTTPFlow) -> None:
        state = flow.metadata.get(METADATA_KEY)
        response = flow.response
        if not isinstance(state, _Flow) or state.observed or response is None:
            return
        sent = state.sent if state.streamed else len(response.raw_content or b"")
        self._observe(state, response.status_code, sent,
                      max(0.0, response.timestamp_start - state.forwarded_at), None)

    def error(self, flow: http.HTTPFlow) -> None:
        state = flow.metadata.get(METADATA_KEY)
        if not isinstance(state, _Flow) or state.observed:
            return
        message = flow.error.msg if flow.error is not None else ""
        kind = _error_kind(message, flow.response is not None)
        status = flow.response.status_code if flow.response is not None else (
            499 if kind == "client_disconnect" else 502)
        self._observe(state, status, state.sent, None, kind)

    def _observe(self, state: _Flow, status: int, sent: int, upstream: float | None,
                 error: str | None) -> None:
        state.observed = True
        if self._c is not None:
            self._c.recorder.observe(Observation(
                state.facts, state.outcome, status, sent, time.perf_counter() - state.started,
                upstream, error, document=state.document, gate_duration=state.gate_duration))


def reverse_target(modes: Iterable[str]) -> str | None:
    """The upstream URL of the reverse mode(s) in `modes`; None when there is none.
    OptionsError for a reverse mode that is not HTTP(S), or for two targets."""
    targets: set[str] = set()
    for spec in modes:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError as exc:
            raise _options_error(f"gatekeeper: mode {spec!r}: {exc}") from exc
        if not isinstance(mode, mode_specs.ReverseMode):
            continue
        if mode.scheme not in ("http", "https"):
            raise _options_error(
                f"gatekeeper: mode {spec!r}: only HTTP(S) reverse targets can be gated")
        host, port = mode.address
        authority = f"[{host}]" if ":" in host else host
        targets.add(f"{mode.scheme}://{authority}:{port}")
    if len(targets) > 1:
        raise _options_error(
            f"gatekeeper: one gate has one upstream, the modes name {sorted(targets)}")
    return targets.pop() if targets else None


def _configure_logging(settings: Settings) -> None:
    """Gatekeeper's log lines (JSON by default) on standard output, as `gatekeeper
    run` writes them, leaving mitmproxy's own logging where it was: its handlers
    show its events, and the one that stops a start-up whose scripts failed."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    gk_logging.configure(settings.log_format, settings.log_level)
    root.handlers[:] = handlers
    root.setLevel(level)


def _options_error(message: str) -> Exception:
    """mitmproxy's way to refuse an option value (its exception is not annotated)."""
    error: Exception = exceptions.OptionsError(message)  # type: ignore[no-untyped-call, unused-ignore]
    return error



def _error_kind(message: str, responded: bool) -> str:
    text = message.lower()
    if "client" in text and ("disconnect" in text or "closed" in text):
        return "client_disconnect"
    if "timed out" in text or "timeout" in text:
        return "timeout"
    if not responded and ("connect" in text or "refused" in text):
        return "refused"
    return "reset"


def _counting(state: _Flow) -> Callable[[bytes], bytes]:
    def relay(chunk: bytes) -> bytes:
        state.sent += len(chunk)
        return chunk
    return relay


def _peer(flow: http.HTTPFlow) -> str:
    peer = flow.client_conn.peername
    return str(peer[0]) if peer else "0.0.0.0"


def _multidict(fields: Iterable[tuple[bytes, bytes]]) -> CIMultiDict[str]:
    """mitmproxy's raw header fields as the multidict the gate and `headers` read,
    decoded the way aiohttp decodes them (UTF-8, undecodable bytes kept)."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in fields:
        out.add(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
    return out


def _mitm_headers(pairs: Iterable[tuple[str, str]]) -> http.Headers:
    return http.Headers([(name.encode("utf-8", "surrogateescape"),
                          value.encode("utf-8", "surrogateescape")) for name, value in pairs])


def _answer(flow: http.HTTPFlow, answer: responses.Answer) -> None:
    """`answer` as the flow's response: the proxy's status, headers and body."""
    headers = list(answer.headers)
    if answer.close and flow.request.http_version.startswith("HTTP/1"):
        headers.append(("Connection", "close"))
    flow.response = _response(answer.status, headers, answer.body, flow.request.method)
    flow.request.stream = False  # mitmproxy answers only flows it does not stream


def _document_response(resp: web.Response, method: str) -> http.Response:
    body = resp.body if isinstance(resp.body, bytes) else b""
    return _response(resp.status, list(resp.headers.items()), body, method)


def _response(status: int, headers: list[tuple[str, str]], body: bytes,
              method: str) -> http.Response:
    # aiohttp adds a Date to what it answers; an answer to HEAD has the length of the
    # body it leaves out.
    fields = [*headers, ("Date", formatdate(usegmt=True))]
    resp = http.Response.make(status, b"" if method == "HEAD" else body, _mitm_headers(fields))
    resp.headers["Content-Length"] = str(len(body))
    return resp


addons = [GatekeeperAddon()]

if __name__ == "__main__":  # `mitmdump -s "$(python -m gatekeeper.edge.mitm)"`
    print(__file__)
