"""The reverse-proxy adapter: wire request -> facts -> gate -> stream or answer.

Per request: the target and framing are checked (400 before anything reaches
the upstream), facts are built from the canonical path and the trusted-proxy
client address, the gate decides, and the decision is executed. Forwarded
bodies stream both ways; nothing is buffered, decompressed or re-encoded.
Exactly one observation is recorded per decided request.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from gatekeeper.core.facts import RequestFacts
from gatekeeper.edge import responses
from gatekeeper.edge.client_ip import TrustedProxies, client_ip
from gatekeeper.edge.headers import (
    body_framing,
    downstream_response_headers,
    is_websocket_upgrade,
    upstream_request_headers,
)
from gatekeeper.edge.target import BadRequest, canonicalize, check_host
from gatekeeper.edge.websocket import pump_websocket
from gatekeeper.gate import Gate, Outcome
from gatekeeper.observe.record import Observation, Observer
from gatekeeper.settings import Settings

# The client must not add headers the client did not send.
SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept-Encoding", "Accept", "Content-Type"})
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_CHUNK = 64 * 1024


@dataclass(slots=True)
class _BodyState:
    sent: int = 0
    too_large: bool = False
    timed_out: bool = False


class Upstream:
    """Where forwarded requests go: scheme, host, port and an optional base path."""

    def __init__(self, url: str) -> None:
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"upstream {url!r} must be an http:// or https:// URL with a host")
        self.scheme = parsed.scheme
        self.host = parsed.host
        self.port = parsed.port
        self.base = parsed.raw_path.rstrip("/")

    def url(self, path: str, query: str, websocket: bool = False) -> URL:
        # Built, never joined: joining with the raw target would resolve dot segments
        # and read "//x" as a host name.
        scheme = ("wss" if self.scheme == "https" else "ws") if websocket else self.scheme
        return URL.build(
            scheme=scheme, host=self.host, port=self.port, path=self.base + path,
            query_string=query, encoded=True,
        )


class Proxy:
    def __init__(
        self,
        gate: Gate,
        observer: Observer,
        settings: Settings,
        upstream: Upstream,
        trusted: TrustedProxies,
        session: aiohttp.ClientSession,
    ) -> None:
        self._gate = gate
        self._observer = observer
        self._upstream = upstream
        self._trusted = trusted
        self._session = session
        self._max_body = settings.max_body_size
        self._body_timeout = settings.client_body_timeout
        self._connect_timeout = settings.upstream_connect_timeout
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None,
            sock_connect=settings.upstream_connect_timeout,
            sock_read=settings.upstream_read_timeout,
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        peer_ip = peer[0] if peer else "0.0.0.0"
        address = client_ip(peer_ip, request.headers, self._trusted)
        try:
            facts = self._facts(request, address.ip)
        except BadRequest as exc:
            self._observer.bad_request(exc.reason, address.ip, request.method, exc.status)
            return responses.error(exc.status, exc.reason, str(exc))
        outcome = await self._gate.decide(facts)
        decision = outcome.decision
        if not decision.forward:
            resp = responses.decision_response(decision)
            self._observer.observe(Observation(
                facts, outcome, decision.status, len(decision.body),
                time.perf_counter() - started,
            ))
            return resp
        if is_websocket_upgrade(request.headers):
            return await self._websocket(request, facts, outcome, address.chain, started)
        return await self._forward(request, facts, outcome, address.chain, started)

    def _facts(self, request: web.Request, ip: str) -> RequestFacts:
        if request.version < aiohttp.HttpVersion10:
            raise BadRequest("http09", "HTTP/0.9 is not supported")
        _check_framing(request)
        target = canonicalize(request.method, request.raw_path)
        host = check_host(request.headers.get("Host"))
        declared = body_framing(request.headers)
        if declared is not None and declared > self._max_body:
            raise BadRequest("body_too_large", "request body is larger than allowed", 413)
        return RequestFacts(
            method=request.method, host=host, path=target.path, query=target.query,
            headers=request.headers, client_ip=ip, now=time.time(),
        )

    async def _forward(
        self,
        request: web.Request,
        facts: RequestFacts,
        outcome: Outcome,
        chain: tuple[str, ...],
        started: float,
    ) -> web.StreamResponse:
        headers = upstream_request_headers(
            request.headers, client_ip=facts.client_ip, host=facts.host,
            proto=request.scheme, forwarded_for_chain=chain,
        )
        declared = body_framing(request.headers)
        body_state = _BodyState()
        data = None
        if request.body_exists or (request.method not in _NO_BODY_METHODS and declared):
            data = self._request_body(request, body_state)
            if declared is not None:
                headers["Content-Length"] = str(declared)
        url = self._upstream.url(facts.path, facts.query)
        up_started = time.perf_counter()
        upstream_duration: float | None = None
        status, sent, error = 502, 0, None
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=data, allow_redirects=False,
                timeout=self._timeout, skip_auto_headers=SKIP_AUTO_HEADERS,
                auto_decompress=False,
            ) as upstream:
                upstream_duration = time.perf_counter() - up_started
                status = upstream.status
                resp, sent, error = await self._stream_back(request, upstream)
                return resp
        except Exception as exc:  # every failure becomes an answer; none passes silently
            status, error = _upstream_failure(exc, body_state)
            if error == "body_too_large":
                return responses.error(413, "body_too_large", "request body is larger than "
                                       "allowed")
            if error == "client_timeout":
                return responses.error(408, "client_body_timeout", "request body stalled")
            return responses.error(status, error, _FAILURE_MESSAGES.get(error, "upstream error"))
        finally:
            self._observer.observe(Observation(
                facts, outcome, status, sent, time.perf_counter() - started,
                upstream_duration, error,
            ))

    async def _request_body(self, request: web.Request, state: _BodyState):  # type: ignore[no-untyped-def]
        content = request.content
        limit, idle = self._max_body, self._body_timeout
        while True:
            try:
                async with asyncio.timeout(idle):
                    chunk = await content.readany()
            except TimeoutError:
                state.timed_out = True
                raise
            if not chunk:
                return
            state.sent += len(chunk)
            if state.sent > limit:
                state.too_large = True
                raise _BodyTooLarge
            yield chunk

    async def _stream_back(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> tuple[web.StreamResponse, int, str | None]:
        reason = upstream.reason
        if reason is not None and ("\r" in reason or "\n" in reason or "\x00" in reason):
            reason = None
        resp = web.StreamResponse(
            status=upstream.status, reason=reason,
            headers=downstream_response_headers(upstream.headers),
        )
        await resp.prepare(request)
        sent = 0
        try:
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                await resp.write(chunk)
                sent += len(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Headers are gone already: the only honest signal left is to cut the
            # connection so the client sees a truncated response, not a clean end.
            if request.transport is not None:
                request.transport.abort()
            return resp, sent, "timeout" if isinstance(exc, TimeoutError) else "reset"
        await resp.write_eof()
        return resp, sent, None

    async def _websocket(
        self,
        request: web.Request,
        facts: RequestFacts,
        outcome: Outcome,
        chain: tuple[str, ...],
        started: float,
    ) -> web.StreamResponse:
        headers = upstream_request_headers(
            request.headers, client_ip=facts.client_ip, host=facts.host,
            proto=request.scheme, forwarded_for_chain=chain,
        )
        for name in [h for h in headers if h.lower().startswith("sec-websocket-")]:
            del headers[name]
        protocols = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        url = self._upstream.url(facts.path, facts.query, websocket=True)
        status, error = 101, None
        try:
            resp = await pump_websocket(
                request, self._session, url, headers, protocols, self._connect_timeout
            )
            return resp
        except Exception as exc:
            status, error = _upstream_failure(exc, _BodyState())
            return responses.error(status, error, _FAILURE_MESSAGES.get(error, "upstream error"))
        finally:
            self._observer.observe(Observation(
                facts, outcome, status, 0, time.perf_counter() - started, None, error,
            ))


class _BodyTooLarge(Exception):
    pass


def _check_framing(request: web.Request) -> None:
    """Refuse framings the C parser tolerates but an upstream could read differently."""
    headers = request.headers
    te = headers.getall("Transfer-Encoding", [])
    if te:
        if request.version < aiohttp.HttpVersion11:
            raise BadRequest("ambiguous_framing", "Transfer-Encoding on HTTP/1.0")
        if len(te) != 1 or te[0].strip().lower() != "chunked":
            raise BadRequest("ambiguous_framing", "Transfer-Encoding other than 'chunked'")
        if "Content-Length" in headers:
            raise BadRequest("ambiguous_framing", "both Content-Length and Transfer-Encoding")
    lengths = headers.getall("Content-Length", [])
    if len(lengths) > 1 or (lengths and not lengths[0].strip().isdigit()):
        raise BadRequest("ambiguous_framing", "several or malformed Content-Length headers")


_FAILURE_MESSAGES = {
    "refused": "the upstream refused the connection",
    "reset": "the upstream closed the connection",
    "timeout": "the upstream did not answer in time",
    "protocol": "the upstream sent an invalid response",
}


def _upstream_failure(exc: BaseException, body: _BodyState) -> tuple[int, str]:
    if body.too_large or isinstance(exc, _BodyTooLarge):
        return 413, "body_too_large"
    if body.timed_out:
        return 408, "client_timeout"
    if isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(
        exc, aiohttp.ClientConnectorDNSError
    ):
        if isinstance(exc.os_error, TimeoutError):
            return 504, "timeout"
        return 502, "refused"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return 502, "refused"
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return 504, "timeout"
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return 502, "protocol"
    return 502, "reset"

