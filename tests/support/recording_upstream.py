"""An upstream on a plain asyncio socket that logs the exact bytes it receives.

The black-box suite asserts on what reached the origin, byte for byte: nothing, or
exactly one well-framed request matching what the gate decided on. An HTTP server
library would normalise or reject what we need to see, so requests are framed here
by hand, strictly (RFC 9112 §6): one `Content-Length` of plain digits, or
`Transfer-Encoding: chunked` alone, never both. Anything else is recorded as
`malformed` and the connection is closed.

Responses are scripted per path prefix (`routes`); the default answers 200 with a
small JSON body describing the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.loopback_server import LoopbackServer

ROBOTS_CHECK_UA = "Gatekeeper-robots-check"
MAX_HEAD = 256 * 1024
_DIGITS = re.compile(rb"[0-9]+")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(;[^\r\n]*)?")


@dataclass
class Received:
    """One request as the upstream framed it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    framing: str  # "none", "content-length" or "chunked"
    complete: bool  # the whole body arrived (for chunked: the last chunk and trailers)
    at: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return ", ".join(values) if values else None

    def all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for k, v in self.headers if k.lower() == key]

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def internal(self) -> bool:
        """Gatekeeper's own fetch of the origin's robots.txt, not a client's request."""
        return self.header("User-Agent") == ROBOTS_CHECK_UA


@dataclass
class Connection:
    peer: tuple[str, int]
    raw: bytearray = field(default_factory=bytearray)
    requests: list[Received] = field(default_factory=list)
    malformed: str = ""  # why framing failed, if it did
    closed: bool = False


Handler = Callable[[Received, asyncio.StreamWriter, "RecordingUpstream"], Awaitable[bool]]
"""Writes a response; returns False to close the connection afterwards."""


class _Recorder:
    """Wraps the connection's reader so every byte read is logged."""

    def __init__(self, reader: asyncio.StreamReader, conn: Connection) -> None:
        self.reader, self.conn = reader, conn

    async def readuntil(self, sep: bytes, limit: int) -> bytes:
        try:
            data = await self.reader.readuntil(sep)
        except asyncio.LimitOverrunError as exc:
            raise ValueError("line too long") from exc
        except asyncio.IncompleteReadError as exc:
            self.conn.raw += exc.partial
            raise
        self.conn.raw += data
        if len(data) > limit:
            raise ValueError("line too long")
        return data

    async def readexactly(self, n: int) -> bytes:
        # Piece by piece, so `raw` grows as a body arrives: a test can see the
        # first bytes of a large body reach the upstream while the client is
        # still sending the rest (streaming, not buffering).
        data = bytearray()
        while len(data) < n:
            piece = await self.reader.read(min(n - len(data), 256 * 1024))
            if not piece:
                raise asyncio.IncompleteReadError(bytes(data), n)
            self.conn.raw += piece
            data += piece
        return bytes(data)


