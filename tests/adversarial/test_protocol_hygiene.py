"""A1-A9 and A11 (reliability study §5 A): bad input and protocol hygiene.

Requests are written raw, exactly as a hostile client would, and the assertions are
about what the upstream received: for anything the gate refuses, not one byte; for
anything it forwards, exactly one well-framed request, and a body the gate did not
touch. Where forwarding had begun when the client broke its framing, the upstream
must never see the message completed (no last chunk), and its connection must not be
reused. Slow clients (A10) are in test_slow_clients.py.

The module's gate caps bodies at 4 MiB and reads no robots.txt, so every upstream
connection carries clients' requests only.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.adversarial.conftest import Origin
from tests.integration.conftest import BROWSER_HEADERS, GPTBOT
from tests.support.gate_process import GateProcess
from tests.support.raw_http import PUBLIC, Reply, exchange, parse_responses, request
from tests.support.recording_upstream import Connection, RecordingUpstream

MAX_BODY = 4 * 1024 * 1024
ENV = {"GATEKEEPER_MAX_BODY_SIZE": str(MAX_BODY), "GATEKEEPER_ROBOTS_COMPLIANCE": "false"}
UA = "User-Agent: hygiene-suite/1.0"
UA_HEADERS = {"User-Agent": "hygiene-suite/1.0"}
SMUGGLED = f"GET /public/smuggled HTTP/1.1\r\nHost: t\r\n{UA}\r\n\r\n".encode()
CHUNKED_HEAD = (f"POST /public/chunks HTTP/1.1\r\nHost: t\r\n{UA}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n").encode()
VECTORS: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parents[1] / "vectors" / "adversarial" / "protocol_hygiene.yaml").read_text())
MIB = 1024 * 1024


def wire(case: dict[str, Any], field: str = "request") -> bytes:
    """A vector's bytes (see the vectors file for `{ua}`, `{repeat}` and `{value}`)."""
    text: str = case[field].replace("{ua}", UA)
    if "repeat" in case:
        unit = case["repeat"]["text"]
        if "value" in case:
            unit = unit.replace("{value}", case["value"]["text"] * case["value"]["count"])
        text = text.replace("{repeat}", unit * case["repeat"]["count"])
    return text.encode("latin-1")


@pytest.fixture(scope="module")
def gate_env() -> dict[str, str]:
    return ENV


async def until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not met in {timeout} s: {what}")
        await asyncio.sleep(0.01)


async def until_value(gate: GateProcess, name: str, want: float, **labels: str) -> None:
    """Wait for a metric the gate updates once it has finished with a request."""
    deadline = time.monotonic() + 5
    while (got := await gate.value(name, **labels)) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} is {got}, expected {want}")
        await asyncio.sleep(0.05)


async def bad_requests(gate: GateProcess, reason: str) -> float:
    return await gate.value("gatekeeper_bad_requests_total", reason=reason)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def carrying(upstream: RecordingUpstream, marker: bytes) -> list[Connection]:
    return [c for c in upstream.connections if marker in c.raw]


def assert_never_completed(upstream: RecordingUpstream, path: str) -> Connection:
    """The upstream got the start of `path`'s request and never its end; the gate has
    closed that connection, and sent nothing else on it."""
    (conn,) = carrying(upstream, f"POST {path} ".encode())
    assert conn.closed
    assert [(r.target, r.complete) for r in conn.requests] == [(path, False)]
    assert b"0\r\n\r\n" not in conn.raw
    assert all(r.target != "/public/smuggled" for r in upstream.requests())
    return conn


# -- A1, A2, A3, A5, A6, A7: refused before anything is forwarded --------------------------


@pytest.mark.parametrize("case", VECTORS["refused"], ids=lambda c: f"{c['id']}-{c['name']}")
async def test_malformed_or_ambiguous_request_is_refused_closed_and_never_forwarded(
    gate: GateProcess, origin: Origin, case: dict[str, Any]
) -> None:
    reason = case.get("reason")
    before = await bad_requests(gate, reason) if reason else 0.0
    reply = await exchange(gate.port, wire(case) + SMUGGLED, timeout=5)
    assert reply.statuses, reply.raw[:200]
    assert reply.statuses[0] in case["status"], reply.raw[:200]
    assert len(reply.responses) == 1  # the smuggled or follow-up request is never answered
    assert reply.closed
    assert reply.elapsed < 3  # closed at once, not after an idle or lingering timeout
    if reason:
        assert json.loads(reply.responses[0].body) == {"error": reason, "status": reply.status}
        assert await bad_requests(gate, reason) == before + 1
    assert origin.upstream.client_bytes() == b""


