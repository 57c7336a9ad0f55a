from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gatekeeper.edge.client_ip import (
    ClientAddress,
    TrustedProxies,
    client_ip,
    forwarded_for,
    parse_ip,
)

TRUSTED = TrustedProxies.from_cidrs(["10.0.0.0/8", "127.0.0.1/32", "2001:db8:ffff::/48"])
NONE = TrustedProxies.from_cidrs([])


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def xff(*lines: str) -> CIMultiDictProxy[str]:
    return headers(*(("X-Forwarded-For", line) for line in lines))


def fwd(*lines: str) -> CIMultiDictProxy[str]:
    return headers(*(("Forwarded", line) for line in lines))


# The peer decides whether any forwarded header is read at all.

@pytest.mark.parametrize(
    "spoof",
    [
        xff("66.249.66.1"),
        xff("10.0.0.1"),
        fwd("for=66.249.66.1"),
        headers(("X-Real-IP", "66.249.66.1"), ("True-Client-IP", "66.249.66.1")),
        headers(("X_Forwarded_For", "66.249.66.1")),
    ],
)
@pytest.mark.parametrize("trusted", [TRUSTED, NONE])
def test_forwarded_headers_from_an_untrusted_peer_are_ignored(
    spoof: CIMultiDictProxy[str], trusted: TrustedProxies
) -> None:
    assert client_ip("198.51.100.7", spoof, trusted) == ClientAddress("198.51.100.7", ())


def test_with_no_trusted_proxies_even_a_loopback_peer_is_the_client() -> None:
    assert client_ip("127.0.0.1", xff("66.249.66.1"), NONE) == ClientAddress("127.0.0.1", ())


def test_trusted_peer_without_forwarded_headers_is_the_client() -> None:
    assert client_ip("10.0.0.1", headers(), TRUSTED) == ClientAddress("10.0.0.1", ())


# X-Forwarded-For is walked right to left through trusted hops.

XFF_CASES = [
    # (X-Forwarded-For lines, client, chain)
    (["203.0.113.9"], "203.0.113.9", ()),
    (["66.249.66.1, 203.0.113.9, 10.2.2.2"], "203.0.113.9", ("10.2.2.2",)),
    (["66.249.66.1, 203.0.113.9, 10.2.2.2, 10.3.3.3"], "203.0.113.9", ("10.2.2.2", "10.3.3.3")),
    (["66.249.66.1", "203.0.113.9"], "203.0.113.9", ()),
    (["203.0.113.9", "10.2.2.2"], "203.0.113.9", ("10.2.2.2",)),
    (["203.0.113.9 ,10.2.2.2,  10.3.3.3 "], "203.0.113.9", ("10.2.2.2", "10.3.3.3")),
    # Every hop trusted: the leftmost is as far back as anyone can see.
    (["10.3.3.3, 10.2.2.2"], "10.3.3.3", ("10.2.2.2",)),
    (["127.0.0.1"], "127.0.0.1", ()),
]


@pytest.mark.parametrize(("lines", "ip", "chain"), XFF_CASES)
def test_trusted_chain_is_walked_right_to_left(
    lines: list[str], ip: str, chain: tuple[str, ...]
) -> None:
    assert client_ip("10.0.0.1", xff(*lines), TRUSTED) == ClientAddress(ip, chain)


@pytest.mark.parametrize(
    "garbage",
    ["not-an-ip", "", " ", "unknown", "_hidden", "1.2.3.4:8080", "[2001:db8::1]",
     "[2001:db8::1]:443", "010.1.1.1", "1.2.3", "1.2.3.4 5.6.7.8", "\"1.2.3.4\"", "::ffff:x",
     "2001:db8::1%", "999.1.1.1"],
)
def test_garbage_entry_stops_the_walk_at_the_last_trusted_hop(garbage: str) -> None:
    # The garbage sits between a spoofable entry and two trusted hops.
    got = client_ip("10.0.0.1", xff(f"66.249.66.1, {garbage}, 10.2.2.2, 10.3.3.3"), TRUSTED)
    assert got == ClientAddress("10.2.2.2", ("10.3.3.3",))


def test_garbage_as_the_rightmost_entry_leaves_the_peer_as_the_client() -> None:
    got = client_ip("10.0.0.1", xff("66.249.66.1, garbage"), TRUSTED)
    assert got == ClientAddress("10.0.0.1", ())


def test_garbage_left_of_the_client_is_never_read() -> None:
    got = client_ip("10.0.0.1", xff("garbage, 66.249.66.1, 203.0.113.9"), TRUSTED)
    assert got == ClientAddress("203.0.113.9", ())


def test_a_trailing_comma_is_an_empty_entry_and_stops_the_walk() -> None:
    assert client_ip("10.0.0.1", xff("203.0.113.9,"), TRUSTED) == ClientAddress("10.0.0.1", ())


