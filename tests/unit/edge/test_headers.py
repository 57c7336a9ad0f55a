from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gatekeeper.edge.headers import (
    HOP_BY_HOP,
    IDENTITY_HEADERS,
    add_gate_headers,
    body_framing,
    check_head_size,
    check_header_bytes,
    downstream_response_headers,
    forwarded_element,
    is_identity_header,
    is_websocket_upgrade,
    redact,
    upstream_request_headers,
    websocket_protocols,
    websocket_request_headers,
)
from gatekeeper.edge.target import BadRequest

CLIENT = "203.0.113.5"
GATE_HEADERS = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-IP",
                "Forwarded")


def proxy(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def up(
    *pairs: tuple[str, str],
    chain: tuple[str, ...] = (),
    extra: tuple[tuple[str, str], ...] = (),
) -> CIMultiDict[str]:
    return upstream_request_headers(
        proxy(*pairs), client_ip=CLIENT, host="site.example", proto="https",
        forwarded_for_chain=chain, extra=extra,
    )


def client_part(out: CIMultiDict[str]) -> list[tuple[str, str]]:
    """The headers copied from the client: everything before Gatekeeper's own."""
    items = list(out.items())
    return items[: [name for name, _ in items].index("X-Forwarded-For")]


# Towards the upstream: hop-by-hop and Connection.

@pytest.mark.parametrize("name", [*sorted(HOP_BY_HOP), "Keep_Alive", "Proxy.Connection"])
def test_hop_by_hop_header_is_not_forwarded(name: str) -> None:
    out = up((name, "x"), ("Accept", "text/html"))
    assert client_part(out) == [("Accept", "text/html")]


@pytest.mark.parametrize(
    "connection",
    ["close, X-Secret", "X-Secret", "keep-alive,x-secret", " x-secret ,, close ", "X_Secret"],
)
def test_header_named_in_connection_is_not_forwarded(connection: str) -> None:
    out = up(("Connection", connection), ("X-Secret", "s3cr3t"), ("X-Kept", "1"))
    assert "X-Secret" not in out
    assert client_part(out) == [("X-Kept", "1")]


def test_every_connection_line_nominates_headers() -> None:
    out = up(("Connection", "keep-alive"), ("Connection", "X-A"), ("X-A", "1"), ("X-B", "2"))
    assert client_part(out) == [("X-B", "2")]


@pytest.mark.parametrize("name", [*GATE_HEADERS, "x-forwarded-for", "X-Gatekeeper-Decision"])
def test_connection_cannot_remove_a_header_gatekeeper_adds(name: str) -> None:
    out = up(("Connection", f"close, {name}"), extra=(("X-Gatekeeper-Decision", "allow"),))
    for own in GATE_HEADERS:
        assert len(out.getall(own)) == 1
    assert out["X-Gatekeeper-Decision"] == "allow"


def test_connection_cannot_remove_the_client_host() -> None:
    out = up(("Host", "site.example:8443"), ("Connection", "Host"))
    assert out["Host"] == "site.example:8443"


# Towards the upstream: identity and override headers.

@pytest.mark.parametrize(
    "name",
    [
        *sorted(IDENTITY_HEADERS), "X-Forwarded-For", "X-Forwarded-Server", "X-Forwarded-Uri",
        "X-Gatekeeper-Decision", "x-gatekeeper-anything", "X_Forwarded_For", "x_forwarded_for",
        "X.Real.IP", "x.real.ip", "X_Real_IP", "x_gatekeeper_rule", "X.Gatekeeper.Licence",
        "True_Client_IP", "cf.connecting.ip", "FORWARDED", "X-Forwarded_Host",
    ],
)
def test_client_supplied_identity_header_is_dropped_in_every_spelling(name: str) -> None:
    assert is_identity_header(name)
    out = up((name, "66.249.66.1"), ("Accept", "*/*"))
    assert client_part(out) == [("Accept", "*/*")]
    assert "66.249.66.1" not in out.values()


@pytest.mark.parametrize("name", ["X-Original-URL", "X-Rewrite-URL", "x_original_url",
                                  "X-Original-URI", "X-Forwarded-Uri"])
def test_url_override_header_is_dropped(name: str) -> None:
    out = up((name, "/premium"), ("Accept", "*/*"))
    assert client_part(out) == [("Accept", "*/*")]


@pytest.mark.parametrize("raw", [b"GPT\xffBot", b"caf\xe9", b"\x80", b"ok \xc3"])
def test_a_header_value_that_is_not_utf8_is_refused(raw: bytes) -> None:
    # aiohttp's parser passes such bytes as surrogate escapes; its writer would drop them.
    value = raw.decode("utf-8", "surrogateescape")
    with pytest.raises(BadRequest) as err:
        check_header_bytes(proxy(("Accept", "*/*"), ("User-Agent", value)))
    assert err.value.reason == "non_utf8_header"


def test_utf8_and_ascii_header_values_pass() -> None:
    check_header_bytes(proxy(("User-Agent", "GPT\u200bBot"), ("X-Name", "café"), ("A", "")))


@pytest.mark.parametrize(
    "name", ["User-Agent", "X-Forwarded", "Forwarded-By", "X-Real", "X-Gatekeeper", "Accept"]
)
def test_ordinary_header_is_not_an_identity_header(name: str) -> None:
    assert not is_identity_header(name)
    assert client_part(up((name, "v"))) == [(name, "v")]


@pytest.mark.parametrize("name", ["Content-Length", "Transfer-Encoding", "Expect"])
def test_framing_headers_are_left_to_the_server_and_client(name: str) -> None:
    out = up((name, "100-continue" if name == "Expect" else "5"), ("Accept", "*/*"))
    assert client_part(out) == [("Accept", "*/*")]


def test_end_to_end_headers_keep_their_order_duplicates_and_spelling() -> None:
    pairs = [("Host", "site.example"), ("accept", "a"), ("X-Multi", "1"), ("Accept", "b"),
             ("Cookie", "c=1"), ("X-Multi", "2"), ("User-Agent", "GPTBot/1.2")]
    assert client_part(up(*pairs)) == pairs


def test_gatekeeper_headers_follow_the_client_headers_in_a_fixed_order() -> None:
    out = up(("Accept", "*/*"), extra=(("X-Gatekeeper-Decision", "allow"),))
    assert list(out.keys()) == ["Accept", *GATE_HEADERS, "X-Gatekeeper-Decision"]


# Towards the upstream: Gatekeeper's own headers.

@pytest.mark.parametrize(
    ("chain", "xff"),
    [
        ((), CLIENT),
        (("10.0.0.2",), f"10.0.0.2, {CLIENT}"),
        (("10.0.0.2", "10.0.0.3"), f"10.0.0.2, 10.0.0.3, {CLIENT}"),
    ],
)
def test_forwarded_for_is_the_trusted_chain_then_the_client(
    chain: tuple[str, ...], xff: str
) -> None:
    out = up(("X-Forwarded-For", "66.249.66.1"), chain=chain)
    assert out.getall("X-Forwarded-For") == [xff]


def test_forwarded_headers_describe_the_client_as_gatekeeper_sees_it() -> None:
    out = up(("X-Real-IP", "1.1.1.1"), ("X-Forwarded-Proto", "http"), ("Forwarded", "for=x"))
    assert out.getall("X-Real-IP") == [CLIENT]
    assert out.getall("X-Forwarded-Proto") == ["https"]
    assert out.getall("X-Forwarded-Host") == ["site.example"]
    assert out.getall("Forwarded") == [f"for={CLIENT};proto=https;host=site.example"]


@pytest.mark.parametrize(
    ("ip", "host", "element"),
    [
        ("192.0.2.60", "h", "for=192.0.2.60;proto=http;host=h"),
        ("2001:db8::1", "h", 'for="[2001:db8::1]";proto=http;host=h'),
        ("2001:DB8:0::1", "h", 'for="[2001:db8::1]";proto=http;host=h'),
        ("::ffff:192.0.2.1", "h", "for=192.0.2.1;proto=http;host=h"),
        ("not-an-ip", "h", "for=unknown;proto=http;host=h"),
        ("192.0.2.60", "[::1]", 'for=192.0.2.60;proto=http;host="[::1]"'),
        ("192.0.2.60", 'a"b\\c', 'for=192.0.2.60;proto=http;host="a\\"b\\\\c"'),
    ],
)
def test_forwarded_element_follows_rfc_7239_quoting(ip: str, host: str, element: str) -> None:
    assert forwarded_element(ip, proto="http", host=host) == element


def test_extra_headers_with_line_breaks_are_not_sent() -> None:
    out = up(extra=(("X-Gatekeeper-Ok", "1"), ("X-Gatekeeper-Bad", "a\r\nX-Injected: 1")))
    assert out["X-Gatekeeper-Ok"] == "1"
    assert "X-Gatekeeper-Bad" not in out


def test_incoming_headers_are_not_modified() -> None:
    incoming = proxy(("Connection", "X-A"), ("X-A", "1"), ("X-Forwarded-For", "9.9.9.9"))
    before = list(incoming.items())
    upstream_request_headers(incoming, client_ip=CLIENT, host="h", proto="http")
    assert list(incoming.items()) == before


_NAMES = st.sampled_from([
    "Connection", "Keep-Alive", "TE", "Upgrade", "X-Forwarded-For", "x_forwarded_for",
    "X.Real.IP", "Forwarded", "X-Gatekeeper-Decision", "Accept", "X-Custom", "Cookie",
    "Content-Length", "Transfer-Encoding", "Host", "Proxy-Authorization", "X-Original-URL",
])
_VALUES = st.sampled_from(["close", "x-custom, X-Forwarded-For", "1.2.3.4", "v", "upgrade",
                           "X-Real-IP, forwarded", "keep-alive, cookie"])


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=12))
def test_whatever_the_client_sends_the_upstream_gets_one_copy_of_each_forwarded_header(
    pairs: list[tuple[str, str]],
) -> None:
    out = up(*pairs)
    for name in GATE_HEADERS:
        assert len(out.getall(name)) == 1
    assert out["X-Forwarded-For"] == CLIENT
    for name, _value in client_part(out):
        assert name.lower() not in HOP_BY_HOP
        assert not is_identity_header(name)


