"""Header hygiene for every adapter, in one place.

Towards the upstream (`upstream_request_headers`), one pass over the client's
headers keeps their order and duplicates and drops:
- the hop-by-hop set and every header named in `Connection` (RFC 9110 §7.6.1);
- identity headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`, ... and
  Gatekeeper's own `X-Gatekeeper-*`) and URL-override headers
  (`X-Original-URL`, `X-Rewrite-URL`, `X-Original-URI`). Names are compared after lower-casing
  and mapping `_` and `.` to `-`, because CGI, WSGI, PHP and some nginx set-ups
  fold `X_Forwarded_For` and `x.real.ip` into the trusted name;
- `Content-Length`, `Transfer-Encoding` and `Expect`: the aiohttp server has
  answered `100-continue` already, and the client re-frames the streamed body
  (see `body_framing`).
`Host` is kept, so that name-based virtual hosting upstream still works.
Gatekeeper's own headers are added only after that pass, so a `Connection`
header can never remove them (Traefik CVE-2024-45410).

Towards the client (`downstream_response_headers`), hop-by-hop and
`Connection`-nominated headers are dropped, and so is any value with CR, LF
or NUL. Order and duplicates, such as several `Set-Cookie`, are kept.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence

from multidict import CIMultiDict, MultiMapping

from gatekeeper.edge.client_ip import canonical_ip
from gatekeeper.edge.target import BadRequest

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authenticate", "proxy-authorization",
})
# Headers that claim who the client is or how it reached us. Only Gatekeeper sets
# them. The "x-forwarded-" and "x-gatekeeper-" prefixes are covered as a whole.
IDENTITY_HEADERS = frozenset({
    "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port",
    "x-forwarded-prefix", "forwarded", "x-real-ip", "true-client-ip", "cf-connecting-ip",
    "x-client-ip", "x-cluster-client-ip", "fastly-client-ip", "x-original-forwarded-for",
})
IDENTITY_PREFIXES = ("x-forwarded-", "x-gatekeeper-")
# IIS, Symfony and Laminas route on these instead of the request line, and nginx's
# auth_request set-ups (X-Original-URI) and Traefik (X-Forwarded-Uri, under the
# x-forwarded- prefix) carry the original target in them. Passing them would let an
# upstream that reads them serve a path other than the one the gate decided on
# (Anubis GHSA-6wcg-mqvh-fcvg). The proxy never reads them either.
URL_OVERRIDE_HEADERS = frozenset({"x-original-url", "x-rewrite-url", "x-original-uri"})
# Re-framed or answered by Gatekeeper itself.
_FRAMING = frozenset({"content-length", "expect"})
# `Connection` may name these, but it has no effect on them. Dropping Host would
# make the client send the upstream's own name instead. "close" names no header.
_NOT_NOMINATABLE = frozenset({"host", "close"})
_BAD_VALUE = re.compile(r"[\r\n\x00]")
# How aiohttp's parser hands over header bytes that are not UTF-8 (surrogateescape).
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SECRET_WORDS = ("authorization", "cookie", "token", "secret", "key", "session", "password")
REDACTED = "[redacted]"


def normalise_name(name: str) -> str:
    """Lower case with `_` and `.` read as `-`: how lenient origins compare names."""
    name = name.lower()
    if "_" in name or "." in name:
        name = name.replace("_", "-").replace(".", "-")
    return name


# Header names repeat from request to request, so their normal forms are cached.
_normalised = functools.lru_cache(maxsize=4096)(normalise_name)


def is_identity_header(name: str) -> bool:
    """Whether only Gatekeeper may set `name` on an upstream request."""
    norm = normalise_name(name)
    return norm in IDENTITY_HEADERS or norm.startswith(IDENTITY_PREFIXES)


@functools.lru_cache(maxsize=4096)
def _never_forwarded(name: str) -> bool:
    norm = normalise_name(name)
    return (
        norm in HOP_BY_HOP
        or norm in _FRAMING
        or norm in URL_OVERRIDE_HEADERS
        or norm in IDENTITY_HEADERS
        or norm.startswith(IDENTITY_PREFIXES)
    )


_NO_TOKENS: frozenset[str] = frozenset()


def connection_tokens(headers: MultiMapping[str]) -> frozenset[str]:
    """The names in all `Connection` lines, normalised like `normalise_name`."""
    if "Connection" not in headers:
        return _NO_TOKENS
    return frozenset(
        normalise_name(token.strip())
        for line in headers.getall("Connection", ())
        for token in line.split(",")
        if token.strip()
    )


def upstream_request_headers(
    incoming: MultiMapping[str],
    *,
    client_ip: str,
    host: str,
    proto: str,
    forwarded_for_chain: Sequence[str] = (),
    extra: Iterable[tuple[str, str]] = (),
    strip_license_tokens: bool = True,
) -> CIMultiDict[str]:
    """The headers to send upstream; see the module docstring.

    `Authorization: License <token>` (RSL's scheme) is a credential for the gate,
    not for the origin: it is dropped unless `strip_license_tokens` is False. Other
    schemes (Basic, Bearer) are the origin's business and pass.

    Added, in this order, after the client's own:
    - `X-Forwarded-For: <chain>, <client_ip>`, where `forwarded_for_chain` is
      `ClientAddress.chain`. The client is always the last entry, and the only
      one when no proxy is trusted. An origin that trusts only Gatekeeper and
      takes the rightmost address (nginx realip) gets the same client the gate
      decided on. Entries left of the client are never passed on, because
      nobody vouches for them.
    - `X-Forwarded-Proto: <proto>`, `X-Forwarded-Host: <host>`, `X-Real-IP: <client_ip>`.
    - `Forwarded: for=<client_ip>;proto=<proto>;host=<host>`, quoted per
      RFC 7239 (`for="[2001:db8::1]"`).
    - `extra`, usually the gate's `X-Gatekeeper-*`. A value with CR, LF or NUL is dropped.
    """
    # Tokens that name a header dropped anyway ("keep-alive" nearly always) are
    # left out, so the usual request skips the per-header comparison below.
    nominated = {
        token for token in connection_tokens(incoming) - _NOT_NOMINATABLE
        if not _never_forwarded(token)
    }
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if _never_forwarded(name) or (nominated and _normalised(name) in nominated):
            continue
        if strip_license_tokens and _is_license_credential(name, value):
            continue
        out.add(name, value)
    out.add("X-Forwarded-For", ", ".join([*forwarded_for_chain, client_ip]))
    out.add("X-Forwarded-Proto", proto)
    out.add("X-Forwarded-Host", host)
    out.add("X-Real-IP", client_ip)
    out.add("Forwarded", forwarded_element(client_ip, proto=proto, host=host))
    for name, value in extra:
        if not _BAD_VALUE.search(value):
            out.add(name, value)
    return out


def _is_license_credential(name: str, value: str) -> bool:
    return len(name) == 13 and name.lower() == "authorization" and \
        value.lstrip()[:8].lower() == "license "


def websocket_request_headers(
    incoming: MultiMapping[str],
    *,
    client_ip: str,
    host: str,
    proto: str,
    forwarded_for_chain: Sequence[str] = (),
    extra: Iterable[tuple[str, str]] = (),
) -> CIMultiDict[str]:
    """`upstream_request_headers` without the `Sec-WebSocket-*` handshake
    headers. The WebSocket client makes its own key, version and extensions.
    Sub-protocols go to it as an argument (see `websocket_protocols`)."""
    out = upstream_request_headers(
        incoming, client_ip=client_ip, host=host, proto=proto,
        forwarded_for_chain=forwarded_for_chain, extra=extra,
    )
    for name in {n for n in out if n.lower().startswith("sec-websocket-")}:
        del out[name]
    return out


def websocket_protocols(incoming: MultiMapping[str]) -> tuple[str, ...]:
    """The sub-protocols the client offered, in order."""
    return tuple(
        token.strip()
        for line in incoming.getall("Sec-WebSocket-Protocol", ())
        for token in line.split(",")
        if token.strip()
    )


def forwarded_element(client_ip: str, *, proto: str, host: str) -> str:
    """One RFC 7239 element. A client that is not an IP address is `unknown`."""
    return f"for={_node(client_ip)};proto={_quote(proto)};host={_quote(host)}"


def _node(ip: str) -> str:
    canonical = canonical_ip(ip)
    if canonical is None:
        return "unknown"
    return f'"[{canonical}]"' if ":" in canonical else canonical


def _quote(value: str) -> str:
    if _TOKEN.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def body_framing(incoming: MultiMapping[str]) -> int | None:
    """The declared `Content-Length`, or None when the body is chunked or absent.

    BadRequest("ambiguous_framing") when the length cannot be trusted: several
    `Content-Length` lines, anything but ASCII digits, or `Content-Length` together
    with `Transfer-Encoding`. Guessing here would let a body be read as the next
    request."""
    lengths = incoming.getall("Content-Length", ())
    if not lengths:
        return None
    value = lengths[0].strip()
    if len(lengths) > 1 or not (value.isascii() and value.isdigit()):
        raise BadRequest("ambiguous_framing", "several or malformed Content-Length headers")
    if "Transfer-Encoding" in incoming:
        raise BadRequest("ambiguous_framing", "both Content-Length and Transfer-Encoding")
    return int(value)


def check_header_bytes(incoming: MultiMapping[str]) -> None:
    """BadRequest("non_utf8_header") when a header value holds bytes that are not
    UTF-8 (obs-text such as Latin-1). aiohttp's client cannot send those bytes on:
    its header writer silently drops them, so the upstream would see another value
    than the one the gate decided on (`GPT\\xffBot` arrives as `GPTBot`)."""
    for value in incoming.values():
        if not value.isascii() and _ESCAPED_BYTE.search(value):
            raise BadRequest("non_utf8_header", "a header value is not UTF-8 text")


def check_head_size(request_line: int, raw_headers: Iterable[tuple[bytes, bytes]],
                    limit: int) -> None:
    """BadRequest("header_block_too_large", 431) when the request line (`request_line`
    bytes) and the header fields, counted as sent (`name: value` and CRLF), exceed
    `limit` bytes. aiohttp's parser bounds each line and the number of fields, not
    their sum: 100 fields of 8 KiB each would reach an upstream that refuses far less
    (nginx's default is 32 KiB, Envoy's 60 KiB)."""
    size = request_line
    for name, value in raw_headers:
        if size > limit:
            break
        size += len(name) + len(value) + 4
    if size > limit:
        raise BadRequest("header_block_too_large",
                         "the request's header fields are too large together", 431)


def request_framing(http10: bool, incoming: MultiMapping[str]) -> int | None:
    """`body_framing`, after refusing the Transfer-Encodings a lenient parser accepts
    but an upstream could read differently: any on HTTP/1.0, anything but one
    `chunked`. The declared `Content-Length`, or None."""
    if "Transfer-Encoding" in incoming:
        if http10:
            raise BadRequest("ambiguous_framing", "Transfer-Encoding on HTTP/1.0")
        if not chunked_only(incoming):
            raise BadRequest("ambiguous_framing", "Transfer-Encoding other than 'chunked'")
    return body_framing(incoming)


def chunked_only(headers: MultiMapping[str]) -> bool:
    """True when `Transfer-Encoding` is one field saying `chunked` and nothing else:
    the only transfer-coding Gatekeeper undoes, on requests and responses alike."""
    values = headers.getall("Transfer-Encoding", ())
    return len(values) == 1 and values[0].strip().lower() == "chunked"


def downstream_response_headers(upstream: MultiMapping[str]) -> CIMultiDict[str]:
    """The upstream's response headers as the client should get them; see the module docstring."""
    nominated = connection_tokens(upstream)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        norm = _normalised(name)
        if norm in HOP_BY_HOP or norm in nominated:
            continue
        # Never let an upstream split the response we send. Three substring
        # tests cost a third of a regex search, on every response header.
        if "\r" in value or "\n" in value or "\x00" in value:
            continue
        out.add(name, value)
    return out


def gate_headers(added: Sequence[tuple[str, str]], declared: Sequence[tuple[str, str]],
                 ) -> tuple[tuple[str, str], ...]:
    """The headers the gate puts on a forwarded response: `added` (a licence's `Link`
    and `crawler-charged`), then the policy's `declared` ones (Content-Usage, tdm-*,
    `Link`). The gate's `Link` and the declared one name the same RSL document
    (relative and absolute): the licence is linked once, by the declared one."""
    if any(name == "Link" for name, _ in declared):
        added = [header for header in added if header[0] != "Link"]
    return (*added, *declared)


def add_gate_headers(headers: CIMultiDict[str], added: Sequence[tuple[str, str]],
                     declared: Sequence[tuple[str, str]]) -> None:
    """`gate_headers` onto an upstream response's `headers`: their values replace the
    upstream's, except `Link`, where the upstream's own links (preload, canonical)
    stay beside the gate's."""
    for name, value in gate_headers(added, declared):
        if name != "Link":
            headers[name] = value
        elif value not in headers.getall("Link", ()):
            headers.add(name, value)


def is_websocket_upgrade(headers: MultiMapping[str]) -> bool:
    """`Upgrade: websocket` together with the `upgrade` token in `Connection`."""
    upgrade = headers.get("Upgrade")
    return (
        upgrade is not None
        and upgrade.strip().lower() == "websocket"
        and "upgrade" in connection_tokens(headers)
    )


def redact(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers safe to log. A repeated header is joined with ", " under its first
    spelling. Credentials become "[redacted]": Authorization, Cookie, Set-Cookie,
    and any name containing token, secret, key, session or password."""
    out: dict[str, str] = {}
    spelling: dict[str, str] = {}  # lower-case name -> the key used in `out`
    for name, value in headers.items():
        lowered = name.lower()
        key = spelling.setdefault(lowered, name)
        if any(word in lowered for word in _SECRET_WORDS):
            out[key] = REDACTED
        else:
            out[key] = f"{out[key]}, {value}" if key in out else value
    return out
