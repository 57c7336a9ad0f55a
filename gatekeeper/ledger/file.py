"""The usage ledger in a local append-only file: batched writer, verifier, reader.

`FileLedger.append` runs on the proxy's request path, so it only chains the
record (seq, prev, hash) and puts the line in a memory buffer. A background
thread writes the buffer with one `write` and one `fdatasync` every
`flush_interval` seconds, or sooner when `max_batch` lines are waiting; `close()`
writes whatever is left. A record is durable once a flush that includes it has
returned; a process stopped with SIGTERM that awaits `close()` loses nothing,
one killed with SIGKILL loses at most the last interval.

One process writes a ledger file at a time: a lock file next to it, held with
`flock` for as long as the ledger is open, turns a second writer (two
replicas pointed at one file, a restart racing its predecessor) into a clear
error instead of two interleaved chains.
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import fcntl
import functools
import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import orjson

from gatekeeper.ledger.record import (
    GENESIS,
    ChainedRecord,
    LedgerError,
    LedgerFormatError,
    UsageRecord,
    encode,
    parse_line,
)
from gatekeeper.observe.logging import get_logger

FILE_MODE: Final = 0o640
_TAIL_CHUNK: Final = 64 * 1024
_log = get_logger("gatekeeper.ledger")

Reason = Literal["edited", "removed", "reordered", "bad-json", "truncated"]


class LedgerLocked(LedgerError):
    """Another process (or another ledger object) already writes this ledger file."""


class LedgerCorrupt(LedgerError):
    """The ledger's last record is unreadable, so its chain cannot be continued."""


