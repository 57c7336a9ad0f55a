"""The usage ledger copied into the shared Redis store, for replicas.

Each replica (and each worker) writes its own hash-chained, fsync'd ledger file
(`gatekeeper.ledger.file`): that file stays the record of truth, so a Redis outage
loses nothing. `LedgerMirror` copies its complete lines, byte for byte, into one
Redis stream per file (`{prefix}ledger:{source}`, `source` naming the host and file),
in order, shortly after they are written; when Redis cannot be reached it keeps its
place and catches up from the file once Redis is back. On start it asks the stream
for the last copied seq and continues after it, so a restart neither skips nor
repeats a line.

Every copy is verifiable on its own: the lines carry the same chain as the file
(`verify_lines`), and `gatekeeper ledger export --from-store` aggregates every
replica's records from one place. The streams are the ledger, so they do not expire;
trimming them after an export is the operator's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import redis.asyncio
from redis.exceptions import RedisError

from gatekeeper.ledger.file import VerifyResult, verify_lines
from gatekeeper.ledger.record import UsageRecord, parse_line
from gatekeeper.observe import logging as gk_logging

STREAM: Final = "ledger:"
_BATCH: Final = 500
_log = gk_logging.get_logger("gatekeeper.ledger")


def source_name(path: Path) -> str:
    """This host and ledger file: stable across restarts, distinct across replicas
    (and across processes of one host, whose state directories differ)."""
    return f"{socket.gethostname()}:{path.resolve()}"


class LedgerMirror:
    def __init__(self, client: redis.asyncio.Redis, path: Path, *, prefix: str = "gk:",
                 source: str | None = None, interval: float = 0.5) -> None:
        self._client = client
        self._path = path
        self._key = f"{prefix}{STREAM}{source or source_name(path)}"
        self._interval = interval
        self._offset = 0  # bytes of the file copied (or found copied) so far
        self._copied_seq: int | None = None  # None: not yet asked of the stream
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    @property
    def key(self) -> str:
        return self._key

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Copy what is left (if Redis answers), then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await self.sync()

    async def sync(self) -> int:
        """Copy the file's complete lines not yet in the stream; how many were copied."""
        if self._copied_seq is None:
            # Rescan the file from its start: the stream may hold less than this process
            # copied (a Redis restarted without its data), and must stay one chain.
            self._copied_seq = await self._last_seq_in_stream()
            self._offset = 0
        copied = 0
        last = self._copied_seq
        batch: list[tuple[int, bytes]] = []
        for end, seq, line in self._new_lines():
            if seq <= self._copied_seq:
                self._offset = end
                continue
            batch.append((end, line))
            if len(batch) >= _BATCH:
                copied += await self._send(batch, seq)
                batch = []
            last = seq
        if batch:
            copied += await self._send(batch, last)
        return copied

    async def _send(self, batch: list[tuple[int, bytes]], seq: int) -> int:
        async with self._client.pipeline(transaction=True) as pipe:
            for _, line in batch:
                pipe.xadd(self._key, {"line": line})
            await pipe.execute()
        self._offset = batch[-1][0]
        self._copied_seq = seq
        return len(batch)

    def _new_lines(self) -> Iterator[tuple[int, int, bytes]]:
        """(offset after it, seq, line) for each complete line after `_offset`."""
        try:
            f = self._path.open("rb")
        except FileNotFoundError:
            return
        with f:
            f.seek(self._offset)
            position = self._offset
            for line in f:
                if not line.endswith(b"\n"):
                    return  # a write in progress
                position += len(line)
                yield position, parse_line(line).seq, line

    async def _last_seq_in_stream(self) -> int:
        last: Any = await self._client.xrevrange(self._key, count=1)
        if not last:
            return 0
        fields = last[0][1]
        line = fields.get(b"line", fields.get("line"))
        return parse_line(line if isinstance(line, bytes) else str(line).encode()).seq

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
            except (RedisError, OSError, TimeoutError) as exc:
                # The file keeps every record; the copy catches up when Redis is back.
                self.failures += 1
                self._copied_seq = None
                _log.warning("ledger_mirror_behind", stream=self._key, error=str(exc))
            await asyncio.sleep(self._interval)


async def streams(client: redis.asyncio.Redis, prefix: str = "gk:") -> list[str]:
    keys = [key.decode() if isinstance(key, bytes) else str(key)
            async for key in client.scan_iter(match=f"{prefix}{STREAM}*")]
    return sorted(keys)


async def stream_lines(client: redis.asyncio.Redis, key: str) -> list[bytes]:
    out: list[bytes] = []
    start = "-"
    while True:
        entries: Any = await client.xrange(key, min=start, count=1000)
        for entry_id, fields in entries:
            line = fields.get(b"line", fields.get("line"))
            out.append(line if isinstance(line, bytes) else str(line).encode())
            start = "(" + (entry_id.decode() if isinstance(entry_id, bytes) else entry_id)
        if len(entries) < 1000:
            return out


async def read_store(client: redis.asyncio.Redis, prefix: str = "gk:",
                     since: float | None = None,
                     until: float | None = None) -> list[UsageRecord]:
    """Every replica's records from the store, with `since <= time < until`."""
    records: list[UsageRecord] = []
    for key in await streams(client, prefix):
        for line in await stream_lines(client, key):
            record = parse_line(line).record
            if (since is None or record.time >= since) and (until is None or record.time < until):
                records.append(record)
    return records


async def verify_store(client: redis.asyncio.Redis,
                       prefix: str = "gk:") -> dict[str, VerifyResult]:
    return {key: verify_lines(await stream_lines(client, key))
            for key in await streams(client, prefix)}