async def test_chunked_coding_name_is_case_insensitive_and_the_body_reframed(
    gate: GateProcess, origin: Origin
) -> None:
    """A3: `Chunked` is `chunked`; the upstream gets the gate's framing, not the client's."""
    data = (f"POST /public/x HTTP/1.1\r\nHost: t\r\n{UA}\r\nConnection: close\r\n"
            "Transfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").encode()
    reply = await exchange(gate.port, data)
    assert reply.statuses == [200]
    (received,) = origin.upstream.requests()
    assert (received.target, received.body, received.complete) == ("/public/x", b"hello", True)
    assert received.framing in ("chunked", "content-length")
    assert received.all("Transfer-Encoding") == (["chunked"] if received.framing == "chunked"
                                                 else [])
    assert b"Chunked" not in origin.upstream.client_bytes()


async def test_forwarded_proto_comes_from_the_socket_not_from_the_client(
    gate: GateProcess, origin: Origin
) -> None:
    """A6: the upstream's X-Forwarded-Proto and Forwarded proto= are the gate's (plain
    http here), whatever the client claims."""
    headers = {**UA_HEADERS, "X-Forwarded-Proto": "https", "Forwarded": "proto=https",
               "X-Forwarded-Scheme": "https", "Connection": "close"}
    reply = await exchange(gate.port, request("GET", "/public/proto", headers))
    assert reply.statuses == [200]
    (received,) = origin.upstream.requests()
    assert received.all("X-Forwarded-Proto") == ["http"]
    assert received.all("X-Forwarded-Scheme") == []
    assert received.all("Forwarded") == [f"for={PUBLIC};proto=http;host=t"]


async def test_oversized_heads_repeated_a_thousand_times_leave_memory_flat(
    gate: GateProcess, origin: Origin
) -> None:
    """A7: every oversized head is refused and closed, and refusing 1 000 of them does
    not grow the gate."""
    cases = [wire(c) for c in VECTORS["refused"] if c["id"] == "A7"]
    sources = [f"127.0.0.{i}" for i in range(2, 10)]

    async def burst(count: int) -> list[Reply]:
        replies: list[Reply] = []
        for start in range(0, count, len(sources)):
            replies += await asyncio.gather(*(
                exchange(gate.port, cases[(start + i) % len(cases)], source=source, timeout=5)
                for i, source in enumerate(sources)))
        return replies

    await burst(96)  # warm up: allocator pools, caches, the metrics' label children
    rss = gate.rss_kib()
    replies = await burst(1000)
    grown = gate.rss_kib() - rss
    assert {r.status for r in replies} == {414, 431}
    assert all(r.closed and len(r.responses) == 1 for r in replies)
    assert grown < 4 * 1024, f"RSS grew by {grown} KiB"
    assert origin.upstream.client_bytes() == b""


# -- A4: broken chunk framing ---------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["chunks"], ids=lambda c: c["name"])
async def test_broken_chunk_in_the_first_write_is_refused_and_never_forwarded(
    gate: GateProcess, origin: Origin, case: dict[str, Any]
) -> None:
    reply = await exchange(gate.port, CHUNKED_HEAD + wire(case, "chunk") + SMUGGLED, timeout=5)
    assert reply.statuses == [400]
    assert reply.closed
    assert reply.elapsed < 3
    assert origin.upstream.client_bytes() == b""


