"""The reverse-proxy adapter: wire request -> facts -> gate -> answer or stream.

Per request: the head is checked first (target, Host, framing, expectations),
and a request that fails is answered 400 before anything reaches the upstream.
Facts are built from the canonical path and the trusted-proxy client address,
the gate decides, and the decision is executed. A forwarded request goes to
exactly the canonical path the gate decided on. Bodies stream both ways with
backpressure; nothing is buffered, decompressed or re-encoded. Each decided
request is observed exactly once (`Observer.observe`), each refused one once
(`Observer.bad_request`).

Failure modes: refused, reset or invalid before the upstream's response head
-> 502; connect or read timeout -> 504; a failure after the head was relayed
aborts the client connection, so the client sees a truncated response and never
a clean end. Any unexpected exception answers 500 and is logged; nothing is
forwarded by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import WSMsgType, http_exceptions, web
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDict
from yarl import URL

from gatekeeper.core.facts import RequestFacts
from gatekeeper.edge import responses
from gatekeeper.edge.client_ip import TrustedProxies, client_ip
from gatekeeper.edge.documents import Documents, Endpoints
from gatekeeper.edge.headers import (
    add_gate_headers,
    check_head_size,
    check_header_bytes,
    chunked_only,
    downstream_response_headers,
    is_websocket_upgrade,
    request_framing,
    upstream_request_headers,
    websocket_protocols,
    websocket_request_headers,
)
from gatekeeper.edge.in_flight import InFlightCap
from gatekeeper.edge.target import BadRequest, canonicalize, check_host
from gatekeeper.gate import Gate, Outcome
from gatekeeper.observe import logging as gk_logging
from gatekeeper.observe.record import Observation, Observer
from gatekeeper.settings import Settings

# The client must not add headers the visitor did not send (set on the session).
SKIP_AUTO_HEADERS: Final = ("User-Agent", "Accept-Encoding", "Accept", "Content-Type")
_CHUNK: Final = 64 * 1024
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_HTTP10: Final = aiohttp.HttpVersion10
_HTTP11: Final = aiohttp.HttpVersion11

_log = gk_logging.get_logger("gatekeeper.proxy")


class Upstream:
    """Where forwarded requests go: scheme, host, port and an optional base path,
    parsed once."""

    __slots__ = ("_authority_host", "base", "host", "port", "scheme", "ws_scheme")

    def __init__(self, url: str) -> None:
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"upstream {url!r} must be an http:// or https:// URL with a host")
        if parsed.raw_query_string or parsed.raw_fragment or parsed.raw_user:
            raise ValueError(f"upstream {url!r} must not have a query, fragment or user info")
        self.scheme = parsed.scheme
        self.ws_scheme = "wss" if parsed.scheme == "https" else "ws"
        self.host = parsed.host  # as a socket address: no brackets, IDNA decoded
        self.port = parsed.explicit_port
        # As it goes into a URL: IPv6 in brackets, IDNA encoded.
        self._authority_host = parsed.host_subcomponent or parsed.host
        self.base = parsed.raw_path.rstrip("/")

    def url(self, path: str, query: str, *, websocket: bool = False) -> URL:
        # Built from parts, never joined: joining the raw target onto a base URL
        # resolves dot segments and reads "//x" as a host name.
        return URL.build(
            scheme=self.ws_scheme if websocket else self.scheme, host=self._authority_host,
            port=self.port, path=self.base + path, query_string=query, encoded=True,
        )


@dataclass(slots=True)
class _Body:
    """How streaming the client's body went; a fault here is the client's, not the
    upstream's, whatever exception the HTTP client wraps it in."""

    received: int = 0
    # "body_too_large", "client_timeout", "client_disconnect", "malformed_body"
    fault: str | None = None


class _SlowClient(Exception):
    """The client read the response too slowly (send timeout or minimum rate)."""


class _BodyTooLarge(Exception):
    pass


class _ProtocolViolation(Exception):
    """The upstream answered something that cannot be relayed."""