class LedgerClosed(LedgerError):
    """A record was appended after `close()`."""


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of checking a ledger file's chain from its first record.

    `records` counts the records found good (all of them when `ok`); on failure
    `first_bad_seq` is the sequence number where the chain first breaks and
    `reason` says how. `last_seq`/`last_hash` describe the last good record: the
    values to compare with an anchor kept elsewhere. `incomplete_tail` is true when
    the file ends in a line without its newline (a write in progress, or a crash
    the next writer will trim); that line is not counted and is not a failure.
    `start_seq` is the record the checked lines continue from (0: the chain's start;
    more for a copy whose older records were trimmed after an export).
    """

    ok: bool
    records: int
    first_bad_seq: int | None
    reason: Reason | None
    detail: str
    last_seq: int
    last_hash: str
    incomplete_tail: bool = False
    start_seq: int = 0


class FileLedger:
    """An open, locked ledger file that records can be appended to.

    Use: `ledger = FileLedger(path)`, `await ledger.start()`, `ledger.append(r)`
    per licensed request, `await ledger.close()` at shutdown. `append` is safe to
    call from any thread; without `start()` nothing is written until
    `flush_now()` or `close()`.
    """

    def __init__(self, path: Path, *, flush_interval: float = 0.5, max_batch: int = 1000) -> None:
        if not flush_interval > 0:
            raise LedgerError(f"ledger flush_interval must be above 0 s, not {flush_interval}")
        if max_batch < 1:
            raise LedgerError(f"ledger max_batch must be at least 1, not {max_batch}")
        self.path = path
        self._interval = flush_interval
        self._max_batch = max_batch
        self._lock_fd, self._fd, (self._seq, self._prev, self._size) = _open_locked(path)
        self._durable_seq, self._durable_hash = self._seq, self._prev
        # One growing buffer rather than a list of lines: orjson's output kept alive
        # costs a slow allocation per line, a copy into the buffer does not.
        self._pending = bytearray()
        self._pending_count = 0
        self._lock = threading.Lock()  # guards the chain state and the buffer
        self._io_lock = threading.Lock()  # one batch on its way to disk at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._released = False
        # A safety net for a process that exits without close(): the weak reference
        # keeps this hook from holding the ledger alive.
        self._atexit = functools.partial(_flush_at_exit, weakref.ref(self))
        atexit.register(self._atexit)

    @property
    def last_seq(self) -> int:
        """The seq of the last record appended (0 for an empty ledger)."""
        return self._seq

    @property
    def last_hash(self) -> str:
        """The hash of that record (64 zeros for an empty ledger)."""
        return self._prev

    @property
    def durable_seq(self) -> int:
        """The seq of the last record known to be on disk (written and synced)."""
        return self._durable_seq

    @property
    def durable_hash(self) -> str:
        """The hash of that record: the value worth shipping elsewhere as an anchor."""
        return self._durable_hash

    @property
    def pending(self) -> int:
        """Records appended but not yet written."""
        return self._pending_count

    def append(self, record: UsageRecord) -> None:
        """Chain `record` after the last one and buffer it for the next flush.

        Raises `LedgerClosed` after `close()`, `LedgerFormatError` for a record
        the ledger could not read back (see `record.encode`).
        """
        with self._lock:
            if self._closed:
                raise LedgerClosed(f"ledger {self.path} is closed; record not written")
            seq = self._seq + 1
            line, digest = encode(record, seq, self._prev)
            self._seq, self._prev = seq, digest
            self._pending += line
            self._pending_count += 1
            if self._pending_count >= self._max_batch and not self._wake.is_set():
                self._wake.set()

    async def start(self) -> None:
        """Start the background flusher (idempotent)."""
        if self._thread is not None or self._closed:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"ledger-flush:{self.path.name}", daemon=True
        )
        self._thread.start()

    def flush_now(self) -> None:
        """Write and sync everything appended so far, on the calling thread."""
        self._write_pending()

    async def close(self) -> None:
        """Stop accepting records, write and sync the rest, release the lock.

        Raises `LedgerError` when the last records could not be written; the
        ledger is closed either way.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._wake.set()
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        atexit.unregister(self._atexit)
        try:
            if self._thread is not None:
                self._thread.join()
            self._write_pending()
        except LedgerError as exc:
            lost = self._pending_count
            raise LedgerError(f"{exc}; {lost} records after seq {self._durable_seq} lost") from exc
        finally:
            self._release()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        os.close(self._fd)
        os.close(self._lock_fd)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self._write_pending()
            except LedgerError as exc:
                # Kept in memory and retried next interval: a full disk may be freed.
                _log.error("ledger_write_failed", path=str(self.path), error=str(exc),
                           pending=self._pending_count)

    def _write_pending(self) -> None:
        with self._io_lock:
            if self._released:
                return
            with self._lock:
                if not self._pending_count:
                    return
                data, count = self._pending, self._pending_count
                self._pending, self._pending_count = bytearray(), 0
                seq, digest = self._seq, self._prev
            try:
                self._discard_partial_write()
                _write_all(self._fd, data)
                os.fdatasync(self._fd)
            except OSError as exc:
                with self._lock:
                    self._pending[:0] = data  # retried first, so the order holds
                    self._pending_count += count
                raise LedgerError(
                    f"cannot write ledger {self.path}: {exc.strerror or exc}; "
                    "free disk space or fix the file's permissions"
                ) from exc
            self._size += len(data)
            self._durable_seq, self._durable_hash = seq, digest

    def _discard_partial_write(self) -> None:
        # A failed write may have left part of a batch behind; the batch is retried
        # whole, so anything past the last complete flush goes first.
        if os.fstat(self._fd).st_size > self._size:
            os.ftruncate(self._fd, self._size)


def _flush_at_exit(ref: weakref.ReferenceType[FileLedger]) -> None:
    ledger = ref()
    if ledger is None or ledger._released:
        return
    try:
        ledger.flush_now()
    except LedgerError as exc:
        _log.error("ledger_write_failed", path=str(ledger.path), error=str(exc))


def _open_locked(path: Path) -> tuple[int, int, tuple[int, str, int]]:
    """The lock's descriptor, the ledger's, and where the chain continues."""
    lock_fd = _acquire_lock(path)  # first: a live writer's tail must not look torn
    try:
        fd, created = _open_for_append(path)
    except BaseException:
        os.close(lock_fd)
        raise
    try:
        tail = _continue_chain(fd, path)
        if created:
            _fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        os.close(lock_fd)
        raise
    return lock_fd, fd, tail


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _acquire_lock(path: Path) -> int:
    lock = _lock_path(path)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise LedgerError(f"cannot open ledger lock file {lock}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_holder(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise LedgerLocked(
                f"ledger {path} is already open for writing{holder} (lock {lock}); "
                "one process writes a ledger file: stop the other gatekeeper or give "
                "this one its own ledger file"
            ) from exc
        raise LedgerError(f"cannot lock ledger {path}: {exc.strerror or exc}") from exc
    # The holder's pid, for the message another process gets; the lock is the flock.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" by process {pid}" if pid.isdigit() else ""


