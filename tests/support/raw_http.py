"""A client that sends bytes exactly as given, from a chosen 127.x source address,
and reads back what the gate answered.

Distinct loopback sources stand for distinct clients (Linux routes all of
127.0.0.0/8 to lo), so per-client state such as rate limits and behaviour scores
can be exercised from one test process.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

PUBLIC = "127.0.0.2"  # an ordinary client; .2 to .9 are public clients
TRUSTED_PROXY = "127.0.0.10"  # the only configured trusted proxy
CRAWLER_RANGE = "127.0.1.0/24"  # the harness's published GPTBot range
IN_RANGE = "127.0.1.7"


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool  # framed body fully received

    def header(self, name: str) -> str | None:
        key = name.lower()
        values = [v for k, v in self.headers if k.lower() == key]
        return ", ".join(values) if values else None


@dataclass
class Reply:
    raw: bytes
    closed: bool  # the gate closed the connection (FIN or reset)
    reset: bool
    elapsed: float
    responses: list[Response] = field(default_factory=list)

    @property
    def status(self) -> int:
        return self.responses[0].status if self.responses else 0

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


async def exchange(port: int, data: bytes | list[bytes], *, source: str = PUBLIC,
                   timeout: float = 3.0, pause: float = 0.0, head: bool = False) -> Reply:
    """Send `data` (a list: written piece by piece, `pause` apart) and read until the
    gate closes or `timeout` passes."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    pieces = data if isinstance(data, list) else [data]
    chunks: list[bytes] = []
    closed = was_reset = False
    try:
        for i, piece in enumerate(pieces):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(piece)
            await writer.drain()
    except ConnectionError:
        closed = was_reset = True
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    closed = True
                    break
                chunks.append(chunk)
    except TimeoutError:
        pass
    except ConnectionError:
        closed = was_reset = True
    writer.transport.abort()
    raw = b"".join(chunks)
    return Reply(raw, closed, was_reset, time.monotonic() - started,
                 parse_responses(raw, head=head))


def request(method: str, target: str, headers: dict[str, str] | list[tuple[str, str]] = (),  # type: ignore[assignment]
            body: bytes = b"", *, host: str = "t", version: str = "HTTP/1.1") -> bytes:
    """A well-formed request; `Content-Length` is added when a body is given."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    lines = [f"{method} {target} {version}", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in items]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in items):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?\r\n")


def parse_responses(raw: bytes, *, head: bool = False) -> list[Response]:
    """Split what one connection received into responses, framing each body."""
    out: list[Response] = []
    pos = 0
    while pos < len(raw):
        match = _STATUS.match(raw, pos)
        end = raw.find(b"\r\n\r\n", pos)
        if match is None or end < 0:
            break
        headers = []
        for line in raw[match.end():end].split(b"\r\n"):
            if line:
                name, _, value = line.partition(b":")
                headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        status = int(match.group(1))
        pos = end + 4
        names = {k.lower(): v for k, v in headers}
        if head or status in (204, 304) or 100 <= status < 200:
            body, complete = b"", True
        elif names.get("transfer-encoding", "").lower() == "chunked":
            body, pos, complete = _dechunk(raw, pos)
        elif "content-length" in names:
            size = int(names["content-length"])
            body = raw[pos:pos + size]
            complete = len(body) == size
            pos += size
        else:
            body, complete, pos = raw[pos:], True, len(raw)
        out.append(Response(status, (match.group(2) or b"").decode("latin-1"), headers, body,
                            complete))
    return out


def _dechunk(raw: bytes, pos: int) -> tuple[bytes, int, bool]:
    body = bytearray()
    while True:
        end = raw.find(b"\r\n", pos)
        if end < 0:
            return bytes(body), len(raw), False
        size = int(raw[pos:end].split(b";")[0], 16)
        pos = end + 2
        if size == 0:
            trailer_end = raw.find(b"\r\n\r\n", pos - 2)
            if trailer_end < 0:
                return bytes(body), len(raw), False
            return bytes(body), trailer_end + 4, True
        if pos + size + 2 > len(raw):
            body += raw[pos:pos + size]
            return bytes(body), len(raw), False
        body += raw[pos:pos + size]
        pos += size + 2