@pytest.mark.parametrize("case", VECTORS["chunks"], ids=lambda c: c["name"])
async def test_broken_chunk_after_forwarding_began_aborts_the_upstream_request(
    gate: GateProcess, origin: Origin, case: dict[str, Any]
) -> None:
    before = await gate.value("gatekeeper_client_faults_total", fault="malformed_body")
    await _break_a_forwarded_body(gate, origin,
                                  lambda w: w.write(wire(case, "chunk") + SMUGGLED))
    # Counted at once, not after the body timeout (30 s) had run out.
    await until_value(gate, "gatekeeper_client_faults_total", before + 1, fault="malformed_body")


async def test_client_hanging_up_before_the_last_chunk_aborts_the_upstream_request(
    gate: GateProcess, origin: Origin
) -> None:
    before = await gate.value("gatekeeper_client_faults_total", fault="client_disconnect")
    # The client's last byte: no `0\r\n\r\n`.
    await _break_a_forwarded_body(gate, origin, lambda w: w.write_eof())
    await until_value(gate, "gatekeeper_client_faults_total", before + 1,
                      fault="client_disconnect")


async def _break_a_forwarded_body(gate: GateProcess, origin: Origin,
                                  then: Callable[[asyncio.StreamWriter], object]) -> None:
    """Start a chunked upload, wait until its first chunk is upstream, then `then`:
    the client gets 400 or nothing, and the upstream never a complete request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, local_addr=(PUBLIC, 0))
    try:
        writer.write(CHUNKED_HEAD + b"5\r\nhello\r\n")
        await until(lambda: bool(carrying(origin.upstream, b"\r\nhello\r\n")),
                    what="the first chunk reached the upstream")
        then(writer)
        async with asyncio.timeout(5):
            raw = await _read_to_end(reader)
    finally:
        writer.transport.abort()
    assert [r.status for r in parse_responses(raw)] in ([], [400])
    await until(lambda: all(c.closed for c in carrying(origin.upstream, b"/public/chunks")),
                what="the upstream connection closed")
    assert_never_completed(origin.upstream, "/public/chunks")


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    try:
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    except ConnectionError:
        pass
    return b"".join(chunks)


# -- A8: body limits ------------------------------------------------------------------------


async def test_content_length_over_the_cap_is_refused_at_once_without_the_body(
    gate: GateProcess, origin: Origin
) -> None:
    before = await bad_requests(gate, "body_too_large")
    head = f"POST /public/upload HTTP/1.1\r\nHost: t\r\n{UA}\r\nContent-Length: 2147483648\r\n\r\n"
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, local_addr=(PUBLIC, 0))
    try:
        writer.write(head.encode())
        async with asyncio.timeout(5):
            status_line = await reader.readline()
            answered = time.monotonic() - started
            raw = status_line + await _read_to_end(reader)  # closed after a short linger
        closed = time.monotonic() - started
    finally:
        writer.transport.abort()
    (reply,) = parse_responses(raw)
    assert reply.status == 413
    assert answered < 1.0  # not waiting for a body (about 5 ms here)
    assert closed < 5.0  # at most the gate's lingering time (2 s) spent on the body
    assert await bad_requests(gate, "body_too_large") == before + 1
    assert origin.upstream.client_bytes() == b""


async def test_chunked_body_growing_past_the_cap_is_cut_off_and_never_completed_upstream(
    gate: GateProcess, origin: Origin
) -> None:
    before = await gate.value("gatekeeper_client_faults_total", fault="body_too_large")
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, local_addr=(PUBLIC, 0))
    chunk = b"%x\r\n" % (64 * 1024) + b"x" * (64 * 1024) + b"\r\n"
    written = 0
    try:
        writer.write(CHUNKED_HEAD)
        try:
            async with asyncio.timeout(10):
                while written < 10 * MIB and not reader.at_eof():
                    writer.write(chunk)
                    await writer.drain()
                    written += 64 * 1024
        except (ConnectionError, TimeoutError):
            pass  # the gate stopped reading, or hung up: either way it stopped the body
        async with asyncio.timeout(5):
            raw = await _read_to_end(reader)
    finally:
        writer.transport.abort()
    assert [r.status for r in parse_responses(raw)] in ([], [413])
    await until(lambda: all(c.closed for c in carrying(origin.upstream, b"/public/chunks")),
                what="the upstream connection closed")
    conn = assert_never_completed(origin.upstream, "/public/chunks")
    assert len(conn.raw) < MAX_BODY + 256 * 1024  # stopped at the cap, not at the end
    await until_value(gate, "gatekeeper_client_faults_total", before + 1, fault="body_too_large")


# -- A9: compressed request bodies ------------------------------------------------------------


def gzip_bomb(mib: int) -> bytes:
    """A gzip member that inflates to `mib` MiB of zeros (about 1 KiB per MiB): each
    MiB is deflated on its own (a full flush resets the compressor), so one block
    repeated is the whole stream."""
    zeros = bytes(MIB)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    final_empty_block = b"\x03\x00"
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + block * mib + final_empty_block
            + struct.pack("<II", crc, (mib * MIB) & 0xFFFFFFFF))


@pytest.mark.parametrize("body", [
    pytest.param(lambda: gzip_bomb(1024), id="one_mib_inflating_to_one_gib"),
    pytest.param(lambda: gzip.compress(b"") * 50_000, id="fifty_thousand_empty_members"),
])
async def test_compressed_request_body_reaches_the_upstream_as_sent_never_inflated(
    gate: GateProcess, origin: Origin, body: Callable[[], bytes]
) -> None:
    payload = body()
    cpu, rss = cpu_seconds(gate.pid), gate.rss_kib()
    headers = {**UA_HEADERS, "Content-Encoding": "gzip", "Content-Type": "application/json",
               "Connection": "close"}
    reply = await exchange(gate.port, request("POST", "/public/bomb", headers, payload),
                           timeout=20)
    used, grown = cpu_seconds(gate.pid) - cpu, gate.rss_kib() - rss
    assert reply.statuses == [200]
    (received,) = origin.upstream.requests()
    assert received.complete
    assert received.header("Content-Encoding") == "gzip"
    assert hashlib.sha256(received.body).digest() == hashlib.sha256(payload).digest()
    assert received.framing == "content-length"
    assert received.header("Content-Length") == str(len(payload))
    # Inflating 1 GiB costs several CPU seconds; forwarding 1 MB about 0.05 s.
    assert used < 2.0, f"{used:.2f} s of CPU"
    assert grown < 20 * 1024, f"RSS grew by {grown} KiB"


# -- A11: pipelining ------------------------------------------------------------------------


async def test_pipelined_requests_are_each_decided_on_their_own(
    gate: GateProcess, origin: Origin
) -> None:
    data = (request("GET", "/public/a", BROWSER_HEADERS)
            + request("GET", "/premium/b", {"User-Agent": GPTBOT, "Connection": "close"}))
    reply = await exchange(gate.port, data)
    assert reply.statuses == [200, 403]
    assert [r.target for r in origin.upstream.requests()] == ["/public/a"]


async def test_pipelined_flood_of_blocked_requests_is_answered_in_order_in_bounded_memory(
    gate: GateProcess, origin: Origin
) -> None:
    """500 requests in one write, GPTBot's user agent from outside its range (blocked
    as spoofed) except every 50th, an allowed one the upstream echoes: the answers
    come in order (or the gate closes after a cap), and only the allowed requests
    reach the upstream."""
    def target(i: int) -> str:
        return f"/public/{i}" if i % 50 == 0 else f"/premium/{i}"

    def ua(i: int) -> dict[str, str]:
        return UA_HEADERS if i % 50 == 0 else {"User-Agent": GPTBOT}

    flood = b"".join(request("GET", target(i), ua(i)) for i in range(499))
    flood += request("GET", target(499), {**ua(499), "Connection": "close"})
    rss = gate.rss_kib()
    reply = await exchange(gate.port, flood, timeout=15)
    grown = gate.rss_kib() - rss
    answered = reply.responses
    assert len(answered) == 500 or (reply.closed and len(answered) >= 32)
    for i, response in enumerate(answered):
        if i % 50:
            assert response.status == 403, i
        else:
            assert response.status == 200, i
            assert json.loads(response.body)["target"] == target(i)
    assert [r.target for r in origin.upstream.requests()] == [
        target(i) for i in range(0, len(answered), 50)]
    assert grown < 5 * 1024, f"RSS grew by {grown} KiB"
