"""The proxy listener as a process of its own: signals, draining, exit status."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import Upstream, wait_until

ROOT = Path(__file__).resolve().parents[2]


class Child:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc, self.port = proc, port
        self.url = f"http://127.0.0.1:{port}"

    async def line(self) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(5):
            return (await self.proc.stdout.readline()).decode().strip()


@pytest.fixture
async def child(upstream: Upstream) -> AsyncIterator[Child]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.serve_child", upstream.url, "5",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(15):
        first = (await proc.stdout.readline()).decode().split()
    assert first[:1] == ["LISTENING"], first
    yield Child(proc, int(first[1]))
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def test_sighup_calls_the_reload_callback_and_keeps_serving(
    upstream: Upstream, child: Child
) -> None:
    child.proc.send_signal(signal.SIGHUP)
    assert await child.line() == "RELOAD"
    async with aiohttp.ClientSession() as s, s.get(child.url + "/a") as r:
        assert r.status == 200


async def test_sigterm_drains_in_flight_requests_closes_websockets_and_exits_zero(
    upstream: Upstream, child: Child
) -> None:
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(child.url + "/ws")
        in_flight = asyncio.ensure_future(s.get(child.url + "/slow?s=1"))
        await wait_until(lambda: "/slow?s=1" in upstream.paths())
        child.proc.send_signal(signal.SIGTERM)

        # The tunnel is told the gate is going away...
        msg = await asyncio.wait_for(ws.receive(), 3)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.GOING_AWAY
        await ws.close()
        # ...new connections are refused...
        await asyncio.sleep(0.1)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", child.port), 0.5).close()
        # ...and the request in flight is answered in full.
        resp = await in_flight
        assert resp.status == 200
        assert await resp.text() == "late"
    assert await asyncio.wait_for(child.proc.wait(), 10) == 0
    assert child.proc.stderr is not None
    log = [json.loads(line) for line in (await child.proc.stderr.read()).splitlines()
           if line.startswith(b"{")]
    assert {e.get("event") for e in log} >= {"event_loop", "request"}
