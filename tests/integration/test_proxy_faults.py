"""Upstream faults and limits: a clear status, never a hang, and nothing half-sent
that looks complete."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import pytest

from tests.integration.conftest import MiB, StartGate, Upstream, raw_request, status_of


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_upstream_refusing_connections_gives_502(start_gatekeeper: StartGate) -> None:
    gk = await start_gatekeeper(f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    async with aiohttp.ClientSession() as s, s.get(gk.url + "/a") as r:
        assert r.status == 502
        assert (await r.json())["error"] == "refused"
    assert time.monotonic() - started < 3
    value = gk.components.registry.get_sample_value
    assert value("gatekeeper_upstream_errors_total", {"kind": "refused"}) == 1


async def test_upstream_too_slow_gives_504_within_the_read_timeout(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, upstream_read_timeout=0.5)
    started = time.monotonic()
    async with aiohttp.ClientSession() as s, s.get(gk.url + "/slow?s=5") as r:
        assert r.status == 504
    assert time.monotonic() - started < 3


async def test_upstream_that_accepts_and_never_answers_gives_504(
    start_gatekeeper: StartGate,
) -> None:
    # A listening socket that never reads or answers: the upstream is "up" and silent.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        gk = await start_gatekeeper(f"http://127.0.0.1:{silent.getsockname()[1]}",
                                    upstream_read_timeout=0.5)
        async with aiohttp.ClientSession() as s, s.get(gk.url + "/a") as r:
            assert r.status == 504
    finally:
        silent.close()


async def test_upstream_reset_mid_body_truncates_the_client_response(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    async with aiohttp.ClientSession() as s, s.get(gk.url + "/reset") as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


async def test_streamed_body_over_the_limit_gets_413_and_upstream_no_complete_request(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, max_body_size=1 * MiB)

    async def body():  # type: ignore[no-untyped-def]
        for _ in range(4):
            yield b"z" * (512 * 1024)

    async with aiohttp.ClientSession() as s, s.post(gk.url + "/up", data=body()) as r:
        assert r.status == 413
    assert all(seen.body_len <= 1 * MiB for seen in upstream.seen)
    value = gk.components.registry.get_sample_value
    assert value("gatekeeper_requests_total", {
        "crawler": "other-bot", "purpose": "other-bot", "identity": "unknown",
        "action": "allow", "reason": "allowed"}) == 1


async def test_declared_body_over_the_limit_gets_413_before_connecting(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, max_body_size=1000)
    req = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
    assert status_of(await raw_request(gk.port, req)) == 413
    assert upstream.seen == []


async def test_client_stalling_its_body_gets_408(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, client_body_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", gk.port)
    writer.write(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nonly-part")
    await writer.drain()
    async with asyncio.timeout(5):
        response = await reader.read(4096)
    writer.close()
    assert status_of(response) == 408


async def test_websocket_upgrade_is_relayed_both_ways(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    async with aiohttp.ClientSession() as s, s.ws_connect(
        gk.url + "/ws", protocols=("chat",)
    ) as ws:
        assert ws.protocol == "chat"
        await ws.send_str("hi")
        assert (await ws.receive_str()) == "echo:hi"
        await ws.send_bytes(b"abc")
        assert (await ws.receive_bytes()) == b"cba"
    assert upstream.paths() == ["/ws"]


async def test_websocket_of_a_blocked_crawler_is_refused(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(gk.url + "/ws", headers={"User-Agent": "GPTBot/1.2"})
    assert err.value.status == 403
    assert upstream.seen == []