class RecordingUpstream(LoopbackServer):
    def __init__(self, robots_txt: str = "User-agent: *\nDisallow: /private/\n") -> None:
        super().__init__()
        self.robots_txt = robots_txt
        self.connections: list[Connection] = []
        self.routes: dict[str, Handler] = {}

    async def start(self, **options: Any) -> None:
        await super().start(limit=MAX_HEAD, **options)

    # -- what the tests read -------------------------------------------------------------

    def requests(self) -> list[Received]:
        """Every client request received so far (Gatekeeper's robots.txt fetches left out)."""
        return [r for c in self.connections for r in c.requests if not r.internal]

    def client_bytes(self) -> bytes:
        """All bytes received on connections that carried no internal fetch only."""
        return b"".join(bytes(c.raw) for c in self.connections
                        if not (c.requests and all(r.internal for r in c.requests)))

    def malformed(self) -> list[str]:
        return [c.malformed for c in self.connections if c.malformed]

    def clear(self) -> None:
        self.connections = [c for c in self.connections if not c.closed]
        for c in self.connections:
            c.raw.clear()
            c.requests.clear()

    # -- serving -------------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        conn = Connection(writer.get_extra_info("peername")[:2])
        self.connections.append(conn)
        rec = _Recorder(reader, conn)
        try:
            while True:
                try:
                    request = await self._read_request(rec, conn)
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                if request is None:
                    break
                conn.requests.append(request)
                if not await self._answer(request, writer):
                    break
        except asyncio.CancelledError:
            pass
        finally:
            conn.closed = True
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_request(self, rec: _Recorder, conn: Connection) -> Received | None:
        try:
            head = await rec.readuntil(b"\r\n\r\n", MAX_HEAD)
        except ValueError:
            conn.malformed = "head too long"
            return None
        lines = head[:-4].split(b"\r\n")
        try:
            method, target, version = lines[0].decode("ascii").split(" ")
        except ValueError:
            conn.malformed = f"request line {lines[0]!r}"
            return None
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip() or b"\n" in line or b"\r" in line:
                conn.malformed = f"field line {line!r}"
                return None
            headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        names = [k.lower() for k, _ in headers]
        te = [v for k, v in headers if k.lower() == "transfer-encoding"]
        cl = [v for k, v in headers if k.lower() == "content-length"]
        if te and cl:
            conn.malformed = "both Content-Length and Transfer-Encoding"
            return None
        if names.count("host") != 1:
            conn.malformed = f"{names.count('host')} Host fields"
            return None
        if te:
            if len(te) != 1 or te[0].lower() != "chunked":
                conn.malformed = f"Transfer-Encoding {te!r}"
                return None
            body, complete = await self._read_chunked(rec, conn)
            framing = "chunked"
        elif cl:
            if len(cl) != 1 or not _DIGITS.fullmatch(cl[0].encode()):
                conn.malformed = f"Content-Length {cl!r}"
                return None
            try:
                body = await rec.readexactly(int(cl[0]))
                complete = True
            except asyncio.IncompleteReadError as exc:
                body, complete = exc.partial, False
            framing = "content-length"
        else:
            body, complete, framing = b"", True, "none"
        received = Received(method, target, version, headers, body, framing, complete)
        if not complete:
            conn.requests.append(received)
            return None
        return received

    async def _read_chunked(self, rec: _Recorder, conn: Connection) -> tuple[bytes, bool]:
        body = bytearray()
        try:
            while True:
                line = await rec.readuntil(b"\r\n", 1024)
                match = _CHUNK_LINE.fullmatch(line[:-2])
                if match is None:
                    conn.malformed = f"chunk line {line!r}"
                    return bytes(body), False
                size = int(match.group(1), 16)
                if size == 0:
                    while await rec.readuntil(b"\r\n", 8192) != b"\r\n":
                        pass  # trailer fields
                    return bytes(body), True
                body += await rec.readexactly(size)
                if await rec.readexactly(2) != b"\r\n":
                    conn.malformed = "chunk data longer than its size"
                    return bytes(body), False
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return bytes(body), False

    async def _answer(self, request: Received, writer: asyncio.StreamWriter) -> bool:
        if request.internal:
            await respond(writer, 200, self.robots_txt.encode(), [("Content-Type", "text/plain")])
            return True
        for prefix in sorted(self.routes, key=len, reverse=True):
            if request.path.startswith(prefix):
                return await self.routes[prefix](request, writer, self)
        doc = {"method": request.method, "target": request.target,
               "body_sha256": hashlib.sha256(request.body).hexdigest(),
               "body_len": len(request.body)}
        await respond(writer, 200, json.dumps(doc).encode(),
                      [("Content-Type", "application/json")],
                      head_only=request.method == "HEAD")
        return True


async def respond(writer: asyncio.StreamWriter, status: int, body: bytes,
                  headers: list[tuple[str, str]] = (), *,  # type: ignore[assignment]
                  reason: str = "OK", head_only: bool = False) -> None:
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers)]
    if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    writer.write(head if head_only or status in (204, 304) else head + body)
    await writer.drain()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0) instead of a clean FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
