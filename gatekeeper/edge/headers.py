"""Header hygiene, in one place for every adapter.

Towards the upstream: hop-by-hop headers and every header named in
`Connection` are dropped, so are client-supplied copies of identity headers
(`X-Forwarded-*`, `Forwarded`, `X-Real-IP`, ... and Gatekeeper's own
`X-Gatekeeper-*`, in any `-`/`_`/`.` spelling, since some origins treat those
alike). Gatekeeper's forwarded headers are added after that pass, so a
`Connection` header can never remove them. Framing headers are dropped too:
the client re-frames the streamed body itself.

Towards the client: hop-by-hop and `Connection`-nominated headers are dropped;
order and duplicates (several `Set-Cookie`) are kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "proxy-authenticate", "proxy-authorization",
    }
)
# Identity headers a client must never set for the upstream (normalised spelling).
_IDENTITY = frozenset(
    {
        "forwarded", "x-real-ip", "true-client-ip", "cf-connecting-ip", "x-client-ip",
        "x-cluster-client-ip", "fastly-client-ip", "x-original-forwarded-for",
    }
)
_IDENTITY_PREFIXES = ("x-forwarded-", "x-gatekeeper-")
# Handled by the server and client themselves; forwarding them would double-frame.
_FRAMING = frozenset({"content-length", "expect", "host"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SECRET_WORDS = ("authorization", "cookie", "token", "secret", "key", "session")

_drop_cache: dict[str, bool] = {}


def _norm(name: str) -> str:
    n = name.lower()
    if "_" in n or "." in n:
        n = n.replace("_", "-").replace(".", "-")
    return n


def _dropped(name: str, nominated: frozenset[str]) -> bool:
    """Whether a client request header must not reach the upstream (cached per name)."""
    hit = _drop_cache.get(name) if not nominated else None
    if hit is None:
        n = _norm(name)
        hit = (
            n in HOP_BY_HOP or n in _FRAMING or n in _IDENTITY
            or n.startswith(_IDENTITY_PREFIXES) or n in nominated
        )
        if not nominated and len(_drop_cache) < 4096:
            _drop_cache[name] = hit
    return hit


def is_identity_header(name: str) -> bool:
    n = _norm(name)
    return n in _IDENTITY or n.startswith(_IDENTITY_PREFIXES)


def connection_tokens(headers: Mapping[str, str]) -> frozenset[str]:
    getall = getattr(headers, "getall", None)
    values = getall("Connection", []) if getall else [headers.get("Connection", "")]
    return frozenset(
        _norm(tok.strip()) for v in values for tok in v.split(",") if tok.strip()
    )


def upstream_request_headers(
    incoming: CIMultiDictProxy[str] | CIMultiDict[str],
    *,
    client_ip: str,
    host: str,
    proto: str,
    forwarded_for_chain: Sequence[str] = (),
    extra: Iterable[tuple[str, str]] = (),
) -> CIMultiDict[str]:
    nominated = connection_tokens(incoming) if "Connection" in incoming else frozenset()
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if not _dropped(name, nominated):
            out.add(name, value)
    original_host = incoming.get("Host")
    if original_host is not None:
        # The client's Host is kept so name-based virtual hosts upstream still work.
        out["Host"] = original_host
    xff = ", ".join([*forwarded_for_chain, client_ip])
    out["X-Forwarded-For"] = xff
    out["X-Forwarded-Proto"] = proto
    out["X-Forwarded-Host"] = host
    out["X-Real-IP"] = client_ip
    out["Forwarded"] = f"for={_forwarded_node(client_ip)};proto={proto};host={_quote(host)}"
    for name, value in extra:
        out.add(name, value)
    return out


def _forwarded_node(ip: str) -> str:
    return f'"[{ip}]"' if ":" in ip else ip


def _quote(value: str) -> str:
    # Host names are RFC 7230 tokens already; anything else gets quoted.
    if value and _TOKEN.fullmatch(value):
        return value
    return '"' + value.replace('"', "").replace("\\", "") + '"'


def body_framing(incoming: Mapping[str, str]) -> int | None:
    """The declared Content-Length, or None for chunked or absent bodies."""
    value = incoming.get("Content-Length")
    if value is None or "Transfer-Encoding" in incoming:
        return None
    return int(value) if value.isdigit() else None


def downstream_response_headers(
    upstream: CIMultiDictProxy[str] | CIMultiDict[str],
) -> CIMultiDict[str]:
    nominated = connection_tokens(upstream) if "Connection" in upstream else frozenset()
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        n = _norm(name)
        if n in HOP_BY_HOP or n in nominated:
            continue
        if "\r" in value or "\n" in value or "\x00" in value:
            continue  # never let an upstream split the response we send
        out.add(name, value)
    return out


def is_websocket_upgrade(headers: Mapping[str, str]) -> bool:
    upgrade = headers.get("Upgrade")
    return (
        upgrade is not None
        and upgrade.strip().lower() == "websocket"
        and "upgrade" in connection_tokens(headers)
    )


def redact(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers safe to log: secrets replaced, everything else as sent."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        secret = any(word in lowered for word in _SECRET_WORDS)
        out[name] = "[redacted]" if secret else value
    return out
