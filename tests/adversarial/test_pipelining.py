"""E9: pipelined requests with bodies are forwarded one by one, each framed as sent.

Three POSTs in one TCP write (a Content-Length body, a chunked one, an empty
one) must reach the upstream as three separate, well-framed requests in the
same order with the same payloads, and their answers must come back in order: a
gate that misframed one body would forward the rest of the write as part of it,
or as a request of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

from tests.adversarial.conftest import Origin
from tests.support.gate_process import GateProcess
from tests.support.raw_http import PUBLIC, parse_responses, request


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_three_pipelined_posts_reach_the_upstream_separately_framed_and_in_order(
    gate: GateProcess, origin: Origin
) -> None:
    chunked = (b"POST /public/echo?n=2 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Type: text/plain\r\n\r\n"
               b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n")
    write = (request("POST", "/public/echo?n=1", {"Content-Type": "text/plain"}, b"hello")
             + chunked
             + request("POST", "/public/echo?n=3", {"Content-Length": "0"}))
    payloads = [b"hello", b"abcdefg", b""]

    reader, writer = await asyncio.open_connection("127.0.0.1", gate.port,
                                                   local_addr=(PUBLIC, 0))
    writer.write(write)  # one write, one segment on loopback
    raw = b""
    async with asyncio.timeout(10):
        while len(parse_responses(raw)) < 3 or not parse_responses(raw)[2].complete:
            data = await reader.read(65536)
            assert data, f"the gate closed the connection after {raw!r}"
            raw += data
    writer.close()

    responses = parse_responses(raw)
    assert [r.status for r in responses] == [200, 200, 200]
    docs = [json.loads(r.body) for r in responses]
    assert [d["target"] for d in docs] == ["/public/echo?n=1", "/public/echo?n=2",
                                           "/public/echo?n=3"]
    assert [d["body_sha256"] for d in docs] == [sha(p) for p in payloads]

    assert origin.upstream.malformed() == []
    received = sorted(origin.upstream.requests(), key=lambda r: r.at)
    assert [(r.method, r.target, r.body) for r in received] == [
        ("POST", "/public/echo?n=1", b"hello"),
        ("POST", "/public/echo?n=2", b"abcdefg"),
        ("POST", "/public/echo?n=3", b""),
    ]
    assert all(r.complete for r in received)
    # Each framed once: the first and last by their length, the second by the
    # gate's own chunking or one Content-Length; never the client's framing twice.
    assert received[0].all("Content-Length") == ["5"]
    assert received[0].header("Transfer-Encoding") is None
    assert received[1].framing in ("chunked", "content-length")
    assert received[1].header("Transfer-Encoding") in (None, "chunked")
    assert not (received[1].header("Transfer-Encoding") and received[1].header("Content-Length"))
    assert received[2].header("Transfer-Encoding") is None
    assert received[2].all("Content-Length") == ["0"]
