"""The usage ledger copied into the shared Redis store, for replicas.

Each replica (and each worker) writes its own hash-chained, fsync'd ledger file
(`gatekeeper.ledger.file`): that file stays the record of truth, so a Redis outage
loses nothing. `LedgerMirror` copies its complete lines, byte for byte, into one
Redis stream per file (`{prefix}ledger:{source}`, `source` naming the replica and
file), in order, shortly after they are written; when Redis cannot be reached it
keeps its place and catches up from the file once Redis is back. On start it asks
the stream for the last copied record and continues after it, so a restart neither
skips nor repeats a line.

Every copy is verifiable on its own: the lines carry the same chain as the file
(`verify_lines`), and `gatekeeper ledger export --from-store` aggregates every
replica's records from one place. The streams are the ledger, so they neither
expire nor have a length cap: they shrink only when `ledger export --from-store
--trim` has written an export, which trims each stream up to its last exported
record (`trim`). The (seq, hash) of that record is kept as the stream's trim
anchor (`{prefix}ledger-anchor:{source}`), where the rest of the chain continues:
`verify_store` checks the remaining lines from there, and a mirror whose stream was
trimmed empty continues after it.

A stream belongs to one chain. A replica whose name is kept (`replica_name`, a
StatefulSet's hostname) but whose ledger file was lost starts a new chain under an
old name; its copy then goes to a stream of its own, `{source}~{first hash}`,
rather than being mixed into (or skipped against) the old one.

Replicas come and go (every pod of a Deployment has a new name), so the streams of
gone ones must not stay for ever. A running mirror keeps a short-lived liveness key
per stream (`{prefix}ledger-live:{source}`); the trimming export removes a stream
that it emptied, with its anchor, once that key has expired (`remove_gone`). A
replica that comes back under its name after that must neither copy its exported
records again nor skip any: it keeps a note next to its file of the last record it
copied (`<file>.mirror`) and the store's epoch (`{prefix}ledger-epoch`, made anew
whenever Redis lost its data), and continues after that record when the store
still has its data but no longer its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import redis.asyncio
from redis.exceptions import RedisError

from gatekeeper.files import write_atomically
from gatekeeper.ledger.file import VerifyResult, verify_lines
from gatekeeper.ledger.record import ChainedRecord, LedgerError, UsageRecord, parse_line
from gatekeeper.observe import logging as gk_logging

STREAM: Final = "ledger:"
ANCHOR: Final = "ledger-anchor:"
LIVE: Final = "ledger-live:"
EPOCH: Final = "ledger-epoch"
# The shortest a liveness key lives. Generous on purpose: a lapse while the replica
# still runs (a long pause, a network partition) only lets its emptied stream be
# removed early, which the mirror notices and repairs; a dead replica's stream waits
# at most this long more.
LIVE_FOR: Final = 30.0
_BATCH: Final = 500
_CHAIN_ID: Final = 16  # hex digits of the first record's hash naming a new chain's stream
_ATTEMPTS: Final = 3  # resumptions in one sync before the stream is deemed contested
_log = gk_logging.get_logger("gatekeeper.ledger")

# Trim a stream through one exported entry and move its anchor there, atomically.
# Nothing happens unless that entry still holds the line that was exported (the
# stream was not rebuilt meanwhile) and the anchor is not already further on (a
# concurrent export trimmed more). XTRIM MINID keeps entries from ARGV[5], the id
# right after the exported one, so lines copied since the export stay.
_TRIM = """
local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entry == 0 then return -1 end
local fields, line = entry[1][2], nil
for i = 1, #fields, 2 do
  if fields[i] == 'line' then line = fields[i + 1] end
