"""Who the client is: the socket peer, or what trusted proxies say it was.

`client_ip(peer, headers, trusted)` returns a `ClientAddress`. Each address in
it is normalised: IPv4-mapped IPv6 becomes IPv4, IPv6 is compressed and lower
case, and zone ids are dropped.

- If the peer is not a trusted proxy, the client is the peer and every
  forwarded header is ignored. With no trusted proxies configured (the
  default) this is always the case.
- Otherwise the walk goes through `X-Forwarded-For` from the right. All its
  lines are joined in order, as RFC 9110 §5.3 allows. Each trusted address is
  passed, and the first untrusted one is the client. If every entry is
  trusted, the leftmost is the client.
- An entry that is not an IP address stops the walk. This includes empty
  entries, ports, `unknown` and obfuscated nodes. The client is then the last
  trusted hop reached, because nothing to its left can be believed.
- When there is no `X-Forwarded-For`, the `for=` values of RFC 7239
  `Forwarded` are walked the same way. Quoted strings are parsed properly,
  so a quoted "," or ";" cannot split one value into several.

`ClientAddress.chain` holds the entries that were passed as trusted hops.
These are the header entries to the right of the client, in header order,
without the socket peer. Gatekeeper sends `X-Forwarded-For: <chain>, <client>`
upstream (see `headers.upstream_request_headers`). With no trusted hops, that
header is just the client.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from multidict import MultiMapping

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")
# One RFC 7239 forwarded-pair: token "=" (token | quoted-string), followed by
# the delimiter that ends it (";" pair, "," element, or the end).
_PAIR = re.compile(
    r"""[ \t]*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)[ \t]*=[ \t]*"""
    r"""("(?:[^"\\]|\\.)*"|[^;,"\s]*)[ \t]*(;|,|$)"""
)
_QUOTED_PAIR = re.compile(r"\\(.)")
_ZONE = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
_ToIP = Callable[[str], str | None]


@dataclass(frozen=True, slots=True)
class ClientAddress:
    ip: str
    # The trusted hops between the client and the peer, leftmost first.
    chain: tuple[str, ...] = ()


class TrustedProxies:
    """The proxies whose forwarded headers are believed (empty by default)."""

    __slots__ = ("_contains", "_v4", "_v6")

    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for net in map(_unmapped, networks):
            bucket = v4 if net.version == 4 else v6
            bucket.append((int(net.network_address), int(net.netmask)))
        self._v4 = tuple(v4)
        self._v6 = tuple(v6)
        # Bounded: a flood of distinct addresses evicts entries but cannot grow memory.
        self._contains = functools.lru_cache(maxsize=4096)(self._lookup)

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str]) -> TrustedProxies:
        """Networks from CIDR strings. A bare address means a single host.
        ValueError names the first entry that is not an address or network."""
        networks: list[IPNetwork] = []
        for cidr in cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"trusted proxy {cidr!r} is not an IP address or CIDR network"
                ) from None
        return cls(networks)

    def __bool__(self) -> bool:
        return bool(self._v4 or self._v6)

    def contains(self, ip: str) -> bool:
        """Whether `ip` is in a trusted network; False for anything that is not an IP."""
        return self._contains(ip)

    def _lookup(self, ip: str) -> bool:
        addr = parse_ip(ip)
        if addr is None:
            return False
        value = int(addr)
        networks = self._v4 if addr.version == 4 else self._v6
        return any(value & mask == base for base, mask in networks)


def _unmapped(net: IPNetwork) -> IPNetwork:
    # Addresses are unmapped before lookup, so a configured ::ffff:a.b.c.d/n
    # network has to be unmapped as well, or it could never match.
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED_V4):
        v4 = net.network_address.ipv4_mapped
        assert v4 is not None
        return ipaddress.IPv4Network((v4, net.prefixlen - 96))
    return net


def parse_ip(text: str) -> IPAddress | None:
    """The address in `text`, with IPv4-mapped IPv6 unwrapped and a zone id
    dropped; None if `text` is not exactly one IP address (ports, brackets,
    leading-zero octets and surrounding text included)."""
    text, percent, zone = text.strip().partition("%")
    if percent and not (":" in text and _ZONE.fullmatch(zone)):
        return None  # a zone id belongs to IPv6 only, and is a plain interface name
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@functools.lru_cache(maxsize=4096)
def canonical_ip(text: str) -> str | None:
    """`parse_ip` as text, cached: the same few addresses recur on every request."""
    addr = parse_ip(text)
    return str(addr) if addr is not None else None


def normalise(ip: str) -> str:
    """The canonical text of an address; `ip` unchanged if it is not one."""
    return canonical_ip(ip) or ip


def client_ip(peer: str, headers: MultiMapping[str], trusted: TrustedProxies) -> ClientAddress:
    # Sockets report IPv4 peers in canonical form already; only IPv6 needs parsing.
    peer_ip = normalise(peer) if ":" in peer else peer
    if not trusted or not trusted.contains(peer_ip):
        return ClientAddress(peer_ip, ())
    xff = headers.getall("X-Forwarded-For", ())
    if xff:
        hops = [part for line in xff for part in line.split(",")]
        return _walk(peer_ip, hops, canonical_ip, trusted)
    forwarded = headers.getall("Forwarded", ())
    if forwarded:
        return _walk(peer_ip, forwarded_for(forwarded), _node_ip, trusted)
    return ClientAddress(peer_ip, ())


def _walk(
    peer_ip: str,
    hops: Sequence[str | None],
    to_ip: _ToIP,
    trusted: TrustedProxies,
) -> ClientAddress:
    """Right to left from the peer, passing trusted hops; see the module docstring."""
    client = peer_ip
    passed: list[str] = []  # trusted hops right of `client`, rightmost first
    for index in range(len(hops) - 1, -1, -1):
        hop = hops[index]
        ip = to_ip(hop) if hop is not None else None
        if ip is None:
            break  # garbage: stay at the last hop that could be believed
        if index < len(hops) - 1:
            passed.append(client)
        client = ip
        if not trusted.contains(client):
            break
    passed.reverse()
    return ClientAddress(client, tuple(passed))


def forwarded_for(lines: Iterable[str]) -> list[str | None]:
    """The `for=` node of each RFC 7239 element, leftmost first. An element
    without exactly one `for=` is None, and so is a line that does not parse
    from that point on. The walk stops at a None."""
    nodes: list[str | None] = []
    for line in lines:
        nodes.extend(_forwarded_line(line))
    return nodes


def _forwarded_line(line: str) -> list[str | None]:
    nodes: list[str | None] = []
    element: list[str] = []  # the `for=` values seen in the current element
    pos = 0
    while pos < len(line):
        match = _PAIR.match(line, pos)
        if match is None:
            # Not RFC 7239. A bad quote might hide where elements end, so nothing
            # from here on can be read; the walk stops here.
            nodes.append(None)
            return nodes
        name, value, delimiter = match.groups()
        if name.lower() == "for":
            element.append(_unquote(value))
        pos = match.end()
        if delimiter != ";" or pos == len(line):
            nodes.append(element[0] if len(element) == 1 else None)
            element = []
    return nodes


def _unquote(value: str) -> str:
    if value.startswith('"'):
        return _QUOTED_PAIR.sub(r"\1", value[1:-1])
    return value


def _node_ip(node: str) -> str | None:
    """The address in an RFC 7239 node (`1.2.3.4`, `1.2.3.4:80`, `[v6]`,
    `[v6]:80`). None for `unknown`, obfuscated names and unbracketed IPv6,
    where a port could not be told apart from the address."""
    if node.startswith("["):
        address, bracket, port = node[1:].partition("]")
        if not bracket or (port and not port.startswith(":")) or ":" not in address:
            return None
        return canonical_ip(address)
    address, _, port = node.partition(":")
    if ":" in port or "." not in address:
        return None
    return canonical_ip(address)

