"""WebSocket pass-through: connect upstream first, then accept the client and
relay frames both ways until either side closes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL


async def pump_websocket(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: URL,
    headers: CIMultiDict[str],
    protocols: Sequence[str],
    connect_timeout: float,
) -> web.WebSocketResponse:
    # Connecting upstream before accepting means a dead upstream is still a 502, not
    # an accepted socket that closes at once.
    # Only the opening handshake is time-boxed; an open socket may idle as long as it likes.
    async with asyncio.timeout(connect_timeout):
        upstream = await session.ws_connect(
            url, headers=headers, protocols=tuple(protocols), autoping=False, autoclose=False,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0), max_msg_size=0,
        )
    try:
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            autoping=False, autoclose=False, max_msg_size=0,
        )
        await client.prepare(request)
        to_up = asyncio.create_task(_relay(client, upstream))
        to_client = asyncio.create_task(_relay(upstream, client))
        _done, pending = await asyncio.wait({to_up, to_client}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if not client.closed:
            await client.close()
        return client
    finally:
        await upstream.close()


async def _relay(
    src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    while True:
        msg = await src.receive()
        if msg.type is WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type is WSMsgType.PING:
            await dst.ping(msg.data)
        elif msg.type is WSMsgType.PONG:
            await dst.pong(msg.data)
        elif msg.type is WSMsgType.CLOSE:
            extra = msg.extra.encode() if isinstance(msg.extra, str) else b""
            await dst.close(code=msg.data or aiohttp.WSCloseCode.OK, message=extra)
            return
        else:  # CLOSING, CLOSED, ERROR
            if not dst.closed:
                await dst.close()
            return