end
if line ~= ARGV[4] then return -1 end
local known = redis.call('HGET', KEYS[2], 'seq')
if known and tonumber(known) >= tonumber(ARGV[2]) then return -2 end
redis.call('HSET', KEYS[2], 'seq', ARGV[2], 'hash', ARGV[3])
return redis.call('XTRIM', KEYS[1], 'MINID', ARGV[5])
"""

# Append lines to a stream only where this mirror left it: the store still has the
# epoch the mirror resumed under (it did not lose its data since), and the stream
# still ends with the line copied last (ARGV[2]) or, trimmed empty, its anchor holds
# that line's hash (ARGV[3]; '' with no anchor, for a stream not yet begun). Anything
# else (a stream removed as a gone replica's, rebuilt, or written by someone else)
# returns -1, and the mirror works out where it stands again.
_APPEND = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return -1 end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  local fields, line = last[1][2], nil
  for i = 1, #fields, 2 do
    if fields[i] == 'line' then line = fields[i + 1] end
  end
  if line ~= ARGV[2] then return -1 end
elseif (redis.call('HGET', KEYS[2], 'hash') or '') ~= ARGV[3] then
  return -1
end
for i = 4, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'line', ARGV[i])
end
return #ARGV - 3
"""

# The store's epoch: the one there, or ARGV[1] as the new one.
_EPOCH = """
local epoch = redis.call('GET', KEYS[1])
if epoch then return epoch end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""

# Anchor a removed stream again where its returning replica continues, unless the
# stream or its anchor came back meanwhile.
_REANCHOR = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('HSET', KEYS[2], 'seq', ARGV[1], 'hash', ARGV[2])
return 1
"""