def _open_for_append(path: Path) -> tuple[int, bool]:
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
    try:
        return os.open(path, flags), False
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise LedgerError(f"cannot open ledger {path}: {exc.strerror or exc}") from exc
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except OSError as exc:
        raise LedgerError(
            f"cannot create ledger {path}: {exc.strerror or exc}; "
            "check that its directory exists and is writable"
        ) from exc
    os.fchmod(fd, FILE_MODE)  # the umask must not widen or narrow what we promise
    return fd, True


def _continue_chain(fd: int, path: Path) -> tuple[int, str, int]:
    """Where the chain continues: the last record's seq and hash, and the file size.

    A last line without its newline is a write cut short by a crash; its records
    were never synced, so never reported durable, and it is cut off.
    """
    size = os.fstat(fd).st_size
    buf, start = b"", size
    while True:
        end_nl = buf.rfind(b"\n")
        if end_nl != -1 and (buf.rfind(b"\n", 0, end_nl) != -1 or start == 0):
            break
        if end_nl == -1 and start == 0:
            break
        step = min(_TAIL_CHUNK, start)
        start -= step
        buf = os.pread(fd, step, start) + buf
    torn = len(buf) - (end_nl + 1)
    if torn:
        good = size - torn
        os.ftruncate(fd, good)
        os.fdatasync(fd)
        _log.warning("ledger_torn_tail_trimmed", path=str(path), bytes=torn,
                     reason="the last line had no newline: a write cut short by a crash")
        size = good
    if end_nl == -1:
        return 0, GENESIS, 0
    line = buf[buf.rfind(b"\n", 0, end_nl) + 1 : end_nl + 1]
    try:
        last = parse_line(line)
        rebuilt, digest = encode(last.record, last.seq, last.prev)
    except LedgerFormatError as exc:
        raise LedgerCorrupt(_corrupt_message(path, str(exc))) from exc
    if rebuilt != line or digest != last.hash:
        raise LedgerCorrupt(_corrupt_message(path, f"record {last.seq} does not match its hash"))
    return last.seq, last.hash, size


def _corrupt_message(path: Path, why: str) -> str:
    return (
        f"the last record of ledger {path} is unreadable ({why}); run "
        f"`gatekeeper ledger verify {path}`, keep the file as evidence, and move it "
        "aside to start a new ledger"
    )


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    # A new file's directory entry must be durable too, or a power cut loses the file.
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify(path: Path, *, anchor: tuple[int, str] | None = None) -> VerifyResult:
    """Check every record's hash and link, from the first record to the last.

    Detects an edited record (its hash or bytes no longer match), a removed one
    (a gap in seq), lines moved out of order, and lines that are not JSON. It
    cannot see records removed from the end; `anchor` — a (seq, hash) recorded
    elsewhere earlier — closes that gap: the file must still hold that record.
    """
    try:
        with path.open("rb") as f:
            return verify_lines(f, anchor=anchor)
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {path}: {exc.strerror or exc}") from exc


def verify_lines(lines: Iterable[bytes], *, anchor: tuple[int, str] | None = None,
                 start: tuple[int, str] | None = None) -> VerifyResult:
    """`verify` over ledger lines from anywhere (a file, a copy in the store).

    `start`, the (seq, hash) of the last record cut off before these lines (a copy
    trimmed after an export), is where the chain must continue: the first line is
    record seq + 1 and links to that hash.
    """
    check = _Checker(anchor, start)
    source = iter(lines)
    for raw in source:
        if not raw.endswith(b"\n"):
            check.incomplete_tail = True
            break
        if check.feed(raw):
            return check.failed_with_lookahead(source)
    return check.finish()


