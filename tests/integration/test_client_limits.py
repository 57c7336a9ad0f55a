"""Slow and oversized clients: bounded in time and size, the upstream sees nothing."""

from __future__ import annotations

import asyncio
import time

from tests.integration.conftest import StartGate, Upstream, raw_request, status_of


async def test_client_trickling_its_headers_is_cut_off_at_the_header_timeout(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, client_header_timeout=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", gk.port)

    async def trickle() -> None:
        for byte in b"GET /a HTTP/1.1\r\nHost: h\r\nX-Slow: " + b"x" * 100:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)

    sender = asyncio.ensure_future(trickle())
    started = time.monotonic()
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed without an answer
    elapsed = time.monotonic() - started
    sender.cancel()
    writer.close()
    assert elapsed < 3
    assert upstream.seen == []


async def test_idle_keep_alive_connection_is_closed(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, client_header_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", gk.port)
    writer.write(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    await writer.drain()
    started = time.monotonic()
    async with asyncio.timeout(5):
        data = await reader.read(65536)
        assert data.startswith(b"HTTP/1.1 200")
        while await reader.read(65536):
            pass
    assert time.monotonic() - started < 3
    writer.close()


async def test_oversized_header_is_refused_before_the_gate(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, max_header_size=1024)
    req = b"GET /a HTTP/1.1\r\nHost: h\r\nX-Big: " + b"x" * 4096 + b"\r\n\r\n"
    assert status_of(await raw_request(gk.port, req, timeout=3)) in (400, 431)
    long_target = b"GET /" + b"a" * 4096 + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    assert status_of(await raw_request(gk.port, long_target, timeout=3)) in (400, 414)
    assert upstream.seen == []


async def test_too_many_headers_are_refused(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, max_headers=20)
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(40))
    req = b"GET /a HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n"
    assert status_of(await raw_request(gk.port, req, timeout=3)) in (400, 431)
    assert upstream.seen == []
