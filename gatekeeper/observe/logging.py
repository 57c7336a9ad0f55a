"""Log output: structlog configured once, the request line on a fast path.

Every line, whoever writes it, goes through one `LineSink` on one stream, so lines
never interleave and keep their order:

- our own events (`started`, `policy_reloaded`, ...) go through structlog, as
  JSON lines or, for people, `ConsoleRenderer`;
- the standard library's loggers (aiohttp, asyncio) are rendered by structlog's
  `ProcessorFormatter` into the same format;
- the one line per request does not go through structlog's processor chain: in
  JSON it is one `orjson.dumps` of a dict the recorder builds, a quarter of the
  cost of a structlog call with the same fields, and it may be batched.

Batching: request lines are held for at most `flush_interval` seconds or
`BATCH_BYTES`, then written with one system call; on a pipe one write per request
costs more than everything else in the line. Any other line flushes the batch
first, and `flush()` runs at exit. What can be lost is the last fraction of a
second of request lines when the process is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import atexit
import io
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Final, Literal, cast

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor

from gatekeeper.errors import SettingsError

LogFormat = Literal["json", "console"]
LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
BATCH_BYTES: Final = 64 * 1024
DEFAULT_FLUSH_INTERVAL: Final = 1.0


class LineSink:
    """Writes whole lines to one text or binary stream, optionally in batches.

    Never raises: a log stream that has gone away (closed pipe, full disk) must
    not fail the request that is being logged.
    """

    def __init__(self, stream: IO[str] | IO[bytes], flush_interval: float = 0.0) -> None:
        self._stream = stream
        self._emit = _writer(stream)
        self._interval = flush_interval
        self._pending: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self.dropped = 0  # lines lost to a failing stream

    def write(self, line: bytes) -> None:
        """Queue one line (with its newline); written within `flush_interval`."""
        self._pending.append(line)
        self._size += len(line)
        if self._size >= BATCH_BYTES or self._interval <= 0:
            self.flush()
        elif self._timer is None or self._timer_loop is None or self._timer_loop.is_closed():
            self._schedule()

    def write_now(self, line: bytes) -> None:
        """Write one line at once, after anything batched: for rare, important lines."""
        self._pending.append(line)
        self._size += len(line)
        self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        count = len(self._pending)
        self._pending.clear()
        self._size = 0
        try:
            self._emit(data)
            self._stream.flush()
        except (OSError, ValueError):
            self.dropped += count

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # No loop to flush later (a CLI command, a test): write now.
            self.flush()
            return
        self._timer_loop = loop
        self._timer = loop.call_later(self._interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()


def _writer(stream: IO[str] | IO[bytes]) -> Callable[[bytes], object]:
    if isinstance(stream, (io.RawIOBase, io.BufferedIOBase)):
        return cast("IO[bytes]", stream).write
    text = cast("IO[str]", stream)
    return lambda data: text.write(data.decode("utf-8", "replace"))


class _SinkLogger:
    """The object structlog's bound loggers call with a rendered line."""

    __slots__ = ("_sink", "name")

    def __init__(self, sink: LineSink, name: str | None) -> None:
        self._sink = sink
        self.name = name  # read by add_logger_name

    def msg(self, message: str | bytes) -> None:
        line = message if isinstance(message, bytes) else message.encode("utf-8", "replace")
        self._sink.write_now(line + b"\n")

    log = debug = info = warn = warning = error = err = critical = fatal = exception = msg


class _SinkHandler(logging.Handler):
    """Standard-library records, formatted by structlog, into the same sink."""

    def __init__(self, sink: LineSink) -> None:
        super().__init__()
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # logging's own contract: a bad record is reported, not raised
            self.handleError(record)
            return
        self._sink.write_now(line.encode("utf-8", "replace") + b"\n")