# IPv6 and IPv4-mapped addresses.

@pytest.mark.parametrize(
    ("peer", "lines", "ip", "chain"),
    [
        ("::ffff:10.0.0.1", ["203.0.113.9"], "203.0.113.9", ()),
        ("::ffff:198.51.100.7", ["66.249.66.1"], "198.51.100.7", ()),
        ("10.0.0.1", ["::ffff:203.0.113.9"], "203.0.113.9", ()),
        ("10.0.0.1", ["203.0.113.9, ::ffff:10.2.2.2"], "203.0.113.9", ("10.2.2.2",)),
        ("2001:db8:ffff::1", ["2001:db8:1::5"], "2001:db8:1::5", ()),
        ("2001:DB8:FFFF:0::1", ["2001:DB8:1:0:0::5"], "2001:db8:1::5", ()),
        ("2001:db8:ffff::1", ["2001:db8:1::5, 2001:db8:ffff::9"], "2001:db8:1::5",
         ("2001:db8:ffff::9",)),
        ("fe80::1%eth0", [], "fe80::1", ()),
        ("2001:db8:ffff::1%3", ["203.0.113.9"], "203.0.113.9", ()),
    ],
)
def test_addresses_are_normalised_before_trust_is_decided(
    peer: str, lines: list[str], ip: str, chain: tuple[str, ...]
) -> None:
    assert client_ip(peer, xff(*lines), TRUSTED) == ClientAddress(ip, chain)


# RFC 7239 Forwarded, used when there is no X-Forwarded-For.

FORWARDED_CASES = [
    # (Forwarded lines, client, chain)
    (["for=192.0.2.60;proto=http;by=203.0.113.43"], "192.0.2.60", ()),
    (['for="[2001:db8:cafe::17]:4711"'], "2001:db8:cafe::17", ()),
    (['for="[2001:db8:cafe::17]"'], "2001:db8:cafe::17", ()),
    (["for=192.0.2.60:8080"], "192.0.2.60", ()),
    (['for="192.0.2.60:_port"'], "192.0.2.60", ()),
    (["For=192.0.2.60"], "192.0.2.60", ()),
    (["FOR = 192.0.2.60 ; proto=https"], "192.0.2.60", ()),
    (['for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711"'], "2001:db8:cafe::17", ()),
    (["for=192.0.2.60, for=10.9.9.9"], "192.0.2.60", ("10.9.9.9",)),
    (["for=192.0.2.60", "for=10.9.9.9"], "192.0.2.60", ("10.9.9.9",)),
    (["for=10.8.8.8, for=10.9.9.9"], "10.8.8.8", ("10.9.9.9",)),
    (["for=192.0.2.60;"], "192.0.2.60", ()),
    (['for="\\1\\9\\2.0.2.60"'], "192.0.2.60", ()),
    # unknown, obfuscated, unparsable or missing nodes stop the walk.
    (["for=unknown"], "10.0.0.1", ()),
    (["for=_hidden, for=10.9.9.9"], "10.9.9.9", ()),
    (['for="_hidden:1234", for=10.9.9.9'], "10.9.9.9", ()),
    (["for=192.0.2.60, proto=http"], "10.0.0.1", ()),
    (["for=192.0.2.60;for=10.9.9.9"], "10.0.0.1", ()),
    (["for=2001:db8::1"], "10.0.0.1", ()),
    (['for="2001:db8::1"'], "10.0.0.1", ()),
    (["for=[2001:db8::1"], "10.0.0.1", ()),
    (['for="[1.2.3.4]"'], "10.0.0.1", ()),
    (["for="], "10.0.0.1", ()),
    (["garbage"], "10.0.0.1", ()),
    (["for=192.0.2.60,, for=10.9.9.9"], "10.0.0.1", ()),
    # A quoted "," or ";" belongs to the value: it cannot open a second element.
    (['for="192.0.2.1, for=66.249.66.1"'], "10.0.0.1", ()),
    (['for="66.249.66.1;x", for=10.9.9.9'], "10.9.9.9", ()),
    # An unterminated quote makes the rest of its line unreadable.
    (['for="192.0.2.1, for=66.249.66.1'], "10.0.0.1", ()),
    (['for="192.0.2.1', "for=203.0.113.9"], "203.0.113.9", ()),
]


@pytest.mark.parametrize(("lines", "ip", "chain"), FORWARDED_CASES)
def test_forwarded_header_is_walked_like_x_forwarded_for(
    lines: list[str], ip: str, chain: tuple[str, ...]
) -> None:
    assert client_ip("10.0.0.1", fwd(*lines), TRUSTED) == ClientAddress(ip, chain)


def test_x_forwarded_for_wins_over_forwarded() -> None:
    both = headers(("Forwarded", "for=66.249.66.1"), ("X-Forwarded-For", "203.0.113.9"))
    assert client_ip("10.0.0.1", both, TRUSTED).ip == "203.0.113.9"


