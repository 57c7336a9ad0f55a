"""structlog configuration: JSON lines (default) or a console format for people.

Every log line, the per-request one included, goes through structlog; the
standard library's loggers (aiohttp, asyncio) are routed into the same output.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    out = stream if stream is not None else sys.stdout
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # aiohttp's access log would duplicate the request line the gate writes itself.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _dumps(obj: Any, **_: Any) -> str:
    # orjson: the request line is written once per request, and the stdlib encoder
    # was the largest single cost in it.
    return orjson.dumps(obj, default=str).decode()


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
