"""Bodies both ways, byte for byte, without the proxy buffering or re-encoding them."""

from __future__ import annotations

import gzip
import hashlib
import os
import resource

import aiohttp

from tests.integration.conftest import MiB, StartGate, Upstream, raw_request, status_of


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