class _Checker:
    """The running state of `verify`: the next seq and hash the chain expects."""

    def __init__(self, anchor: tuple[int, str] | None,
                 start: tuple[int, str] | None = None) -> None:
        self.anchor = anchor
        self.anchor_seen: str | None = None
        self.start_seq, self.prev = start if start is not None else (0, GENESIS)
        if self.anchor is not None and self.anchor[0] == self.start_seq:
            self.anchor_seen = self.prev
        self.expected = self.start_seq + 1
        self.incomplete_tail = False
        self.failure: tuple[int, Reason, str] | None = None
        self.gap_to: int | None = None  # on a seq jump: the seq found instead

    def feed(self, raw: bytes) -> bool:
        """Check one complete line; True when the chain breaks here."""
        try:
            got = parse_line(raw)
        except LedgerFormatError as exc:
            return self._fail(self.expected, exc.problem, f"line {self.expected}: {exc}")
        rebuilt, digest = encode(got.record, got.seq, got.prev)
        if rebuilt != raw or digest != got.hash:
            return self._fail(self.expected, "edited",
                              f"record {self.expected} does not match its hash")
        if got.seq == self.expected and got.prev != self.prev:
            if self.expected == 1:
                return self._fail(1, "edited", "record 1 does not start the chain")
            if self.expected == self.start_seq + 1:
                return self._fail(got.seq, "edited",
                                  f"record {got.seq} does not continue from record "
                                  f"{self.start_seq}, where the copy was trimmed")
            # This record is intact, so the one before it changed and was re-hashed.
            bad = self.expected - 1
            return self._fail(bad, "edited",
                              f"record {bad} was changed: record {got.seq} links elsewhere")
        if got.seq > self.expected:
            self.gap_to = got.seq
            return self._fail(self.expected, "removed",
                              f"records {self.expected}..{got.seq - 1} are missing")
        if got.seq < self.expected:
            return self._fail(got.seq, "reordered",
                              f"record {got.seq} appears again after record {self.expected - 1}")
        if self.anchor is not None and got.seq == self.anchor[0]:
            self.anchor_seen = got.hash
        self.prev = got.hash
        self.expected += 1
        return False

    def _fail(self, seq: int, reason: Reason, detail: str) -> bool:
        self.failure = (seq, reason, detail)
        return True

    def failed_with_lookahead(self, rest: Iterator[bytes]) -> VerifyResult:
        assert self.failure is not None
        seq, reason, detail = self.failure
        if reason == "removed" and self.gap_to is not None:
            # A missing seq that turns up further on was moved, not removed.
            missing = range(self.expected, self.gap_to)
            for raw in rest:
                if _seq_of(raw) in missing:
                    reason = "reordered"
                    detail = f"record {seq} is out of order: record {self.gap_to} comes first"
                    break
        return self._result(ok=False, first_bad=seq, reason=reason, detail=detail)

    def finish(self) -> VerifyResult:
        last = self.expected - 1
        if self.anchor is not None:
            a_seq, a_hash = self.anchor
            if a_seq > last:
                return self._result(
                    ok=False, first_bad=last + 1, reason="truncated",
                    detail=f"the anchor names record {a_seq} but the ledger ends at {last}",
                )
            # An anchor on a record trimmed before `start` cannot be checked here.
            if a_seq >= max(1, self.start_seq) and self.anchor_seen != a_hash:
                return self._result(
                    ok=False, first_bad=a_seq, reason="edited",
                    detail=f"record {a_seq} no longer has the anchored hash: the chain "
                    "was rewritten from there or earlier",
                )
        return self._result(ok=True, first_bad=None, reason=None,
                            detail=f"{last - self.start_seq} records")

    def _result(
        self, *, ok: bool, first_bad: int | None, reason: Reason | None, detail: str
    ) -> VerifyResult:
        return VerifyResult(
            ok=ok, records=self.expected - 1 - self.start_seq, first_bad_seq=first_bad,
            reason=reason, detail=detail, last_seq=self.expected - 1, last_hash=self.prev,
            incomplete_tail=self.incomplete_tail, start_seq=self.start_seq,
        )


def _seq_of(raw: bytes) -> int | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    seq = obj.get("seq") if isinstance(obj, dict) else None
    return seq if isinstance(seq, int) else None


def read(
    path: Path, since: float | None = None, until: float | None = None
) -> Iterator[UsageRecord]:
    """The records of a ledger file in order, with `since <= time < until`.

    Does not check the chain (that is `verify`); an unreadable line raises
    `LedgerFormatError` naming it. A last line without its newline is a write in
    progress and is skipped.
    """
    for chained in read_chained(path):
        when = chained.record.time
        if (since is None or when >= since) and (until is None or when < until):
            yield chained.record


def read_chained(path: Path) -> Iterator[ChainedRecord]:
    """Every complete line of a ledger file, parsed, with its seq and hashes."""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {path}: {exc.strerror or exc}") from exc
    with f:
        for number, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                return
            try:
                yield parse_line(raw)
            except LedgerFormatError as exc:
                raise LedgerFormatError(f"{path}:{number}: {exc}", exc.problem) from exc