# Body framing.

@pytest.mark.parametrize(
    ("pairs", "length"),
    [
        ([("Content-Length", "12")], 12),
        ([("Content-Length", "0")], 0),
        ([("Content-Length", " 7 ")], 7),
        ([], None),
        ([("Transfer-Encoding", "chunked")], None),
    ],
)
def test_body_framing_is_the_declared_length_or_none(
    pairs: list[tuple[str, str]], length: int | None
) -> None:
    assert body_framing(proxy(*pairs)) == length


@pytest.mark.parametrize(
    "pairs",
    [
        [("Content-Length", "x")],
        [("Content-Length", "")],
        [("Content-Length", "+5")],
        [("Content-Length", "-1")],
        [("Content-Length", "5, 5")],
        [("Content-Length", "\u0665")],
        [("Content-Length", "5"), ("Content-Length", "5")],
        [("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
    ],
)
def test_body_framing_refuses_a_length_it_cannot_trust(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(BadRequest) as err:
        body_framing(proxy(*pairs))
    assert err.value.reason == "ambiguous_framing"



def test_head_size_counts_the_request_line_and_every_field_as_sent() -> None:
    fields = [(b"X-Kib", b"v" * 1024)] * 31  # 1033 bytes each with ": " and CRLF
    check_head_size(20, fields, 20 + 31 * 1033)  # exactly at the limit: accepted
    with pytest.raises(BadRequest) as err:
        check_head_size(21, fields, 20 + 31 * 1033)
    assert (err.value.reason, err.value.status) == ("header_block_too_large", 431)
    with pytest.raises(BadRequest):
        check_head_size(32 * 1024 + 1, [], 32 * 1024)  # the request line alone


# Towards the client.

def test_response_keeps_set_cookie_duplicates_and_drops_hop_by_hop() -> None:
    upstream = proxy(
        ("Set-Cookie", "a=1"), ("Connection", "close, X-Internal"), ("X-Internal", "x"),
        ("Set-Cookie", "b=2"), ("Transfer-Encoding", "chunked"), ("Content-Length", "10"),
        ("Content-Encoding", "gzip"), ("Keep-Alive", "timeout=5"), ("Trailer", "X-T"),
        ("Proxy-Authenticate", "Basic"), ("Upgrade", "h2c"), ("Set-Cookie", "c=3"),
    )
    assert list(downstream_response_headers(upstream).items()) == [
        ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Length", "10"),
        ("Content-Encoding", "gzip"), ("Set-Cookie", "c=3"),
    ]


@pytest.mark.parametrize("value", ["a\r\nSet-Cookie: x=1", "a\nb", "a\rb", "a\x00b"])
def test_response_header_value_that_could_split_the_response_is_dropped(value: str) -> None:
    out = downstream_response_headers(proxy(("X-Bad", value), ("X-Ok", "fine")))
    assert list(out.items()) == [("X-Ok", "fine")]


def test_response_keeps_upstream_identity_headers() -> None:
    # The upstream is trusted; only client-supplied identity headers are stripped.
    out = downstream_response_headers(proxy(("X-Real-IP", "10.0.0.1"), ("Vary", "Cookie")))
    assert list(out.items()) == [("X-Real-IP", "10.0.0.1"), ("Vary", "Cookie")]


# WebSocket.

@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([("Connection", "Upgrade"), ("Upgrade", "websocket")], True),
        ([("Connection", "keep-alive, upgrade"), ("Upgrade", "WebSocket")], True),
        ([("Connection", "keep-alive"), ("Connection", "Upgrade"), ("Upgrade", "websocket")],
         True),
        ([("Upgrade", "websocket")], False),
        ([("Connection", "upgrade")], False),
        ([("Connection", "upgrade"), ("Upgrade", "h2c")], False),
        ([("Connection", "upgraded"), ("Upgrade", "websocket")], False),
    ],
)
def test_websocket_upgrade_detection(pairs: list[tuple[str, str]], expected: bool) -> None:
    assert is_websocket_upgrade(proxy(*pairs)) is expected


def test_websocket_request_leaves_the_handshake_to_the_client_library() -> None:
    incoming = proxy(
        ("Host", "h"), ("Connection", "Upgrade"), ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", "chat, superchat"), ("Sec-WebSocket-Protocol", "v2"),
        ("Sec-WebSocket-Extensions", "permessage-deflate"), ("Origin", "https://h"),
    )
    out = websocket_request_headers(incoming, client_ip=CLIENT, host="h", proto="http")
    assert client_part(out) == [("Host", "h"), ("Origin", "https://h")]
    assert websocket_protocols(incoming) == ("chat", "superchat", "v2")


# Logging.

def test_redact_hides_credentials_and_keeps_the_rest() -> None:
    out = redact(proxy(
        ("Authorization", "License abc"), ("Proxy-Authorization", "Basic eA=="),
        ("Cookie", "s=1"), ("Set-Cookie", "t=2"), ("X-Api-Key", "k"),
        ("X-Auth-Token", "t"), ("X-Client-Secret", "s"), ("User-Agent", "GPTBot"),
    ))
    assert out == {
        "Authorization": "[redacted]", "Proxy-Authorization": "[redacted]",
        "Cookie": "[redacted]", "Set-Cookie": "[redacted]", "X-Api-Key": "[redacted]",
        "X-Auth-Token": "[redacted]", "X-Client-Secret": "[redacted]", "User-Agent": "GPTBot",
    }


def test_redact_joins_repeated_headers_under_the_first_spelling() -> None:
    out = redact(proxy(("Accept", "a"), ("accept", "b"), ("Cookie", "x"), ("cookie", "y")))
    assert out == {"Accept": "a, b", "Cookie": "[redacted]"}


def test_an_rsl_licence_token_is_not_forwarded_but_other_credentials_are() -> None:
    from multidict import CIMultiDict as MD

    from gatekeeper.edge.headers import upstream_request_headers as build

    for value in ("License eyJ.a.b", "license eyJ.a.b", "  LICENSE eyJ.a.b"):
        out = build(MD({"Authorization": value, "Host": "a"}), client_ip="192.0.2.1",
                    host="a", proto="http")
        assert "Authorization" not in out
    for value in ("Basic dXNlcjpwYXNz", "Bearer abc", "Licensee x"):
        out = build(MD({"Authorization": value, "Host": "a"}), client_ip="192.0.2.1",
                    host="a", proto="http")
        assert out["Authorization"] == value
    kept = build(MD({"Authorization": "License eyJ.a.b"}), client_ip="192.0.2.1", host="a",
                 proto="http", strip_license_tokens=False)
    assert kept["Authorization"] == "License eyJ.a.b"


RELATIVE = ("Link", '</license.xml>; rel="license"; type="application/rsl+xml"')
ABSOLUTE = ("Link", '<https://example.com/license.xml>; rel="license"; '
                    'type="application/rsl+xml"')


def test_a_licensed_response_links_its_licence_once_and_keeps_the_origins_links() -> None:
    headers = CIMultiDict([("Link", "</style.css>; rel=preload; as=style"),
                           ("Content-Usage", "train-ai=y")])
    add_gate_headers(headers, [RELATIVE, ("crawler-charged", "USD 0.002")],
                     [("Content-Usage", "train-ai=n"), ABSOLUTE])
    assert headers.getall("Link") == ["</style.css>; rel=preload; as=style", ABSOLUTE[1]]
    assert headers.getall("Content-Usage") == ["train-ai=n"]
    assert headers["crawler-charged"] == "USD 0.002"


def test_without_declarations_the_gates_licence_link_is_added_beside_the_origins() -> None:
    headers = CIMultiDict([("Link", "</style.css>; rel=preload; as=style")])
    add_gate_headers(headers, [RELATIVE], [])
    assert headers.getall("Link") == ["</style.css>; rel=preload; as=style", RELATIVE[1]]