# Remove a gone replica's stream and anchor: only when nothing in the stream is left
# to export and no mirror has kept it alive, checked in the same step as the removal,
# so a replica that comes back (its liveness key is the first thing it writes) or a
# line copied meanwhile keeps both.
_REMOVE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('XLEN', KEYS[1]) > 0 then return 0 end
return redis.call('DEL', KEYS[1], KEYS[2])
"""


class LedgerMirrorConflict(LedgerError):
    """The stream this ledger file would be copied into holds another chain."""


class TrimRefused(LedgerError):
    """A stream changed between its export and its trim; nothing was trimmed."""


class _StreamMoved(Exception):
    """The stream is not where this mirror left it; `copied` lines went in before."""

    def __init__(self, copied: int) -> None:
        super().__init__(copied)
        self.copied = copied


def source_name(path: Path, replica: str = "") -> str:
    """This replica and ledger file: stable across restarts, distinct across replicas
    (and across processes of one host, whose state directories differ). The replica
    is `replica` when given (the `replica_name` setting), else the hostname."""
    return f"{replica or socket.gethostname()}:{path.resolve()}"


def _sibling(key: str, prefix: str, kind: str) -> str:
    if not key.startswith(prefix + STREAM):
        raise LedgerError(f"{key!r} is not a ledger stream under prefix {prefix!r}")
    return prefix + kind + key[len(prefix + STREAM):]


def anchor_key(key: str, prefix: str = "gk:") -> str:
    """The trim anchor of stream `key`: a hash with the `seq` and `hash` of the last
    record trimmed from it."""
    return _sibling(key, prefix, ANCHOR)


def live_key(key: str, prefix: str = "gk:") -> str:
    """The liveness key of stream `key`: present while a mirror copies into it."""
    return _sibling(key, prefix, LIVE)


def mark_path(path: Path) -> Path:
    """Where the mirror of ledger file `path` notes the last record it copied."""
    return path.with_name(path.name + ".mirror")


@dataclass(frozen=True, slots=True)
class _Mark:
    """The stream a file was last copied into, under which store epoch, through which
    record (seq 0 and hash '': none yet), and the last record of a batch being sent,
    if any: whether that batch arrived is unknown until the next note."""

    stream: str
    epoch: str
    seq: int
    hash: str
    sending: tuple[int, str] | None = None


def _read_mark(path: Path) -> _Mark | None:
    try:
        raw = json.loads(mark_path(path).read_bytes())
        sending = raw.get("sending")
        return _Mark(str(raw["stream"]), str(raw["epoch"]), int(raw["seq"]),
                     str(raw["hash"]),
                     (int(sending[0]), str(sending[1])) if sending else None)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        # Without the note a removed stream is copied again from the file's start:
        # say so rather than guess.
        _log.error("ledger_mirror_mark_unreadable", path=str(mark_path(path)), error=str(exc))
        return None


def _write_mark(path: Path, mark: _Mark) -> None:
    # Written whole and synced (a temporary file renamed over it): after a crash the
    # note is the last one written, never half of one.
    data = json.dumps({"stream": mark.stream, "epoch": mark.epoch, "seq": mark.seq,
                       "hash": mark.hash,
                       "sending": list(mark.sending) if mark.sending else None})
    write_atomically(mark_path(path), data.encode(), 0o640)


class LedgerMirror:
    def __init__(self, client: redis.asyncio.Redis, path: Path, *, prefix: str = "gk:",
                 source: str | None = None, replica: str = "",
                 interval: float = 0.5, live_for: float | None = None) -> None:
        self._client = client
        self._path = path
        self._prefix = prefix
        self._base = f"{prefix}{STREAM}{source or source_name(path, replica)}"
        self._key = self._base
        self._interval = interval
        self._live_ms = round(1000 * (live_for if live_for is not None
                                      else max(LIVE_FOR, 4 * interval)))
        self._offset = 0  # bytes of the file copied (or found copied) so far
        self._copied_seq: int | None = None  # None: not yet asked of the stream
        self._copied_hash = ""  # of record _copied_seq ('' before the first)
        self._copied_line = b""  # the stream's last line, b"" when not known
        self._epoch = ""
        self._mark: _Mark | None = None  # as last written (or read at start)
        self._mark_read = False
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    @property
    def key(self) -> str:
        """The stream this file is copied into (known for sure after the first sync)."""
        return self._key

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Copy what is left (if Redis answers), then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError, TimeoutError, LedgerMirrorConflict):
            await self.sync()

    async def sync(self) -> int:
        """Copy the file's complete lines not yet in the stream; how many were copied.

        Raises `LedgerMirrorConflict` when neither this file's stream nor its
        new-chain stream continues this file's chain (someone rewrote them), or when
        the stream keeps changing under this mirror (another process copies into it).
        """
        if not self._mark_read:
            self._start_from_mark()
        copied = 0
        for _ in range(_ATTEMPTS):
            try:
                return copied + await self._copy()
            except _StreamMoved as moved:
                copied += moved.copied
                self._copied_seq = None
        raise LedgerMirrorConflict(
            f"the ledger copy {self._key} changed under its mirror {_ATTEMPTS} times in a "
            f"row: does another process copy into it? Give each its own replica_name")

    def _start_from_mark(self) -> None:
        # A file whose chain went to a stream of its own (`~`) goes on there, even
        # when the stream under its name is gone and so cannot send it there again.
        self._mark_read = True
        self._mark = _read_mark(self._path)
        mark = self._mark
        if (mark is not None and mark.stream.startswith(self._base + "~")
                and self._file_holds(*(mark.sending or (mark.seq, mark.hash)))):
            self._key = mark.stream

    async def _copy(self) -> int:
        await self._client.set(live_key(self._key, self._prefix), str(time.time()),
                               px=self._live_ms)
        resume: tuple[int, str] | None = None
        if self._copied_seq is None:
            # Rescan the file from its start: the stream may hold less than this process
            # copied (a Redis restarted without its data), and must stay one chain.
            resume = await self._resume_point()
            self._copied_seq, self._copied_hash = resume if resume is not None else (0, "")
            self._offset = 0
        copied = 0
        batch: list[tuple[int, ChainedRecord, bytes]] = []
        for end, chained, line in self._new_lines():
            if chained.seq <= self._copied_seq:
                if resume is not None and chained.seq == resume[0]:
                    if chained.hash != resume[1]:
                        return await self._another_chain()
                    resume = None
                self._offset = end
                continue
            batch.append((end, chained, line))
            if len(batch) >= _BATCH:
                copied += await self._send(batch, copied)
                batch = []
        if resume is not None:
            # The stream goes further than this file: the file started a new chain.
            return await self._another_chain()
        if batch:
            copied += await self._send(batch, copied)
        await self._note()  # where a resumption found the stream, if not noted yet
        return copied

    async def _another_chain(self) -> int:
        first = next(self._new_lines_from(0), None)
        self._copied_seq = None
        if first is None:
            return 0  # a new, still empty file: its chain has no name yet
        if self._key != self._base:
            raise LedgerMirrorConflict(
                f"the ledger copy {self._key} does not continue {self._path}'s chain; "
                "run `gatekeeper ledger verify --from-store` and check both")
        # The stream under the name holds a chain nobody writes any more: this mirror
        # does not keep it alive (it refreshed its liveness before it knew).
        await self._client.delete(live_key(self._base, self._prefix))
        self._key = f"{self._base}~{first[1].hash[:_CHAIN_ID]}"
        _log.warning("ledger_mirror_new_chain", path=str(self._path), stream=self._key,
                     previous=self._base,
                     reason="the stream holds records this ledger file does not: a new "
                            "file under a name kept from before")
        return await self._copy()

    async def _send(self, batch: list[tuple[int, ChainedRecord, bytes]], before: int) -> int:
        """Append `batch`; raises `_StreamMoved` (with `before`, the lines this sync
        copied until now) when the stream is not where this mirror left it."""
        end, last, line = batch[-1]
        # Noted first: were the stream removed after this batch went in, a mirror
        # starting from the note would not know whether to copy it again.
        await self._note(sending=(last.seq, last.hash))
        added: Any = await self._client.eval(
            _APPEND, 3, self._key, anchor_key(self._key, self._prefix),
            self._prefix + EPOCH, self._epoch, self._copied_line, self._copied_hash,
            *(raw for _, _, raw in batch))
        if int(added) < 0:
            await self._note()  # it did not go in
            raise _StreamMoved(before)
        self._offset = end
        self._copied_seq, self._copied_hash, self._copied_line = last.seq, last.hash, line
        await self._note()
        return len(batch)

    async def _note(self, sending: tuple[int, str] | None = None) -> None:
        assert self._copied_seq is not None
        mark = _Mark(self._key, self._epoch, self._copied_seq, self._copied_hash, sending)
        if mark != self._mark:
            await asyncio.to_thread(_write_mark, self._path, mark)
            self._mark = mark

    def _new_lines(self) -> Iterator[tuple[int, ChainedRecord, bytes]]:
        return self._new_lines_from(self._offset)

    def _new_lines_from(self, offset: int) -> Iterator[tuple[int, ChainedRecord, bytes]]:
        """(offset after it, the parsed line, the line) for each complete line after
        `offset`."""
        try:
            f = self._path.open("rb")
        except FileNotFoundError:
            return
        with f:
            f.seek(offset)
            position = offset
            for line in f:
                if not line.endswith(b"\n"):
                    return  # a write in progress
                position += len(line)
                yield position, parse_line(line), line

    def _file_holds(self, seq: int, hash: str) -> bool:
        for _, chained, _ in self._new_lines_from(0):
            if chained.seq == seq:
                return chained.hash == hash
            if chained.seq > seq:
                break
        return False

    async def _resume_point(self) -> tuple[int, str] | None:
        """The (seq, hash) the stream ends at: its last line, or, trimmed empty, its
        anchor, or, removed as a gone replica's, the last record this mirror noted
        copying; None for a stream that holds nothing."""
        epoch: Any = await self._client.eval(_EPOCH, 1, self._prefix + EPOCH,
                                             secrets.token_hex(8))
        self._epoch = _text(epoch)
        self._copied_line = b""
        last: Any = await self._client.xrevrange(self._key, count=1)
        if last:
            self._copied_line = _line(last[0][1])
            chained = parse_line(self._copied_line)
            return chained.seq, chained.hash
        anchor = await read_anchor(self._client, anchor_key(self._key, self._prefix))
        return anchor if anchor is not None else await self._after_removal()

    async def _after_removal(self) -> tuple[int, str] | None:
        mark = self._mark
        if mark is None or mark.stream != self._key or mark.epoch != self._epoch:
            # Nothing copied into this store's data yet, or the store lost its data
            # (a new epoch): copy the file from its start.
            return None
        if mark.sending is not None:
            _log.error("ledger_mirror_unsure", stream=self._key, first=mark.seq + 1,
                       last=mark.sending[0],
                       reason="these records were being copied when the mirror stopped "
                              "and the stream was removed since: they are copied again, "
                              "so if the export that removed it holds them, they are in "
                              "the store twice")
        if mark.seq == 0 or not self._file_holds(mark.seq, mark.hash):
            return None  # nothing exported from this file: its chain starts afresh
        # The stream was removed after everything in it was exported (a trimming
        # export while this replica was gone, or its liveness lapsed): the chain
        # continues after the last record copied, anchored there again.
        done: Any = await self._client.eval(
            _REANCHOR, 2, self._key, anchor_key(self._key, self._prefix),
            str(mark.seq), mark.hash)
        if not int(done):
            raise _StreamMoved(0)
        _log.warning("ledger_mirror_continues_after_removal", stream=self._key,
                     after=mark.seq,
                     reason="the stream was removed after its records were exported; "
                            "the copy continues after the last record this file had "
                            "copied")
        return mark.seq, mark.hash

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
            except (RedisError, OSError, TimeoutError) as exc:
                # The file keeps every record; the copy catches up when Redis is back.
                self.failures += 1
                self._copied_seq = None
                _log.warning("ledger_mirror_behind", stream=self._key, error=str(exc))
            except LedgerMirrorConflict as exc:
                self.failures += 1
                _log.error("ledger_mirror_conflict", stream=self._key, error=str(exc))
            await asyncio.sleep(self._interval)


def _line(fields: Any) -> bytes:
    line = fields.get(b"line", fields.get("line"))
    return line if isinstance(line, bytes) else str(line).encode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def read_anchor(client: redis.asyncio.Redis, key: str) -> tuple[int, str] | None:
    """The (seq, hash) stored under trim anchor `key`, or None."""
    raw: Any = await client.hgetall(key)
    fields = {_text(k): _text(v) for k, v in raw.items()}
    if not fields:
        return None
    try:
        return int(fields["seq"]), fields["hash"]
    except (KeyError, ValueError) as exc:
        raise LedgerError(f"the trim anchor {key} is not a seq and a hash: {fields}") from exc


@dataclass(frozen=True, slots=True)
class StreamCopy:
    """One stream as read: its entries (id, line) in order, and where they continue
    from (`start`: the trim anchor's seq and hash; None for an untrimmed stream)."""

    key: str
    start: tuple[int, str] | None
    entries: Sequence[tuple[str, bytes]]

    @property
    def lines(self) -> list[bytes]:
        return [line for _, line in self.entries]

    def verify(self) -> VerifyResult:
        return verify_lines(self.lines, start=self.start)

    def records(self) -> list[ChainedRecord]:
        return [parse_line(line) for _, line in self.entries]


async def streams(client: redis.asyncio.Redis, prefix: str = "gk:") -> list[str]:
    keys = [_text(key) async for key in client.scan_iter(match=f"{prefix}{STREAM}*")]
    return sorted(keys)


async def stream_entries(client: redis.asyncio.Redis, key: str) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    start = "-"
    while True:
        entries: Any = await client.xrange(key, min=start, count=1000)
        for entry_id, fields in entries:
            out.append((_text(entry_id), _line(fields)))
            start = "(" + _text(entry_id)
        if len(entries) < 1000:
            return out


async def stream_lines(client: redis.asyncio.Redis, key: str) -> list[bytes]:
    return [line for _, line in await stream_entries(client, key)]


async def read_copies(client: redis.asyncio.Redis, prefix: str = "gk:") -> list[StreamCopy]:
    """Every replica's stream, with its trim anchor."""
    return [StreamCopy(key, await read_anchor(client, anchor_key(key, prefix)),
                       await stream_entries(client, key))
            for key in await streams(client, prefix)]


def in_window(record: UsageRecord, since: float | None, until: float | None) -> bool:
    return (since is None or record.time >= since) and (until is None or record.time < until)


async def read_store(client: redis.asyncio.Redis, prefix: str = "gk:",
                     since: float | None = None,
                     until: float | None = None) -> list[UsageRecord]:
    """Every replica's records from the store, with `since <= time < until`."""
    records: list[UsageRecord] = []
    for key in await streams(client, prefix):
        for line in await stream_lines(client, key):
            record = parse_line(line).record
            if in_window(record, since, until):
                records.append(record)
    return records


async def verify_store(client: redis.asyncio.Redis,
                       prefix: str = "gk:") -> dict[str, VerifyResult]:
    return {copy.key: copy.verify() for copy in await read_copies(client, prefix)}


def exported_prefix(copy: StreamCopy, since: float | None, until: float | None) -> int:
    """How many of the stream's first entries an export with this window contains:
    the most a trim after it may remove (one record outside the window, and every
    later one stays, even where later ones were exported)."""
    count = 0
    for chained in copy.records():
        if not in_window(chained.record, since, until):
            break
        count += 1
    return count


async def trim(client: redis.asyncio.Redis, copy: StreamCopy, count: int,
               prefix: str = "gk:") -> int:
    """Remove the first `count` entries of `copy` from its stream, keeping the last of
    them as the trim anchor; how many were removed.

    Raises `TrimRefused` when the stream no longer holds that entry as read (it was
    rebuilt, say by a Redis that lost its data) and nothing is removed then; a stream
    already trimmed further by someone else is left as it is (0).
    """
    if count <= 0:
        return 0
    entry_id, line = copy.entries[count - 1]
    chained = parse_line(line)
    millis, _, n = entry_id.partition("-")
    after = f"{millis}-{int(n) + 1}"
    removed: Any = await client.eval(
        _TRIM, 2, copy.key, anchor_key(copy.key, prefix),
        entry_id, str(chained.seq), chained.hash, line, after)
    if removed == -1:
        raise TrimRefused(f"{copy.key} changed after it was exported (entry {entry_id} no "
                          f"longer holds record {chained.seq}); not trimmed: export again")
    return max(int(removed), 0)


async def trim_exported(client: redis.asyncio.Redis, copies: Sequence[StreamCopy],
                        since: float | None, until: float | None,
                        prefix: str = "gk:") -> list[tuple[str, int, int]]:
    """Trim each copy by what an export of `since <= time < until` holds (call it once
    that export is written): (stream, records removed, records kept) for each."""
    done = []
    for copy in copies:
        count = exported_prefix(copy, since, until)
        done.append((copy.key, await trim(client, copy, count, prefix),
                     len(copy.entries) - count))
    return done


async def remove_gone(client: redis.asyncio.Redis, prefix: str = "gk:") -> list[str]:
    """Remove, with its anchor, every stream that holds nothing left to export and
    whose replica is gone (no mirror has refreshed its liveness key lately); the
    streams removed. Call it after an export has trimmed the streams: a running
    replica's emptied stream stays, and it continues after the anchor."""
    anchored = [_text(key)[len(prefix + ANCHOR):]
                async for key in client.scan_iter(match=f"{prefix}{ANCHOR}*")]
    # An anchor without its stream is what a returning replica leaves when it stops
    # again before copying anything: as much a gone replica's as a stream.
    keys = set(await streams(client, prefix)) | {prefix + STREAM + s for s in anchored}
    removed = []
    for key in sorted(keys):
        done: Any = await client.eval(_REMOVE, 3, key, anchor_key(key, prefix),
                                      live_key(key, prefix))
        if int(done):
            removed.append(key)
    return removed
