from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gatekeeper.edge.client_ip import ClientAddress, TrustedProxies, client_ip

TRUSTED = TrustedProxies.from_cidrs(["10.0.0.0/8", "127.0.0.1/32", "2001:db8:ffff::/48"])
NONE = TrustedProxies.from_cidrs([])

CASES = [
    # (peer, headers, trusted, expected ip, expected chain)
    ("198.51.100.7", [("X-Forwarded-For", "66.249.66.1")], TRUSTED, "198.51.100.7", ()),
    ("198.51.100.7", [("X-Forwarded-For", "66.249.66.1")], NONE, "198.51.100.7", ()),
    ("10.0.0.1", [("X-Forwarded-For", "203.0.113.9")], TRUSTED, "203.0.113.9", ()),
    ("10.0.0.1", [("X-Forwarded-For", "66.249.66.1, 203.0.113.9, 10.2.2.2")], TRUSTED,
     "203.0.113.9", ("10.2.2.2",)),
    ("10.0.0.1", [("X-Forwarded-For", "66.249.66.1"), ("X-Forwarded-For", "203.0.113.9")],
     TRUSTED, "203.0.113.9", ()),
    ("10.0.0.1", [("X-Forwarded-For", "10.3.3.3, 10.2.2.2")], TRUSTED, "10.3.3.3",
     ("10.2.2.2",)),
    ("10.0.0.1", [("X-Forwarded-For", "203.0.113.9, not-an-ip, 10.2.2.2")], TRUSTED,
     "10.2.2.2", ()),
    ("10.0.0.1", [], TRUSTED, "10.0.0.1", ()),
    ("::ffff:10.0.0.1", [("X-Forwarded-For", "203.0.113.9")], TRUSTED, "203.0.113.9", ()),
    ("::ffff:198.51.100.7", [], NONE, "198.51.100.7", ()),
    ("2001:db8:ffff::1", [("X-Forwarded-For", "2001:db8:1::5")], TRUSTED, "2001:db8:1::5", ()),
    ("10.0.0.1", [("Forwarded", 'for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711"')],
     TRUSTED, "2001:db8:cafe::17", ()),
    ("10.0.0.1", [("Forwarded", "for=unknown")], TRUSTED, "10.0.0.1", ()),
    ("10.0.0.1", [("Forwarded", "for=_hidden, for=10.9.9.9")], TRUSTED, "10.9.9.9", ()),
]


@pytest.mark.parametrize(("peer", "headers", "trusted", "ip", "chain"), CASES)
def test_client_address(peer: str, headers: list[tuple[str, str]], trusted: TrustedProxies,
                        ip: str, chain: tuple[str, ...]) -> None:
    assert client_ip(peer, CIMultiDict(headers), trusted) == ClientAddress(ip, chain)


def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    got = client_ip("203.0.113.50", CIMultiDict([("X-Forwarded-For", "10.0.0.1")]), TRUSTED)
    assert got.ip == "203.0.113.50"


def test_invalid_trusted_proxy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300/8'"):
        TrustedProxies.from_cidrs(["10.0.0.300/8"])
