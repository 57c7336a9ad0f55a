"""Fuzz target: header hygiene (gatekeeper.edge.headers).

From fuzzer bytes, a list of request header lines; then the invariants that make
the gate safe to put in front of an origin:

- request framing is either a declared length, chunked (None), or BadRequest;
- the headers sent upstream carry no hop-by-hop header, no header the client's
  `Connection` named, no client copy of an identity header (`X-Forwarded-*`,
  `Forwarded`, `X-Real-IP`, `X-Gatekeeper-*` and their `_`/`.` spellings), and
  exactly the gate's own forwarded headers;
- no value anywhere holds CR, LF or NUL;
- response headers never keep a hop-by-hop header or a split-able value.

    pip install -e '.[fuzz]'
    python -m fuzz.header_hygiene fuzz/corpus/headers -max_total_time=300
"""

from __future__ import annotations

import re

from multidict import CIMultiDict

from fuzz.run import fuzz
from gatekeeper.edge.headers import (
    HOP_BY_HOP,
    URL_OVERRIDE_HEADERS,
    connection_tokens,
    downstream_response_headers,
    is_identity_header,
    normalise_name,
    request_framing,
    upstream_request_headers,
)
from gatekeeper.edge.target import BadRequest

GATE_ADDED = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip",
              "forwarded"}


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CTL = re.compile(r"[\r\n\x00]")


def headers_from(data: bytes) -> CIMultiDict[str]:
    """`name: value` lines, as far as the HTTP parser lets them through: names are
    tokens (`_` and `.` included), values hold no CR, LF or NUL."""
    out: CIMultiDict[str] = CIMultiDict()
    for line in data.decode("latin-1").split("\n")[:64]:
        name, sep, value = line.partition(":")
        if sep and _TOKEN.fullmatch(name):
            out.add(name, _CTL.sub("", value).strip(" \t"))
    return out


def test_one_input(data: bytes) -> None:
    incoming = headers_from(data)
    try:
        request_framing(bool(data[:1]) and data[0] & 1 == 1, incoming)
    except BadRequest as exc:
        assert exc.reason == "ambiguous_framing", exc.reason
    nominated = connection_tokens(incoming)
    out = upstream_request_headers(
        incoming, client_ip="192.0.2.1", host="example.com", proto="http",
        extra=[("X-Gatekeeper-Crawler", "GPTBot")])
    for name, value in out.items():
        norm = normalise_name(name)
        assert "\r" not in value and "\n" not in value and "\x00" not in value, (name, value)
        if norm in GATE_ADDED or norm == "x-gatekeeper-crawler":
            continue
        assert norm not in HOP_BY_HOP, name
        assert norm not in URL_OVERRIDE_HEADERS, name
        assert not is_identity_header(name), name
        if norm not in ("host",):
            assert norm not in nominated, (name, nominated)
    for name in GATE_ADDED:
        assert len(out.getall(name)) == 1, (name, out.getall(name))
    assert out.getall("X-Forwarded-For") == ["192.0.2.1"]
    assert out.getall("X-Gatekeeper-Crawler") == ["GPTBot"]
    for name, value in downstream_response_headers(incoming).items():
        assert normalise_name(name) not in HOP_BY_HOP, name
        assert "\r" not in value and "\n" not in value and "\x00" not in value


if __name__ == "__main__":
    fuzz(test_one_input)