# Client-side faults while streaming a request body: status and error code.
_BODY_FAULTS: Final = {
    "body_too_large": 413,
    "client_timeout": 408,
    "client_disconnect": 400,
    "malformed_body": 400,
}
_RETRY_SOON: Final = (("Retry-After", "1"),)
_UPSTREAM_STATUS: Final = {"refused": 502, "reset": 502, "protocol": 502, "timeout": 504}
# Control characters other than HTAB: never valid in a field value or a reason
# phrase (RFC 9110 §5.5, RFC 9112 §4), and refused by aiohttp's header writer.
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_TEXT: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class Proxy:
    """Executes the gate's decisions on aiohttp requests (`handle`)."""

    def __init__(
        self,
        gate: Gate,
        observer: Observer,
        settings: Settings,
        upstream: Upstream,
        trusted: TrustedProxies,
        session: aiohttp.ClientSession,
        documents: Documents | None = None,
        endpoints: Endpoints | None = None,
    ) -> None:
        self._gate = gate
        self._documents = documents
        self._endpoints = endpoints
        self._observer = observer
        self._upstream = upstream
        self._trusted = trusted
        self._session = session
        self._max_body = settings.max_body_size
        self._max_head = settings.max_header_block_size
        self._strip_tokens = not settings.forward_license_tokens
        # An origin that ignores case: decide on, and forward, the lower-cased path.
        self._fold_case = settings.path_case == "insensitive"
        self._body_timeout = settings.client_body_timeout
        self._body_min_rate = settings.client_body_min_rate
        self._send_timeout = settings.client_send_timeout
        self._per_client = InFlightCap(settings.max_in_flight_per_client, trusted.contains)
        self._handshake_timeout = settings.upstream_connect_timeout + settings.upstream_read_timeout
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            # Waiting for a pooled connection counts too: a saturated pool ends in a
            # 504, not an unbounded queue.
            connect=settings.upstream_connect_timeout + settings.upstream_read_timeout,
            sock_connect=settings.upstream_connect_timeout,
            sock_read=settings.upstream_read_timeout,
        )
        self._tunnels: set[asyncio.Future[None]] = set()
        self._draining = False
        self._shutdown_timeout = settings.shutdown_timeout
        self._in_flight: set[asyncio.Task[object]] = set()

    # -- entry point ---------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            return await self._handle(request)
        except Exception:  # fail closed: a bug answers 500, it never forwards
            _log.exception("proxy_internal_error", method=request.method)
            if request.writer.output_size:
                # Bytes of a response are on the wire already; a second one
                # would corrupt it.
                _abort(request)
                raise ConnectionResetError("response aborted") from None
            self._observer.bad_request("internal_error", _peer(request), request.method, 500)
            return self._error(500, "internal_error")
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def shutdown(self) -> None:
        """Draining: later answers close their connection, open WebSocket tunnels
        are closed with 1001 (going away), and requests still in flight after
        `shutdown_timeout` are cancelled."""
        self._draining = True
        for stop in list(self._tunnels):
            if not stop.done():
                stop.set_result(None)
        # aiohttp waits `shutdown_timeout` for handlers, then only asks them to
        # stop and waits that long again before cancelling: an exit after twice
        # the configured time, past a supervisor's grace period. Cut them here.
        asyncio.get_running_loop().call_later(self._shutdown_timeout, self._cut_in_flight)

    def _cut_in_flight(self) -> None:
        for task in list(self._in_flight):
            task.cancel()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        address = client_ip(_peer(request), request.headers, self._trusted)
        try:
            facts, declared, upgrade = self._facts(request, address.ip)
        except BadRequest as exc:
            self._observer.bad_request(exc.reason, address.ip, request.method, exc.status)
            return self._error(exc.status, exc.reason)
        if self._endpoints is not None:
            answered = await self._endpoints.answer(request, facts.path)
            if answered is not None:
                return answered
        documents = self._documents
        kind = documents.kind(request.method, facts.path) if documents is not None else None
        if documents is not None and kind is not None and not documents.origin_serves(kind):
            return await self._document(request, facts, kind, started)
        try:
            # A public document the origin serves is forwarded as it is: never gated.
            outcome = await (self._gate.read_declaration(facts) if kind is not None
                             else self._gate.decide(facts))
        except Exception:
            _log.exception("gate_failed", method=request.method, path=facts.path)
            self._observer.bad_request("internal_error", address.ip, request.method, 500)
            return self._error(500, "internal_error")
        decision = outcome.decision
        if not decision.forward:
            self._observer.observe(Observation(
                facts, outcome, decision.status, len(decision.body),
                time.perf_counter() - started,
            ))
            # An unread body would be drained (or waited for) before the next
            # request: closing is cheaper and cannot be misread.
            close = self._draining or not request.content.is_eof()
            return responses.to_response(responses.decision_answer(decision), close=close)
        client = facts.client_ip
        if not self._per_client.admit(client):
            self._observer.bad_request("too_many_in_flight", client, request.method, 429)
            return responses.to_response(
                responses.error_answer(429, "too_many_in_flight", _RETRY_SOON),
                close=self._draining or not request.content.is_eof())
        try:
            if upgrade:
                return await self._websocket(request, facts, outcome, address.chain, started,
                                             document=kind or "")
            return await self._forward(request, facts, outcome, address.chain, declared,
                                       started, document=kind or "")
        finally:
            self._per_client.release(client)

    async def _document(self, request: web.BaseRequest, facts: RequestFacts, kind: str,
                        started: float) -> web.StreamResponse:
        """A public document, served whatever the policy says about the client."""
        assert self._documents is not None
        outcome = await self._gate.read_declaration(facts)
        resp = await self._documents.answer(
            kind, request.method, facts.query, facts.host, request.scheme,
            request.headers.get("Accept", ""), authority=_authority(request, facts.host))
        size = resp.content_length or 0 if request.method != "HEAD" else 0
        self._observer.observe(Observation(facts, outcome, resp.status, size,
                                           time.perf_counter() - started, document=kind))
        if self._draining or not request.content.is_eof():
            resp.force_close()
        return resp

    def _facts(
        self, request: web.BaseRequest, ip: str
    ) -> tuple[RequestFacts, int | None, bool]:
        """The facts of a well-formed request, its declared body length and whether
        it asks for a WebSocket; BadRequest for anything an upstream could read
        differently."""
        headers = request.headers
        if request.version < _HTTP10:
            raise BadRequest("http09", "HTTP/0.9 is not supported")
        # "METHOD target HTTP/1.1" and its CRLF
        check_head_size(len(request.method) + len(request.raw_path) + 12, request.raw_headers,
                        self._max_head)
        declared = request_framing(request.version < _HTTP11, headers)
        check_header_bytes(headers)
        if declared is not None and declared > self._max_body:
            raise BadRequest("body_too_large", "request body is larger than allowed", 413)
        expect = headers.get("Expect")
        if expect is not None and expect.lower() != "100-continue":
            raise BadRequest("expectation_failed", "only 100-continue is supported", 417)
        target = canonicalize(request.method, request.raw_path, fold_case=self._fold_case)
        host = check_host(headers.get("Host"))
        upgrade = is_websocket_upgrade(headers)
        if upgrade and not web.WebSocketResponse().can_prepare(request).ok:
            raise BadRequest("bad_websocket_handshake", "malformed WebSocket handshake")
        facts = RequestFacts(
            method=request.method, host=host, path=target.path, query=target.query,
            headers=headers, client_ip=ip, now=time.time(),
            raw_path=request.raw_path.partition("?")[0], scheme=request.scheme,
        )
        return facts, declared, upgrade

    def _error(self, status: int, reason: str) -> web.Response:
        return responses.to_response(responses.error_answer(status, reason),
                                     close=self._draining)

    # -- HTTP ------------------------------------------------------------------------

    async def _forward(
        self,
        request: web.BaseRequest,
        facts: RequestFacts,
        outcome: Outcome,
        chain: tuple[str, ...],
        declared: int | None,
        started: float,
        *,
        document: str = "",
    ) -> web.StreamResponse:
        """Forward to the upstream and relay its answer; `document`: the public
        document this is (the origin's robots.txt, say), observed as one."""
        headers = upstream_request_headers(
            request.headers, client_ip=facts.client_ip, host=facts.host,
            proto=request.scheme, forwarded_for_chain=chain,
            strip_license_tokens=self._strip_tokens,
        )
        if outcome.license is not None and self._strip_tokens:
            # The gate read a licence token here (maybe as Bearer): it was for the gate.
            headers.popall("Authorization", None)
        body: _Body | None = None
        data: AsyncIterator[bytes] | None = None
        if request.body_exists:
            body = _Body()
            data = self._stream_body(request, body)
            if declared is not None:
                # Re-framed by the client with exactly the length the parser enforced.
                headers["Content-Length"] = str(declared)
        url = self._upstream.url(facts.path, facts.query)
        status, sent, error, upstream_duration = 499, 0, None, None
        try:
            sending = time.perf_counter()
            try:
                upstream = await self._send(request.method, url, headers, data)
                if upstream.status == 101:
                    upstream.close()
                    raise _ProtocolViolation("101 without an upgrade request")
                if any(_CONTROL.search(value) for _, value in upstream.raw_headers):
                    # An invalid field value (RFC 9110 §5.5): aiohttp's writer would
                    # refuse to relay it, and the client would get a 500, not a 502.
                    upstream.close()
                    raise _ProtocolViolation("control character in a response header")
                if "Transfer-Encoding" in upstream.headers \
                        and not chunked_only(upstream.headers):
                    # Only chunked is undone on the way in (RFC 9112 §6.1): any other
                    # transfer-coding would reach the client encoded, with nothing to
                    # say so, since the header itself is hop-by-hop.
                    upstream.close()
                    raise _ProtocolViolation("transfer-coding other than chunked")
            except Exception as exc:
                error = _failure(exc, body)
                status = _BODY_FAULTS.get(error) or _UPSTREAM_STATUS[error]
                return self._error(status, error)
            upstream_duration = time.perf_counter() - sending
            status = upstream.status
            try:
                stated: tuple[tuple[str, str], ...] = ()
                if self._documents is not None and request.method in ("GET", "HEAD"):
                    stated = await self._documents.declared_headers(
                        facts.host, facts.path, request.scheme,
                        _authority(request, facts.host))
                resp, sent, error = await self._relay(
                    request, upstream, outcome.decision.response_headers, stated)
            finally:
                upstream.release()
            return resp
        except asyncio.CancelledError:
            error = "client_disconnect"
            raise
        finally:
            self._observer.observe(Observation(
                facts, outcome, status, sent, time.perf_counter() - started,
                upstream_duration, error, document=document,
                gate_duration=sending - started,
            ))

    async def _send(
        self, method: str, url: URL, headers: CIMultiDict[str],
        data: AsyncIterator[bytes] | None,
    ) -> aiohttp.ClientResponse:
        # aiohttp itself sends an idempotent request once more when a pooled
        # connection turns out to be closed, and never once its body was read.
        return await self._session.request(
            method, url, headers=headers, data=data, allow_redirects=False,
            timeout=self._timeout,
        )

    async def _stream_body(self, request: web.BaseRequest, body: _Body) -> AsyncIterator[bytes]:
        """The client's body, chunk by chunk as it arrives: each read must come
        within the idle timeout, and the total must stay under the limit."""
        if request.version == _HTTP11 and "Expect" in request.headers:
            # Asked only now, when the upstream is connected and wants the body:
            # a denied or failed request never invites it.
            await request.writer.write(_CONTINUE)
            request.writer.output_size = 0  # an interim answer is not the response
        content, limit, idle = request.content, self._max_body, self._body_timeout
        min_rate, started = self._body_min_rate, time.monotonic()
        while True:
            try:
                async with asyncio.timeout(idle):
                    chunk = await content.readany()
            except TimeoutError:
                body.fault = "client_timeout"
                raise
            except http_exceptions.HttpProcessingError:
                # The body's framing broke (a bad chunk): see _GateProtocol.data_received.
                body.fault = "malformed_body"
                raise
            except Exception:
                body.fault = "client_disconnect"
                raise
            if not chunk:
                return
            body.received += len(chunk)
            if body.received > limit:
                body.fault = "body_too_large"
                raise _BodyTooLarge
            # A client trickling a few bytes just inside the idle timeout would hold
            # its connection (and an upstream one) for ever: after the idle
            # timeout's worth of grace, the body must average at least min_rate.
            elapsed = time.monotonic() - started
            if min_rate and elapsed > idle and body.received < min_rate * elapsed:
                body.fault = "client_timeout"
                raise TimeoutError
            yield chunk

    async def _relay(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse,
        added: tuple[tuple[str, str], ...] = (),
        declared: tuple[tuple[str, str], ...] = (),
    ) -> tuple[web.StreamResponse, int, str | None]:
        """Stream the upstream's response to the client, with the gate's `added`
        headers (a licence's `Link`, `crawler-charged`) and the policy's `declared`
        ones (Content-Usage, tdm-*, Link); (response, body bytes sent, error kind or
        None)."""
        headers = downstream_response_headers(upstream.headers)
        if added or declared:
            add_gate_headers(headers, added, declared)
        resp = RelayedResponse(
            status=upstream.status, reason=_safe_reason(upstream.reason), headers=headers,
        )
        if self._draining:
            resp.force_close()
        await resp.prepare(request)  # the head waits in the writer for the first bytes
        content, sent = upstream.content, 0
        try:
            # The part of the body that came with the head goes out in the same
            # write as the head; a small response is one write, EOF included. With
            # nothing there yet, the empty write sends the head alone at once.
            chunk = content.read_nowait(_CHUNK)
            while not content.at_eof():
                await self._deliver(request, resp, chunk)
                sent += len(chunk)
                chunk = await content.read(_CHUNK)
            await self._deliver(request, resp, chunk, last=True)
            sent += len(chunk)
        except BaseException as exc:
            # The head is gone already: the only honest signal left is to cut the
            # connection, so the client sees a truncated response, not a clean end.
            _abort(request)
            if not isinstance(exc, Exception):
                raise
            return resp, sent, _mid_body_failure(exc)
        return resp, sent, None

    async def _deliver(self, request: web.BaseRequest, resp: web.StreamResponse, chunk: bytes,
                       *, last: bool = False) -> None:
        """One write of the response. A client that keeps up pays nothing more; one
        whose socket still holds the last write must take this one within the send
        timeout (a slow reader holds an upstream connection for as long as it reads).
        A write waits until the buffer falls back under its low-water mark, so this
        also cuts a client reading a few bytes at a time: under about 1 KB/s at the
        default timeout."""
        transport = request.transport
        if transport is not None and transport.get_write_buffer_size():
            try:
                async with asyncio.timeout(self._send_timeout):
                    await (resp.write_eof(chunk) if last else resp.write(chunk))
            except TimeoutError:
                raise _SlowClient from None
        elif last:
            await resp.write_eof(chunk)
        else:
            await resp.write(chunk)

    # -- WebSocket --------------------------------------------------------------------

    async def _websocket(
        self,
        request: web.BaseRequest,
        facts: RequestFacts,
        outcome: Outcome,
        chain: tuple[str, ...],
        started: float,
        *,
        document: str = "",
    ) -> web.StreamResponse:
        status, error = 101, None
        connecting = time.perf_counter()
        try:
            try:
                upstream = await self._ws_connect(request, facts, chain)
            except aiohttp.WSServerHandshakeError as exc:
                refusal = self._refusal(exc)
                if refusal is None:
                    error, status = "protocol", 502
                    return self._error(status, error)
                status = refusal.status
                return refusal
            except Exception as exc:
                error = _failure(exc, None)
                status = _UPSTREAM_STATUS[error]
                return self._error(status, error)
            try:
                return await self._tunnel(request, upstream)
            finally:
                await upstream.close()
        except asyncio.CancelledError:
            error = "client_disconnect"
            raise
        finally:
            self._observer.observe(Observation(
                facts, outcome, status, 0, time.perf_counter() - started, None, error,
                document=document, gate_duration=connecting - started,
            ))

    def _refusal(self, exc: aiohttp.WSServerHandshakeError) -> web.StreamResponse | None:
        """The upstream's refusal of an upgrade (a 3xx, 4xx or 5xx: 401, 403, 426 with
        its Sec-WebSocket-Version, a redirect), relayed with its status and headers
        instead of a 502: it is the origin's answer, not a fault. The body is not
        relayed: aiohttp's WebSocket client closes the connection without reading it.
        The client's connection stays in HTTP mode, so whatever it sends next is
        decided like any request. None for anything else that is not a valid 101 (a
        2xx whose body cannot be relayed, a 101 without the right accept key)."""
        if exc.status < 300 or exc.headers is None:
            return None
        headers = downstream_response_headers(exc.headers)
        for name in ("Content-Length", "Content-Type", "Content-Encoding", "Content-Range"):
            headers.popall(name, None)  # they describe the body that is not relayed
        resp = RelayedResponse(status=exc.status, headers=headers)
        resp.content_length = 0
        if self._draining:
            resp.force_close()
        return resp

    async def _ws_connect(
        self, request: web.BaseRequest, facts: RequestFacts, chain: tuple[str, ...]
    ) -> aiohttp.ClientWebSocketResponse:
        headers = websocket_request_headers(
            request.headers, client_ip=facts.client_ip, host=facts.host,
            proto=request.scheme, forwarded_for_chain=chain,
        )
        # Only the opening handshake is time-boxed; an open tunnel may idle. The
        # client validates the upstream's 101 and Sec-WebSocket-Accept, so a
        # refused upgrade never becomes a raw tunnel.
        async with asyncio.timeout(self._handshake_timeout):
            return await self._session.ws_connect(
                self._upstream.url(facts.path, facts.query, websocket=True),
                headers=headers, protocols=websocket_protocols(request.headers),
                autoping=False, autoclose=False, max_msg_size=self._max_body,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            )

    async def _tunnel(
        self, request: web.BaseRequest, upstream: aiohttp.ClientWebSocketResponse
    ) -> web.WebSocketResponse:
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            autoping=False, autoclose=False, compress=False, max_msg_size=self._max_body,
            timeout=5.0,
        )
        await client.prepare(request)
        stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tunnels.add(stop)
        pumps = (
            asyncio.ensure_future(_pump(client, upstream)),
            asyncio.ensure_future(_pump(upstream, client)),
        )
        try:
            await asyncio.wait((stop, *pumps), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._tunnels.discard(stop)
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        # The side that did not close first gets the same code; on shutdown both
        # sides are told the gate is going away.
        code = aiohttp.WSCloseCode.GOING_AWAY if stop.done() else _relayed_code(pumps)
        if not upstream.closed:
            await upstream.close(code=code)
        if not client.closed:
            if stop.done():
                # Draining: aiohttp's server drops whatever arrives on its
                # connections once shutdown has begun, so the client's reply to
                # this close frame can never be read. Send the frame (written
                # before close() first waits) and hang up, rather than wait out
                # the close timeout and hold up the exit.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0):
                        await client.close(code=code)
            else:
                await client.close(code=code)
        return client


class RelayedResponse(web.StreamResponse):
    """A `StreamResponse` that sends the upstream's head as it came.

    aiohttp adds `Content-Type: application/octet-stream` to a response with a
    body but without a type, and its own `Server` header. Neither is the
    upstream's: a missing type lets the browser sniff, octet-stream makes it
    download, and the stack version is nobody's business.
    """

    # Held back to share a write with the first body bytes (see `Proxy._relay`).
    _send_headers_immediately = False

    async def _prepare_headers(self) -> None:
        headers = self.headers
        had_type = "Content-Type" in headers
        had_server = "Server" in headers
        await super()._prepare_headers()
        if not had_type:
            headers.popall("Content-Type", None)
        if not had_server:
            headers.popall("Server", None)

    async def _write_headers(self) -> None:
        await super()._write_headers()
        # Header bytes that are not UTF-8 (obs-text, RFC 9110 §5.5: a Latin-1
        # filename, say) reach us as lone surrogates (surrogateescape), and
        # aiohttp's head writer silently drops those: "caf\xe9" would reach the
        # client as "caf". Such a head is written again here with the bytes put
        # back as they came. It is still held back (see above), so nothing of
        # the first version has gone out.
        writer = self._payload_writer
        if all(value.isascii() for value in self._headers.values()) \
                or not isinstance(writer, StreamWriter) or writer._headers_buf is None:
            return
        status_line = writer._headers_buf.partition(b"\r\n")[0]
        fields = "".join(f"{name}: {value}\r\n" for name, value in self._headers.items())
        writer._headers_buf = (
            status_line + b"\r\n" + fields.encode("utf-8", "surrogateescape") + b"\r\n"
        )


async def _pump(
    src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> int:
    """Relay messages from `src` to `dst` until `src` closes; pass its close code
    on, and return it."""
    while True:
        msg = await src.receive()
        kind = msg.type
        if kind is WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif kind is WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif kind is WSMsgType.PING:
            await dst.ping(msg.data)
        elif kind is WSMsgType.PONG:
            await dst.pong(msg.data)
        elif kind is WSMsgType.CLOSE:
            code = msg.data or aiohttp.WSCloseCode.OK
            reason = msg.extra.encode() if isinstance(msg.extra, str) else b""
            await dst.close(code=code, message=reason)
            return int(code)
        else:  # CLOSING, CLOSED, ERROR: the connection is gone, there is no code
            return int(aiohttp.WSCloseCode.OK)


def _relayed_code(pumps: tuple[asyncio.Future[int], ...]) -> int:
    for pump in pumps:
        if pump.done() and not pump.cancelled() and pump.exception() is None:
            return pump.result()
    return int(aiohttp.WSCloseCode.OK)



def _safe_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    # A reason phrase is HTAB, SP, visible characters and obs-text (RFC 9112 §4).
    # aiohttp's writer refuses any other control character (the request would
    # end in a 500), and a header block must not be split by an upstream either
    # way: the standard phrase is used instead.
    if _CONTROL_TEXT.search(reason):
        return None
    return reason


def _failure(exc: BaseException, body: _Body | None) -> str:
    """The error kind of a request that failed before the upstream's response
    head: a client fault when the body stream broke, else the upstream's."""
    if body is not None and body.fault is not None:
        return body.fault
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "refused"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc, aiohttp.ClientSSLError):
            return "protocol"
        return "timeout" if isinstance(exc.os_error, TimeoutError) else "refused"
    if isinstance(exc, TimeoutError):  # includes aiohttp's ServerTimeoutError
        return "timeout"
    if isinstance(exc, aiohttp.ClientResponseError | _ProtocolViolation):
        return "protocol"
    return "reset"


def _mid_body_failure(exc: Exception) -> str:
    if isinstance(exc, ConnectionResetError):  # writing to the client failed
        return "client_disconnect"
    if isinstance(exc, _SlowClient):
        return "client_timeout"
    return "timeout" if isinstance(exc, TimeoutError) else "reset"


def _authority(request: web.BaseRequest, host: str) -> str:
    """Host and port as the client addressed us, for absolute URLs in documents."""
    raw = request.headers.get("Host", "")
    _, colon, port = raw.rpartition(":")
    if colon and port.isdigit() and not raw.endswith("]"):
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"[{host}]" if ":" in host else host


def _peer(request: web.BaseRequest) -> str:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if peer else "0.0.0.0"


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()