def test_forwarded_for_lists_one_node_per_element() -> None:
    assert forwarded_for(['for=a;proto=http, for="[::1]:80"', "by=x"]) == ["a", "[::1]:80", None]


# Trusted proxy configuration.

@pytest.mark.parametrize(
    ("cidrs", "ip", "expected"),
    [
        (["10.0.0.0/8"], "10.255.0.1", True),
        (["10.0.0.0/8"], "11.0.0.1", False),
        (["10.0.0.0/8"], "::ffff:10.1.2.3", True),
        (["10.0.0.0/8"], "::ffff:a01:203", True),
        (["192.0.2.7"], "192.0.2.7", True),
        (["192.0.2.7"], "192.0.2.8", False),
        (["10.0.0.1/8"], "10.9.9.9", True),  # host bits are ignored, as in the settings check
        (["::1/128"], "::1", True),
        (["::1"], "0:0::1", True),
        (["2001:db8::/32"], "2001:db8:abcd::1", True),
        (["2001:db8::/32"], "2001:db9::1", False),
        (["::ffff:10.0.0.0/104"], "10.1.2.3", True),
        (["::ffff:10.0.0.0/104"], "::ffff:10.1.2.3", True),
        (["0.0.0.0/0"], "::1", False),
        (["::/0"], "192.0.2.1", False),
        (["10.0.0.0/8"], "fe80::1%eth0", False),
        (["fe80::/10"], "fe80::1%eth0", True),
        (["10.0.0.0/8"], "not-an-ip", False),
        (["10.0.0.0/8"], "", False),
        (["10.0.0.0/8"], "010.0.0.1", False),
        ([], "10.0.0.1", False),
    ],
)
def test_trusted_proxies_contain_addresses_of_their_networks(
    cidrs: list[str], ip: str, expected: bool
) -> None:
    assert TrustedProxies.from_cidrs(cidrs).contains(ip) is expected


def test_an_empty_trusted_list_is_falsy_and_a_configured_one_truthy() -> None:
    assert not NONE
    assert not TrustedProxies()
    assert TRUSTED


@pytest.mark.parametrize(
    "entry", ["10.0.0.300/8", "10.0.0.0/33", "banana", "", "1.2.3.4/8/8", "2001:db8::/129",
              "10.0.0.0/-1", "localhost"],
)
def test_invalid_trusted_proxy_is_a_clear_error_naming_the_entry(entry: str) -> None:
    with pytest.raises(ValueError, match="trusted proxy") as err:
        TrustedProxies.from_cidrs(["127.0.0.1/32", entry])
    assert repr(entry) in str(err.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("192.0.2.1", "192.0.2.1"), (" 192.0.2.1 ", "192.0.2.1"), ("::ffff:192.0.2.1", "192.0.2.1"),
     ("2001:DB8::1", "2001:db8::1"), ("fe80::1%eth0", "fe80::1"), ("192.0.2.1%x", None),
     ("01.2.3.4", None), ("1.2.3.4:80", None), ("[::1]", None), ("", None)],
)
def test_parse_ip_accepts_exactly_one_address(text: str, expected: str | None) -> None:
    got = parse_ip(text)
    assert (str(got) if got is not None else None) == expected


# Properties.

_ENTRIES = st.one_of(
    st.sampled_from(["10.1.1.1", "10.2.2.2", "127.0.0.1", "66.249.66.1", "203.0.113.9",
                     "::ffff:10.3.3.3", "2001:db8:ffff::2", "2001:db8:1::1", "garbage", "",
                     "unknown", "1.2.3.4:80"]),
    st.ip_addresses().map(str),
)
_XFF = st.lists(_ENTRIES, max_size=8).map(", ".join)


@given(st.lists(_XFF, max_size=3), st.ip_addresses().map(str))
def test_without_trusted_proxies_the_client_is_always_the_peer(
    lines: list[str], peer: str
) -> None:
    got = client_ip(peer, xff(*lines), NONE)
    assert got.chain == ()
    assert ipaddress.ip_address(got.ip) == parse_ip(peer)


@given(st.lists(_XFF, min_size=1, max_size=3))
def test_the_client_is_a_header_entry_or_the_peer_and_the_chain_is_all_trusted(
    lines: list[str],
) -> None:
    got = client_ip("10.0.0.1", xff(*lines), TRUSTED)
    entries = [parse_ip(e) for line in lines for e in line.split(",")]
    known = {str(e) for e in entries if e is not None} | {"10.0.0.1"}
    assert got.ip in known
    assert all(TRUSTED.contains(hop) for hop in got.chain)
    if got.chain:
        # The chain is exactly the entries right of the client, in header order.
        assert list(got.chain) == [str(e) for e in entries[-len(got.chain):]]
