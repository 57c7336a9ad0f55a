"""Who the client is: the socket peer, or what trusted proxies say it was.

Forwarded headers are believed only from configured trusted proxies, and only
as far as the chain of trusted hops goes: walking `X-Forwarded-For` (or, when
absent, RFC 7239 `Forwarded`) from the right, each trusted address is skipped
and the first untrusted one is the client. An entry that is not an IP address
stops the walk at the last trusted hop, because nothing left of it can be
believed. With no trusted proxies (the default) the client is the peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ClientAddress:
    ip: str
    # The trusted hops between the client and Gatekeeper, leftmost first, excluding
    # the peer itself: what Gatekeeper keeps in the X-Forwarded-For it sends on.
    chain: tuple[str, ...] = ()


class TrustedProxies:
    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self._v4 = tuple(n for n in networks if n.version == 4)
        self._v6 = tuple(n for n in networks if n.version == 6)
        self._cache: dict[str, bool] = {}

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str]) -> TrustedProxies:
        nets: list[IPNetwork] = []
        for cidr in cidrs:
            try:
                nets.append(ipaddress.ip_network(cidr.strip(), strict=False))
            except ValueError as exc:
                raise ValueError(f"trusted proxy {cidr!r} is not an IP address or network") from exc
        return cls(nets)

    def __bool__(self) -> bool:
        return bool(self._v4 or self._v6)

    def contains(self, ip: str) -> bool:
        hit = self._cache.get(ip)
        if hit is None:
            hit = self._lookup(ip)
            if len(self._cache) >= 4096:
                self._cache.clear()  # bounded: a flood of addresses must not grow memory
            self._cache[ip] = hit
        return hit

    def _lookup(self, ip: str) -> bool:
        addr = parse_ip(ip)
        if addr is None:
            return False
        nets: tuple[IPNetwork, ...] = self._v4 if addr.version == 4 else self._v6
        return any(addr in n for n in nets)


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address with IPv4-mapped IPv6 unwrapped and any zone id dropped; None if invalid."""
    try:
        addr = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def normalise(ip: str) -> str:
    addr = parse_ip(ip)
    return str(addr) if addr is not None else ip


def client_ip(peer: str, headers: Mapping[str, str], trusted: TrustedProxies) -> ClientAddress:
    # A socket's IPv4 peer is already canonical; only IPv6 forms need parsing.
    peer_ip = peer if ":" not in peer else normalise(peer)
    if not trusted or not trusted.contains(peer_ip):
        return ClientAddress(peer_ip)
    hops = _forwarded_for(headers)
    if not hops:
        return ClientAddress(peer_ip)
    last = peer_ip
    for i in range(len(hops) - 1, -1, -1):
        addr = parse_ip(hops[i]) if hops[i] else None
        if addr is None:
            # Garbage in the chain: stop at the last hop we could believe.
            return ClientAddress(last, tuple(normalise(h) for h in hops[i + 1 : -1] or ()))
        ip = str(addr)
        if not trusted.contains(ip):
            return ClientAddress(ip, tuple(str(parse_ip(h)) for h in hops[i + 1 :]))
        last = ip
    # Every hop is trusted: the leftmost is as far back as anyone can see.
    return ClientAddress(last, tuple(str(parse_ip(h)) for h in hops[1:]))


def _forwarded_for(headers: Mapping[str, str]) -> list[str]:
    getall = getattr(headers, "getall", None)
    xff = getall("X-Forwarded-For", []) if getall else _single(headers, "X-Forwarded-For")
    if xff:
        return [part.strip() for line in xff for part in line.split(",")]
    fwd = getall("Forwarded", []) if getall else _single(headers, "Forwarded")
    return [_forwarded_node(e) for line in fwd for e in line.split(",")] if fwd else []


def _single(headers: Mapping[str, str], name: str) -> list[str]:
    value = headers.get(name)
    return [value] if value is not None else []


def _forwarded_node(element: str) -> str:
    """The address in one RFC 7239 element's `for=`; "" for unknown or obfuscated nodes."""
    for pair in element.split(";"):
        key, _, value = pair.strip().partition("=")
        if key.strip().lower() != "for":
            continue
        value = value.strip().strip('"')
        if value.startswith("["):
            return value[1 : value.find("]")] if "]" in value else ""
        host, _, _port = value.partition(":") if value.count(":") == 1 else (value, "", "")
        return host
    return ""
