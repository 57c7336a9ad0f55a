from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gatekeeper.edge.headers import (
    body_framing,
    downstream_response_headers,
    is_identity_header,
    is_websocket_upgrade,
    redact,
    upstream_request_headers,
)


def up(*pairs: tuple[str, str], chain: tuple[str, ...] = ()) -> CIMultiDict[str]:
    return upstream_request_headers(
        CIMultiDictProxy(CIMultiDict(pairs)), client_ip="203.0.113.5", host="site.example",
        proto="https", forwarded_for_chain=chain,
    )


def test_hop_by_hop_headers_are_dropped() -> None:
    out = up(("Host", "site.example"), ("Connection", "keep-alive"), ("Keep-Alive", "5"),
             ("TE", "trailers"), ("Trailer", "X"), ("Transfer-Encoding", "chunked"),
             ("Upgrade", "h2c"), ("Proxy-Authorization", "Basic x"),
             ("Proxy-Connection", "keep-alive"), ("Accept", "text/html"))
    assert set(out.keys()) - {"Host", "Accept"} == {
        "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-IP", "Forwarded"}


def test_headers_nominated_by_connection_are_dropped() -> None:
    out = up(("Connection", "close, X-Secret, x-other"), ("X-Secret", "1"), ("X-Other", "2"),
             ("X-Kept", "3"))
    assert "X-Secret" not in out
    assert "X-Other" not in out
    assert out["X-Kept"] == "3"


def test_connection_cannot_remove_the_gates_own_forwarded_headers() -> None:
    out = up(("Connection", "X-Forwarded-For, X-Real-IP, Forwarded"))
    assert out["X-Forwarded-For"] == "203.0.113.5"
    assert out["X-Real-IP"] == "203.0.113.5"
    assert out["Forwarded"] == "for=203.0.113.5;proto=https;host=site.example"


@pytest.mark.parametrize(
    "name",
    ["X-Forwarded-For", "x-forwarded-host", "X-Forwarded-Proto", "X-Forwarded-Port",
     "X-Forwarded-Prefix", "Forwarded", "X-Real-IP", "True-Client-IP", "CF-Connecting-IP",
     "X-Client-IP", "X-Gatekeeper-Decision", "x-gatekeeper-anything", "X_Forwarded_For",
     "X.Real.IP", "x_gatekeeper_rule", "True_Client_IP", "cf.connecting.ip"],
)
def test_client_supplied_identity_headers_are_dropped_in_every_spelling(name: str) -> None:
    assert is_identity_header(name)
    out = up((name, "66.249.66.1"))
    assert all(v != "66.249.66.1" for v in out.values())


def test_duplicates_and_order_of_end_to_end_headers_are_kept() -> None:
    out = up(("Accept", "a"), ("X-Multi", "1"), ("Accept", "b"), ("X-Multi", "2"))
    assert out.getall("Accept") == ["a", "b"]
    assert out.getall("X-Multi") == ["1", "2"]


def test_forwarded_for_keeps_the_trusted_chain_then_the_client() -> None:
    out = up(chain=("10.0.0.2", "10.0.0.3"))
    assert out["X-Forwarded-For"] == "10.0.0.2, 10.0.0.3, 203.0.113.5"


def test_ipv6_client_is_quoted_in_forwarded() -> None:
    out = upstream_request_headers(CIMultiDictProxy(CIMultiDict()), client_ip="2001:db8::1",
                                   host="h", proto="http")
    assert out["Forwarded"] == 'for="[2001:db8::1]";proto=http;host=h'


def test_framing_headers_are_left_to_the_client_library() -> None:
    out = up(("Content-Length", "5"), ("Expect", "100-continue"))
    assert "Content-Length" not in out
    assert "Expect" not in out


@pytest.mark.parametrize(
    ("pairs", "length"),
    [([("Content-Length", "12")], 12), ([], None),
     ([("Transfer-Encoding", "chunked")], None), ([("Content-Length", "x")], None)],
)
def test_body_framing(pairs: list[tuple[str, str]], length: int | None) -> None:
    assert body_framing(CIMultiDict(pairs)) == length


def test_response_keeps_set_cookie_duplicates_and_drops_hop_by_hop() -> None:
    upstream = CIMultiDictProxy(CIMultiDict([
        ("Set-Cookie", "a=1"), ("Connection", "close, X-Internal"), ("X-Internal", "x"),
        ("Set-Cookie", "b=2"), ("Transfer-Encoding", "chunked"), ("Content-Length", "10"),
        ("Content-Encoding", "gzip"), ("Keep-Alive", "timeout=5"),
    ]))
    out = downstream_response_headers(upstream)
    assert out.getall("Set-Cookie") == ["a=1", "b=2"]
    assert set(out.keys()) == {"Set-Cookie", "Content-Length", "Content-Encoding"}


def test_response_header_values_with_line_breaks_are_not_passed_on() -> None:
    out = downstream_response_headers(CIMultiDict([("X-Bad", "a\r\nSet-Cookie: x"),
                                                   ("X-Ok", "fine")]))
    assert "X-Bad" not in out
    assert out["X-Ok"] == "fine"


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [([("Connection", "Upgrade"), ("Upgrade", "websocket")], True),
     ([("Connection", "keep-alive, upgrade"), ("Upgrade", "WebSocket")], True),
     ([("Upgrade", "websocket")], False),
     ([("Connection", "upgrade"), ("Upgrade", "h2c")], False)],
)
def test_websocket_upgrade_detection(pairs: list[tuple[str, str]], expected: bool) -> None:
    assert is_websocket_upgrade(CIMultiDict(pairs)) is expected


def test_redact_hides_credentials_and_keeps_the_rest() -> None:
    out = redact(CIMultiDict([("Authorization", "License abc"), ("Cookie", "s=1"),
                              ("X-Api-Key", "k"), ("User-Agent", "GPTBot")]))
    assert out == {"Authorization": "[redacted]", "Cookie": "[redacted]",
                   "X-Api-Key": "[redacted]", "User-Agent": "GPTBot"}
