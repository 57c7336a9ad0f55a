"""Upstream faults and limits: a clear status, never a hang, and nothing half-sent
that looks complete."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import aiohttp
import pytest

from tests.integration.conftest import (
    MiB,
    RawUpstream,
    StartGate,
    StartRaw,
    Upstream,
    raw_request,
    read_head,
    status_of,
    wait_until,
)


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


async def test_client_trickling_its_body_below_the_minimum_rate_gets_408(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    # Each byte comes well inside the idle timeout; the average rate is what fails.
    gk = await start_gatekeeper(upstream.url, client_body_timeout=0.3,
                                client_body_min_rate=100)
    reader, writer = await asyncio.open_connection("127.0.0.1", gk.port)
    writer.write(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n")
    started = asyncio.get_running_loop().time()

    async def trickle() -> None:
        for _ in range(100):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.1)

    sender = asyncio.create_task(trickle())
    async with asyncio.timeout(5):
        response = await reader.read(4096)
    sender.cancel()
    writer.close()
    assert status_of(response) == 408
    assert asyncio.get_running_loop().time() - started < 3
    assert not any(s.body_len == 100 for s in upstream.seen)


async def test_client_that_stops_reading_a_large_response_is_cut_at_the_send_timeout(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, client_send_timeout=0.5)
    _, writer = await asyncio.open_connection("127.0.0.1", gk.port)
    writer.write(b"GET /big?mib=64 HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8\r\n\r\n")
    await writer.drain()
    # Reads nothing: the kernel's buffers fill, then the gate's, then it gives up.
    await wait_until(lambda: len(gk.observer.observed) == 1, timeout=10)
    assert gk.observer.observed[0].upstream_error == "client_timeout"
    assert gk.observer.observed[0].bytes_sent < 64 * MiB
    writer.close()


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


async def _answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       state: RawUpstream) -> None:
    await read_head(reader, state)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()


async def test_upstream_closing_before_answering_gives_502(
    raw_upstream: StartRaw, start_gatekeeper: StartGate
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      state: RawUpstream) -> None:
        await read_head(reader, state)

    up = await raw_upstream(hang_up)
    # A scripted upstream: no robots.txt fetches in its transcript.
    gk = await start_gatekeeper(up.url, robots_compliance=False)
    async with aiohttp.ClientSession() as s:
        async with s.post(gk.url + "/a", data=b"body") as r:
            assert r.status == 502
            assert await r.json() == {"error": "reset", "status": 502}
        # A POST is never sent twice; a GET may be, once, and then fails the same way.
        assert up.connections == 1
        async with s.get(gk.url + "/a") as r:
            assert r.status == 502
        assert up.connections == 3


async def test_invalid_upstream_response_gives_502(
    raw_upstream: StartRaw, start_gatekeeper: StartGate
) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      state: RawUpstream) -> None:
        await read_head(reader, state)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    up = await raw_upstream(garbage)
    # A scripted upstream: no robots.txt fetches in its transcript.
    gk = await start_gatekeeper(up.url, robots_compliance=False)
    async with aiohttp.ClientSession() as s, s.get(gk.url + "/a") as r:
        assert r.status == 502
        assert (await r.json())["error"] == "protocol"


async def test_upstream_switching_protocols_on_a_plain_request_gives_502(
    raw_upstream: StartRaw, start_gatekeeper: StartGate
) -> None:
    async def switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     state: RawUpstream) -> None:
        await read_head(reader, state)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n"
                     b"Connection: Upgrade\r\n\r\nraw bytes that must not reach the client")
        await writer.drain()
        await asyncio.sleep(0.5)

    up = await raw_upstream(switch)
    # A scripted upstream: no robots.txt fetches in its transcript.
    gk = await start_gatekeeper(up.url, robots_compliance=False)
    req = b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    response = await raw_request(gk.port, req, timeout=2)
    assert status_of(response) == 502
    assert b"raw bytes" not in response


async def test_stale_pooled_connection_is_retried_once_for_a_get(
    raw_upstream: StartRaw, start_gatekeeper: StartGate
) -> None:
    async def keep_alive_then_hang_up(reader: asyncio.StreamReader,
                                      writer: asyncio.StreamWriter, state: RawUpstream) -> None:
        await _answer_once(reader, writer, state)
        if state.connections == 1:
            # The way an upstream's idle timeout races a reused connection: the
            # next request arrives and the connection closes without an answer.
            await read_head(reader, state)

    up = await raw_upstream(keep_alive_then_hang_up)
    # A scripted upstream: no robots.txt fetches in its transcript.
    gk = await start_gatekeeper(up.url, robots_compliance=False)
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.get(gk.url + "/a") as r:
                assert r.status == 200
                assert await r.read() == b"ok"
    assert up.connections == 2
    assert len(up.requests) == 3
    assert [o.upstream_error for o in gk.observer.observed] == [None, None]


async def test_upstream_that_does_not_accept_in_time_gives_504(
    start_gatekeeper: StartGate,
) -> None:
    # A listener whose accept queue is full: the kernel leaves further SYNs
    # unanswered, as a host that is down or firewalled would.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(full.getsockname())
        fillers.append(filler)
    try:
        gk = await start_gatekeeper(f"http://127.0.0.1:{full.getsockname()[1]}",
                                    upstream_connect_timeout=0.3)
        started = time.monotonic()
        async with aiohttp.ClientSession() as s, s.get(gk.url + "/a") as r:
            assert r.status == 504
            assert await r.json() == {"error": "timeout", "status": 504}
        assert time.monotonic() - started < 2
    finally:
        for sock in (*fillers, full):
            sock.close()


async def test_upstream_reset_mid_chunked_body_never_ends_cleanly(
    raw_upstream: StartRaw, start_gatekeeper: StartGate
) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    state: RawUpstream) -> None:
        await read_head(reader, state)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()

    up = await raw_upstream(reset)
    # A scripted upstream: no robots.txt fetches in its transcript.
    gk = await start_gatekeeper(up.url, robots_compliance=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", gk.port)
    writer.write(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")  # keep-alive: only a cut ends it
    async with asyncio.timeout(3):
        response = await _read_until_closed(reader)
    writer.close()
    assert status_of(response) == 200
    assert b"hello" in response
    assert not response.endswith(b"0\r\n\r\n")
    assert gk.observer.observed[0].upstream_error == "reset"


async def test_client_closing_mid_response_is_recorded_as_its_disconnect(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", gk.port)
    writer.write(b"GET /big?mib=50 HTTP/1.1\r\nHost: h\r\n\r\n")
    await reader.readexactly(256 * 1024)
    writer.transport.abort()
    await wait_until(lambda: len(gk.observer.observed) == 1)
    obs = gk.observer.observed[0]
    assert obs.upstream_error == "client_disconnect"
    assert obs.bytes_sent < 50 * MiB
    value = gk.components.registry.get_sample_value
    assert value("gatekeeper_upstream_errors_total", {"kind": "reset"}) in (None, 0)


async def test_websocket_close_code_is_relayed(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    async with aiohttp.ClientSession() as s, s.ws_connect(gk.url + "/ws") as ws:
        await ws.send_str("close:4001")
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (4001, "asked to")
    await wait_until(lambda: len(gk.observer.observed) == 1)
    assert gk.observer.observed[0].status == 101


async def test_websocket_upgrade_the_upstream_refuses_is_never_tunnelled(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(gk.url + "/not-a-websocket")
    assert err.value.status == 502
    assert upstream.paths() == ["/not-a-websocket"]


async def test_malformed_websocket_handshake_gets_400_and_upstream_sees_nothing(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    req = (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")
    assert status_of(await raw_request(gk.port, req)) == 400
    assert upstream.seen == []
    assert gk.observer.refused == [("bad_websocket_handshake", 400)]


async def _read_until_closed(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while chunk := await reader.read(65536):
        chunks.append(chunk)
    return b"".join(chunks)
