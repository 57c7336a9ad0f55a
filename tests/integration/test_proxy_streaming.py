"""Bodies both ways, byte for byte, without the proxy buffering or re-encoding them."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import resource

import aiohttp

from tests.integration.conftest import (
    CHUNK,
    GPTBOT,
    MiB,
    RawUpstream,
    StartGate,
    StartRaw,
    Upstream,
    raw_request,
    read_head,
    status_of,
    statuses_of,
    wait_until,
)


async def test_50_mib_response_arrives_byte_identical(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    expected = hashlib.sha256()
    block = bytes(range(256)) * 256
    for _ in range(50 * MiB // len(block)):
        expected.update(block)
    got = hashlib.sha256()
    n = 0
    async with aiohttp.ClientSession(auto_decompress=False) as s, s.get(gk.url + "/big") as r:
        assert r.headers["Content-Length"] == str(50 * MiB)
        async for chunk in r.content.iter_any():
            got.update(chunk)
            n += len(chunk)
    assert n == 50 * MiB
    assert got.hexdigest() == expected.hexdigest()


async def test_50_mib_request_body_streams_to_upstream_byte_identical(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    digest = hashlib.sha256()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    async def body():  # type: ignore[no-untyped-def]
        for _i in range(50):
            chunk = os.urandom(1024) * 1024  # 1 MiB
            digest.update(chunk)
            yield chunk

    async with aiohttp.ClientSession() as s, s.post(gk.url + "/upload", data=body()) as r:
        assert r.status == 200
        seen = await r.json()
    assert seen["body_len"] == 50 * MiB
    assert seen["body_sha256"] == digest.hexdigest()
    # Chunked in, chunked on: the gate did not collect the body to learn its length.
    headers = {k.lower(): v for k, v in upstream.seen[0].headers}
    assert headers.get("transfer-encoding") == "chunked"
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 40 * 1024, f"peak RSS grew by {grown_kib} KiB"


async def test_declared_length_body_keeps_its_content_length(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    payload = os.urandom(300_000)
    async with aiohttp.ClientSession() as s, s.put(gk.url + "/u", data=payload) as r:
        seen = await r.json()
    assert seen["body_sha256"] == hashlib.sha256(payload).hexdigest()
    headers = {k.lower(): v for k, v in upstream.seen[0].headers}
    assert headers["content-length"] == "300000"


async def test_gzip_request_body_is_forwarded_compressed(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    packed = gzip.compress(b"A" * 100_000)
    async with aiohttp.ClientSession() as s, s.post(
        gk.url + "/in", data=packed, headers={"Content-Encoding": "gzip"}
    ) as r:
        seen = await r.json()
    assert seen["body_len"] == len(packed)
    assert seen["body_sha256"] == hashlib.sha256(packed).hexdigest()
    assert ("Content-Encoding", "gzip") in [tuple(h) for h in seen["headers"]]


async def test_gzip_response_is_not_decompressed(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    async with aiohttp.ClientSession(auto_decompress=False) as s, s.get(
        gk.url + "/gzip", headers={"Accept-Encoding": "gzip"}
    ) as r:
        raw = await r.read()
        assert r.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(raw) == b"hello " * 1000


async def test_head_passes_through_with_length_and_no_body(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    req = b"HEAD /big?mib=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    response = await raw_request(gk.port, req)
    head, _, body = response.partition(b"\r\n\r\n")
    assert status_of(response) == 200
    assert b"Content-Length: 1048576" in head
    assert body == b""
    assert upstream.seen[0].method == "HEAD"


async def test_chunked_request_is_forwarded(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    req = (b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
           b"\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    response = await raw_request(gk.port, req)
    assert status_of(response) == 200
    assert upstream.seen[0].body_sha256 == hashlib.sha256(b"hello world").hexdigest()


async def test_client_adds_no_user_agent_or_accept_encoding(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    await raw_request(gk.port, b"GET /bare HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    names = {k.lower() for k, _ in upstream.seen[0].headers}
    assert not names & {"user-agent", "accept-encoding", "accept", "content-type"}


async def test_redirects_are_passed_to_the_client_not_followed(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    async with aiohttp.ClientSession() as s, s.get(
        gk.url + "/redirect", allow_redirects=False
    ) as r:
        assert r.status == 302
        assert r.headers["Location"] == "/elsewhere"
    assert upstream.paths() == ["/redirect"]


async def test_one_clients_cookies_never_reach_upstream_on_another_clients_request(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    # A host name, not an IP: the default cookie jar ignores IP hosts, which would hide it.
    gk = await start_gatekeeper(f"http://localhost:{upstream.port}")
    async with aiohttp.ClientSession() as a, a.get(gk.url + "/set-cookie") as r:
        assert r.status == 200
    async with aiohttp.ClientSession() as b, b.get(gk.url + "/next") as r:
        await r.read()
    names = {k.lower() for k, _ in upstream.seen[-1].headers}
    assert "cookie" not in names


async def test_upstream_connections_are_kept_alive_and_reused(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    async with aiohttp.ClientSession() as s:
        for i in range(20):
            async with s.get(f"{gk.url}/k{i}") as r:
                await r.read()
    assert len(upstream.seen) == 20
    assert len(upstream.connections) < 5

CLOSE_GET = b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"


async def test_request_body_reaches_upstream_while_the_client_is_still_sending(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    digest = hashlib.sha256()

    async def body():  # type: ignore[no-untyped-def]
        for i in range(8):
            chunk = bytes([i]) * CHUNK
            digest.update(chunk)
            yield chunk
            # The next chunk is sent only once the upstream holds this one: a proxy
            # that collected the body before forwarding it would stall here.
            await wait_until(lambda i=i: upstream.body_received >= (i + 1) * CHUNK)

    async with aiohttp.ClientSession() as s, s.post(gk.url + "/lockstep-up", data=body()) as r:
        assert r.status == 200
        assert (await r.json())["body_sha256"] == digest.hexdigest()


async def test_response_reaches_the_client_while_the_upstream_is_still_sending(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    async with aiohttp.ClientSession() as s, s.get(gk.url + "/lockstep-down?n=8") as r:
        assert r.headers["Transfer-Encoding"] == "chunked"
        async for chunk in r.content.iter_any():
            upstream.client_received += len(chunk)
    assert upstream.client_received == 8 * CHUNK


async def test_response_without_length_is_relayed_chunked(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    response = await raw_request(
        gk.port, b"GET /chunked HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert status_of(response) == 200
    assert b"\r\nTransfer-Encoding: chunked" in head
    assert b"Content-Length" not in head
    assert _dechunk(body) == b"one two three"


async def test_proxy_adds_no_content_type_or_server_header_of_its_own(
    raw_upstream: StartRaw, start_gatekeeper: StartGate
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     state: RawUpstream) -> None:
        await read_head(reader, state)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        await writer.drain()

    up = await raw_upstream(script)
    gk = await start_gatekeeper(up.url)
    response = await raw_request(gk.port, CLOSE_GET)
    head, _, body = response.partition(b"\r\n\r\n")
    assert body == b"hello"
    # aiohttp would add "application/octet-stream" (a download instead of a page)
    # and its own "Server: Python/... aiohttp/...".
    assert b"content-type" not in head.lower()
    assert b"server:" not in head.lower()


async def test_post_without_content_type_reaches_upstream_without_one(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    for framing in (b"Content-Length: 5\r\n\r\nhello",
                    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"):
        req = b"POST /p HTTP/1.1\r\nHost: h\r\nConnection: close\r\n" + framing
        assert status_of(await raw_request(gk.port, req)) == 200
    for seen in upstream.seen:
        assert seen.body_sha256 == hashlib.sha256(b"hello").hexdigest()
        names = {k.lower() for k, _ in seen.headers}
        assert not names & {"content-type", "user-agent", "accept", "accept-encoding"}


async def test_100_continue_is_sent_only_when_the_request_is_forwarded(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    head = b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", gk.port)
    writer.write(head + b"\r\n")
    async with asyncio.timeout(3):
        interim = await reader.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        final = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert final.startswith(b"HTTP/1.1 200 ")
    assert upstream.seen[0].body_sha256 == hashlib.sha256(b"hello").hexdigest()
    assert "expect" not in {k.lower() for k, _ in upstream.seen[0].headers}

    # A blocked crawler is answered at once, and never invited to send its body.
    reader, writer = await asyncio.open_connection("127.0.0.1", gk.port)
    writer.write(head + b"User-Agent: " + GPTBOT.encode() + b"\r\n\r\n")
    async with asyncio.timeout(3):
        final = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert final.startswith(b"HTTP/1.1 403 ")
    assert b"\r\nConnection: close\r\n" in final  # the unsent body is not waited for
    assert len(upstream.seen) == 1


async def test_unknown_expectation_gets_417(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    req = b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: 200-ok\r\n\r\nhi"
    assert status_of(await raw_request(gk.port, req)) == 417
    assert upstream.seen == []


async def test_head_then_get_share_one_keep_alive_connection(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    req = (b"HEAD /big?mib=1 HTTP/1.1\r\nHost: h\r\n\r\n"
           b"GET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    response = await raw_request(gk.port, req)
    first, _, rest = response.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Length: 1048576" in first
    # No body after the HEAD answer: the next bytes are the GET's status line.
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert upstream.paths() == ["/big?mib=1", "/after"]


async def test_no_body_statuses_pass_through_and_keep_the_connection(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    req = (b"GET /status/204 HTTP/1.1\r\nHost: h\r\n\r\n"
           b"GET /status/304 HTTP/1.1\r\nHost: h\r\n\r\n"
           b"GET /status/200 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    response = await raw_request(gk.port, req)
    statuses = statuses_of(response)
    assert statuses == [204, 304, 200]
    assert b"Transfer-Encoding" not in response.split(b"HTTP/1.1 200")[0]


def _dechunk(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert body == b"\r\n", "chunked body must end with an empty chunk"
            return out
        out, body = out + body[:size], body[size + 2:]


async def test_response_head_is_relayed_before_the_body_exists(
    raw_upstream: StartRaw, start_gatekeeper: StartGate
) -> None:
    head_seen = asyncio.Event()

    async def slow_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        state: RawUpstream) -> None:
        await read_head(reader, state)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        # Like a server-sent event stream: the first event comes later. The head
        # must not wait for it.
        async with asyncio.timeout(3):
            await head_seen.wait()
        writer.write(b"6\r\ndata:1\r\n0\r\n\r\n")
        await writer.drain()

    up = await raw_upstream(slow_body)
    gk = await start_gatekeeper(up.url)
    async with aiohttp.ClientSession() as s, s.get(gk.url + "/events") as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        head_seen.set()
        assert await r.read() == b"data:1"