class RequestLog:
    """Writes the one line per request. Get it from `request_log()`.

    In JSON the line is assembled from bytes: a head with `time` (ISO 8601 UTC
    with microseconds, as structlog's TimeStamper writes it), `level` and
    `event`, then the fields serialised by orjson. The date and time up to the
    second are formatted once per second. Half the cost of putting a datetime
    and the fields into one dict and serialising that.
    """

    __slots__ = ("_console", "_events", "_prefix", "_second", "_sink", "enabled")

    def __init__(self, sink: LineSink, fmt: LogFormat, enabled: bool) -> None:
        self._sink = sink
        self._console = get_logger("gatekeeper.request") if fmt == "console" else None
        self._events: dict[str, bytes] = {}
        self._second = -1
        self._prefix = b""
        # False when the level is above info: the recorder then skips building the line.
        self.enabled = enabled

    def write(self, event: str, fields: dict[str, Any]) -> None:
        """One line: `time`, `level` and `event` first, then `fields` in order."""
        if not self.enabled:
            return
        if self._console is not None:
            self._console.info(event, **fields)
            return
        body = _dumps_line(fields)  # b'{...}\n'
        head = self._head(event)
        self._sink.write(head + b"," + body[1:] if len(body) > 3 else head + b"}\n")

    def _head(self, event: str) -> bytes:
        second, micro = divmod(time.time_ns() // 1000, 1_000_000)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
            self._second = second
        name = self._events.get(event)
        if name is None:
            name = self._events[event] = orjson.dumps(event)
        return b'{"time":"%b.%06dZ","level":"info","event":%b' % (self._prefix, micro, name)


def _dumps_line(record: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        # orjson refuses lone surrogates, which aiohttp uses to carry undecodable
        # header bytes; the stdlib encoder escapes them instead of failing.
        return (json.dumps(record, default=str) + "\n").encode()


def _dumps_bytes(obj: Any, **_: Any) -> bytes:
    try:
        return orjson.dumps(obj, default=str)
    except TypeError:
        return json.dumps(obj, default=str).encode()


def _dumps_str(obj: Any, **_: Any) -> str:
    return _dumps_bytes(obj).decode()


@dataclass(frozen=True, slots=True)
class _State:
    sink: LineSink
    fmt: LogFormat
    level: int


_state: _State | None = None


def configure(
    fmt: str = "json",
    level: str = "info",
    stream: IO[str] | IO[bytes] | None = None,
    *,
    flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    cache_loggers: bool = True,
) -> LineSink:
    """Route all logging to `stream` (standard output by default) in `fmt`.

    Request lines are batched for up to `flush_interval` seconds while an event
    loop runs (0 writes each line at once). `cache_loggers=False` is for tests
    that configure more than once: a cached logger keeps the configuration it
    was first used with.
    """
    global _state
    if fmt not in ("json", "console"):
        raise SettingsError(f"log_format: {fmt!r} must be 'json' or 'console'")
    if level not in LEVELS:
        raise SettingsError(f"log_level: {level!r} must be one of {', '.join(LEVELS)}")
    if _state is not None:
        _state.sink.flush()
    log_format: LogFormat = "json" if fmt == "json" else "console"
    out = stream if stream is not None else sys.stdout
    _state = _install(out, log_format, LEVELS[level], flush_interval, cache_loggers)
    return _state.sink


def _install(
    out: IO[str] | IO[bytes], fmt: LogFormat, level: int, flush_interval: float, cache: bool
) -> _State:
    state = _State(LineSink(out, flush_interval), fmt, level)
    tty = _is_tty(out)
    _configure_structlog(state, cache, tty)
    _route_stdlib(state, tty)
    return state


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
    ]


def _renderers(fmt: LogFormat, tty: bool, *, as_bytes: bool) -> list[Processor]:
    if fmt == "console":
        return [structlog.dev.ConsoleRenderer(colors=tty)]
    serializer = _dumps_bytes if as_bytes else _dumps_str
    return [_lead_with_time_level_event, structlog.processors.JSONRenderer(serializer=serializer)]


def _lead_with_time_level_event(_: Any, __: str, event_dict: EventDict) -> EventDict:
    # Every line starts like the request line does, so people and tools reading the
    # log find the same keys in the same place.
    head = {key: event_dict.pop(key) for key in _LEADING if key in event_dict}
    head.update(event_dict)
    return head


_LEADING: Final = ("time", "level", "event")


def _configure_structlog(state: _State, cache: bool, tty: bool) -> None:
    processors = _shared_processors()
    if state.fmt == "json":
        # The console renderer formats exceptions itself, prettier than this.
        processors.append(structlog.processors.format_exc_info)
    processors.extend(_renderers(state.fmt, tty, as_bytes=True))
    sink = state.sink
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(state.level),
        logger_factory=lambda *args: _SinkLogger(sink, args[0] if args else None),
        cache_logger_on_first_use=cache,
    )


def _route_stdlib(state: _State, tty: bool) -> None:
    pre_chain: list[Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
    ]
    if state.fmt == "json":
        # A library's logger.exception(...) carries exc_info; JSON needs it as text.
        pre_chain.append(structlog.processors.format_exc_info)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *_renderers(state.fmt, tty, as_bytes=False),
        ],
    )
    handler = _SinkHandler(state.sink)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(state.level)
    # The gate writes its own request line; aiohttp's access log would repeat it.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _is_tty(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def get_logger(name: str) -> FilteringBoundLogger:
    """A structlog logger whose lines carry `logger: name`."""
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger


def request_log() -> RequestLog:
    """The request-line writer for the current configuration.

    Unconfigured (a library user, a one-off command), this installs the default
    first: JSON lines on standard output.
    """
    global _state
    if _state is None:
        _state = _install(sys.stdout, "json", logging.INFO, DEFAULT_FLUSH_INTERVAL, True)
    return RequestLog(_state.sink, _state.fmt, _state.level <= logging.INFO)


def flush() -> None:
    """Write any batched request lines now (shutdown calls this; so does exit)."""
    if _state is not None:
        _state.sink.flush()


atexit.register(flush)
