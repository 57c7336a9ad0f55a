"""Log output: one format for every logger, the request line, batching, failure."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from gatekeeper.errors import SettingsError
from gatekeeper.observe import logging as gk_logging

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    # Leave a quiet configuration behind rather than a stream this test owned.
    gk_logging.configure("json", "warning", io.StringIO(), cache_loggers=False)


def configure(fmt: str = "json", level: str = "info", **kw: float) -> io.StringIO:
    out = io.StringIO()
    gk_logging.configure(fmt, level, out, cache_loggers=False, **kw)
    return out


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_structlog_events_are_json_lines_with_time_level_and_logger() -> None:
    out = configure()
    gk_logging.get_logger("gatekeeper.test").info("started", listen="127.0.0.1:8080")
    (line,) = lines(out)
    assert list(line)[:3] == ["time", "level", "event"]  # as on the request line
    assert line["event"] == "started"
    assert line["level"] == "info"
    assert line["logger"] == "gatekeeper.test"
    assert line["listen"] == "127.0.0.1:8080"
    assert ISO_UTC.fullmatch(str(line["time"]))


def test_standard_library_records_come_out_in_the_same_json() -> None:
    out = configure()
    logging.getLogger("aiohttp.server").error("Error handling request %s", "x")
    (line,) = lines(out)
    assert list(line)[:3] == ["time", "level", "event"]
    assert line["event"] == "Error handling request x"
    assert line["level"] == "error"
    assert line["logger"] == "aiohttp.server"
    assert ISO_UTC.fullmatch(str(line["time"]))


def test_exceptions_are_rendered_into_the_json_line() -> None:
    out = configure()
    try:
        raise ValueError("boom")
    except ValueError:
        gk_logging.get_logger("t").exception("failed")
    (line,) = lines(out)
    assert "ValueError: boom" in str(line["exception"])


def test_library_exceptions_are_rendered_as_text_too() -> None:
    out = configure()
    try:
        raise ConnectionResetError("peer went away")
    except ConnectionResetError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    (line,) = lines(out)
    assert "ConnectionResetError: peer went away" in str(line["exception"])
    assert "Traceback" in str(line["exception"])


def test_level_filters_our_events_stdlib_records_and_request_lines() -> None:
    out = configure(level="warning")
    gk_logging.get_logger("t").info("hidden")
    logging.getLogger("x").info("hidden too")
    log = gk_logging.request_log()
    assert log.enabled is False
    log.write("request", {"path": "/"})
    gk_logging.get_logger("t").warning("shown")
    assert [line["event"] for line in lines(out)] == ["shown"]


def test_console_format_is_for_people() -> None:
    out = configure(fmt="console")
    gk_logging.get_logger("t").info("started", listen="x")
    gk_logging.request_log().write("request", {"path": "/a", "status": 200})
    text = out.getvalue()
    assert not text.lstrip().startswith("{")
    assert "started" in text
    assert "path=/a" in text


@pytest.mark.parametrize(("fmt", "level"), [("xml", "info"), ("json", "loud")])
def test_bad_format_or_level_is_a_settings_error(fmt: str, level: str) -> None:
    with pytest.raises(SettingsError):
        gk_logging.configure(fmt, level, io.StringIO())


def test_the_request_line_starts_with_time_level_and_event_then_the_fields() -> None:
    out = configure()
    gk_logging.request_log().write("request", {"path": "/a", "status": 200, "upstream_ms": None})
    raw = out.getvalue()
    assert raw.endswith("\n")
    assert raw.count("\n") == 1
    line = json.loads(raw)
    assert list(line) == ["time", "level", "event", "path", "status", "upstream_ms"]
    assert ISO_UTC.fullmatch(line["time"])
    assert line["level"] == "info"
    assert line["event"] == "request"


def test_a_request_line_without_fields_is_still_valid_json() -> None:
    out = configure()
    gk_logging.request_log().write("request", {})
    assert set(json.loads(out.getvalue())) == {"time", "level", "event"}


def test_undecodable_header_bytes_do_not_break_the_line() -> None:
    # aiohttp keeps bytes that are not UTF-8 as lone surrogates; orjson refuses those.
    out = configure()
    gk_logging.request_log().write("request", {"user_agent": "bot\udcff\udcfe"})
    line = json.loads(out.getvalue())
    assert line["user_agent"].startswith("bot")


def test_values_cannot_forge_extra_lines_or_fields() -> None:
    out = configure()
    gk_logging.request_log().write(
        "request", {"user_agent": 'x"\n{"event":"forged","level":"error"}'}
    )
    (line,) = lines(out)
    assert line["event"] == "request"


def test_binary_streams_are_written_as_bytes() -> None:
    out = io.BytesIO()
    gk_logging.configure("json", "info", out, cache_loggers=False)
    gk_logging.request_log().write("request", {"path": "/é"})
    assert json.loads(out.getvalue())["path"] == "/é"


async def test_request_lines_are_batched_until_the_interval_passes() -> None:
    out = configure(flush_interval=0.05)
    log = gk_logging.request_log()
    log.write("request", {"n": 1})
    log.write("request", {"n": 2})
    assert out.getvalue() == ""
    await asyncio.sleep(0.2)
    assert [line["n"] for line in lines(out)] == [1, 2]


async def test_other_lines_flush_the_batch_first_so_order_holds() -> None:
    out = configure(flush_interval=60)
    gk_logging.request_log().write("request", {"n": 1})
    gk_logging.get_logger("t").error("policy_reload_failed")
    logging.getLogger("aiohttp").warning("stdlib")
    assert [line["event"] for line in lines(out)] == [
        "request", "policy_reload_failed", "stdlib",
    ]


async def test_a_full_batch_is_written_without_waiting() -> None:
    out = configure(flush_interval=60)
    log = gk_logging.request_log()
    for _ in range(gk_logging.BATCH_BYTES // 40 + 1):
        log.write("request", {"pad": "x" * 40})
    assert out.getvalue()


async def test_flush_writes_what_is_batched() -> None:
    # Shutdown and exit call this, so a batch is not lost with the process.
    out = configure(flush_interval=60)
    gk_logging.request_log().write("request", {"n": 1})
    assert out.getvalue() == ""
    gk_logging.flush()
    assert [line["n"] for line in lines(out)] == [1]


def test_without_a_running_loop_lines_are_written_at_once() -> None:
    # Nothing would ever flush a batch outside an event loop (a CLI command).
    out = configure(flush_interval=60)
    gk_logging.request_log().write("request", {"n": 1})
    assert [line["n"] for line in lines(out)] == [1]


def test_a_broken_log_stream_never_raises_into_the_request() -> None:
    out = io.StringIO()
    sink = gk_logging.LineSink(out)
    out.close()
    sink.write(b"{}\n")
    sink.write_now(b"{}\n")
    assert sink.dropped == 2


def test_request_lines_work_before_anything_is_configured(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(gk_logging, "_state", None)
    gk_logging.request_log().write("request", {"path": "/"})
    assert json.loads(capsys.readouterr().out)["path"] == "/"
