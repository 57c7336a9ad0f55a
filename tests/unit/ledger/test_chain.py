"""The ledger file: records chain, survive reopening, and verify catches tampering."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path

import orjson
import pytest

from gatekeeper.ledger.file import (
    FileLedger,
    LedgerClosed,
    LedgerCorrupt,
    LedgerLocked,
    read,
    read_chained,
    verify,
    verify_lines,
)
from gatekeeper.ledger.record import (
    GENESIS,
    LedgerFormatError,
    UsageRecord,
    encode,
    parse_line,
)

T0 = 1_793_491_200.0  # 2026-11-01T00:00:00Z


def usage(i: int, **changes: object) -> UsageRecord:
    fields: dict[str, object] = {
        "time": T0 + i,
        "licensee": "acme-ai",
        "license": "lic-1",
        "crawler": "GPTBot",
        "path": f"/articles/{i}",
        "status": 200,
        "bytes": 1000 + i,
        "price": "0.002",
        "currency": "USD",
        "section": "articles",
        "token_id": f"tok-{i}",
    }
    fields.update(changes)
    return UsageRecord(**fields)  # type: ignore[arg-type]


async def write_ledger(path: Path, count: int, start: int = 0) -> None:
    ledger = FileLedger(path)
    for i in range(start, start + count):
        ledger.append(usage(i))
    await ledger.close()


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# --- the line format ---------------------------------------------------------------


def test_a_line_is_canonical_json_with_sorted_keys_and_a_hash_over_the_rest() -> None:
    line, digest = encode(usage(1), 1, GENESIS)
    assert line.endswith(b"\n")
    assert b" " not in line
    obj = orjson.loads(line)
    assert list(obj) == sorted(obj)
    assert obj["seq"] == 1
    assert obj["prev"] == GENESIS
    assert obj["hash"] == digest
    del obj["hash"]
    assert digest == hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()


def test_parsing_a_line_gives_back_the_record_and_its_place_in_the_chain() -> None:
    record = usage(7, price="", currency="", section="")
    line, digest = encode(record, 5, "a" * 64)
    got = parse_line(line)
    assert (got.record, got.seq, got.prev, got.hash) == (record, 5, "a" * 64, digest)


def test_an_int_time_serialises_like_the_float_the_parser_reads_back() -> None:
    line, _ = encode(usage(0, time=1_793_491_200), 1, GENESIS)
    assert encode(parse_line(line).record, 1, GENESIS)[0] == line


@pytest.mark.parametrize("price", ["1e3", "-1", "0,5", "NaN", ".5"])
def test_a_price_that_is_not_a_plain_decimal_is_refused(price: str) -> None:
    with pytest.raises(LedgerFormatError, match="plain decimal"):
        encode(usage(0, price=price), 1, GENESIS)


def test_a_time_that_is_not_finite_is_refused() -> None:
    with pytest.raises(LedgerFormatError, match="finite"):
        encode(usage(0, time=float("inf")), 1, GENESIS)


def test_a_lone_surrogate_is_replaced_so_the_line_reads_back_identically() -> None:
    line, _ = encode(usage(0, crawler="bad\udcff"), 1, GENESIS)
    got = parse_line(line)
    assert got.record.crawler == "bad?"
    assert encode(got.record, 1, GENESIS)[0] == line


@pytest.mark.parametrize(
    ("line", "problem"),
    [(b"{not json\n", "bad-json"), (b"[1]\n", "bad-json"), (b'{"seq":1}\n', "edited")],
)
def test_a_line_in_another_shape_is_a_format_error(line: bytes, problem: str) -> None:
    with pytest.raises(LedgerFormatError) as caught:
        parse_line(line)
    assert caught.value.problem == problem


# --- appending, reopening ------------------------------------------------------------


async def test_appended_records_verify_and_read_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    await write_ledger(path, 5)
    result = verify(path)
    assert result.ok
    assert result.records == 5
    assert result.last_seq == 5
    assert result.first_bad_seq is None
    assert result.reason is None
    assert list(read(path)) == [usage(i) for i in range(5)]


async def test_a_new_ledger_file_is_readable_by_owner_and_group_only(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    old = os.umask(0o002)
    try:
        await write_ledger(path, 1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


async def test_reopening_continues_seq_and_prev_from_the_last_record(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    await write_ledger(path, 3)
    reopened = FileLedger(path)
    assert reopened.last_seq == 3
    assert reopened.last_hash == parse_line(lines(path)[-1]).hash
    reopened.append(usage(3))
    await reopened.close()
    chained = list(read_chained(path))
    assert [c.seq for c in chained] == [1, 2, 3, 4]
    assert chained[3].prev == chained[2].hash
    assert verify(path).ok


async def test_a_torn_last_line_is_trimmed_on_reopen_and_the_chain_continues(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.jsonl"
    await write_ledger(path, 3)
    intact = path.read_bytes()
    torn, _ = encode(usage(3), 4, parse_line(lines(path)[-1]).hash)
    with path.open("ab") as f:
        f.write(torn[: len(torn) // 2])  # a crash in the middle of a write
    assert verify(path).incomplete_tail
    ledger = FileLedger(path)
    assert path.read_bytes() == intact
    assert ledger.last_seq == 3
    ledger.append(usage(99))
    await ledger.close()
    result = verify(path)
    assert result.ok
    assert result.records == 4
    assert not result.incomplete_tail
    assert list(read(path))[-1] == usage(99)


async def test_a_file_that_is_only_a_torn_line_starts_a_new_chain(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b'{"bytes":1,"craw')
    ledger = FileLedger(path)
    assert ledger.last_seq == 0
    assert path.read_bytes() == b""
    ledger.append(usage(0))
    await ledger.close()
    assert verify(path).ok


async def test_an_unreadable_last_record_refuses_to_continue_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    await write_ledger(path, 2)
    path.write_bytes(path.read_bytes().replace(b'"acme-ai"', b'"evil-ai"'))
    with pytest.raises(LedgerCorrupt, match="ledger verify"):
        FileLedger(path)
    # The failed open released the lock: once repaired, the file opens again.
    path.write_bytes(b"")
    await FileLedger(path).close()


async def test_a_second_writer_on_the_same_file_gets_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    first = FileLedger(path)
    with pytest.raises(LedgerLocked, match=f"already open for writing by process {os.getpid()}"):
        FileLedger(path)
    await first.close()
    await FileLedger(path).close()  # released on close


async def test_append_after_close_is_refused(tmp_path: Path) -> None:
    ledger = FileLedger(tmp_path / "ledger.jsonl")
    await ledger.close()
    with pytest.raises(LedgerClosed):
        ledger.append(usage(0))


async def test_flush_now_makes_the_appended_records_durable(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = FileLedger(path)
    ledger.append(usage(0))
    ledger.append(usage(1))
    assert path.read_bytes() == b""
    assert ledger.pending == 2
    ledger.flush_now()
    assert len(lines(path)) == 2
    assert ledger.pending == 0
    assert (ledger.durable_seq, ledger.durable_hash) == (2, ledger.last_hash)
    await ledger.close()


async def test_the_background_flusher_writes_within_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = FileLedger(path, flush_interval=0.05)
    await ledger.start()
    ledger.append(usage(0))
    for _ in range(200):
        if path.read_bytes():
            break
        await asyncio.sleep(0.01)
    assert len(lines(path)) == 1
    await ledger.close()


async def test_a_full_batch_is_written_before_the_interval_ends(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = FileLedger(path, flush_interval=60, max_batch=10)
    await ledger.start()
    for i in range(10):
        ledger.append(usage(i))
    for _ in range(200):
        if len(lines(path)) == 10:
            break
        await asyncio.sleep(0.01)
    assert len(lines(path)) == 10
    await ledger.close()


# --- verify ------------------------------------------------------------------------


async def test_verify_names_the_seq_of_an_edited_record(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    await write_ledger(path, 5)
    rows = lines(path)
    rows[2] = rows[2].replace(b'"bytes":1002', b'"bytes":1003')  # one byte
    path.write_bytes(b"".join(rows))
    result = verify(path)
    assert not result.ok
    assert (result.first_bad_seq, result.reason, result.records) == (3, "edited", 2)


async def test_verify_catches_an_edit_whose_own_hash_was_recomputed(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    await write_ledger(path, 5)
    rows = lines(path)
    old = parse_line(rows[2])
    rows[2], _ = encode(usage(2, price="0.000"), old.seq, old.prev)
    path.write_bytes(b"".join(rows))
    result = verify(path)
    assert (result.ok, result.first_bad_seq, result.reason) == (False, 3, "edited")


async def test_verify_reports_a_deleted_line_as_removed(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    await write_ledger(path, 5)
    rows = lines(path)
    del rows[1]
    path.write_bytes(b"".join(rows))
    result = verify(path)
    assert (result.ok, result.first_bad_seq, result.reason) == (False, 2, "removed")


async def test_verify_reports_a_deleted_first_line_as_removed(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    await write_ledger(path, 3)
    path.write_bytes(b"".join(lines(path)[1:]))
    result = verify(path)
    assert (result.first_bad_seq, result.reason) == (1, "removed")


async def test_verify_reports_two_swapped_lines_as_reordered(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    await write_ledger(path, 5)
    rows = lines(path)
    rows[2], rows[3] = rows[3], rows[2]
    path.write_bytes(b"".join(rows))
    result = verify(path)
    assert (result.ok, result.first_bad_seq, result.reason) == (False, 3, "reordered")


async def test_verify_reports_a_duplicated_line_as_reordered(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    await write_ledger(path, 4)
    rows = lines(path)
    rows.insert(3, rows[1])
    path.write_bytes(b"".join(rows))
    result = verify(path)
    assert (result.first_bad_seq, result.reason) == (2, "reordered")


async def test_verify_reports_a_line_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    await write_ledger(path, 4)
    rows = lines(path)
    rows[1] = rows[1][:40] + b"\n"
    path.write_bytes(b"".join(rows))
    result = verify(path)
    assert (result.first_bad_seq, result.reason) == (2, "bad-json")


async def test_verify_needs_an_anchor_to_see_the_newest_records_removed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.jsonl"
    await write_ledger(path, 5)
    anchor = (5, verify(path).last_hash)
    path.write_bytes(b"".join(lines(path)[:3]))
    assert verify(path).ok  # a truncation alone leaves a valid, shorter chain
    result = verify(path, anchor=anchor)
    assert (result.ok, result.first_bad_seq, result.reason) == (False, 4, "truncated")


async def test_verify_with_an_anchor_sees_a_chain_rewritten_from_the_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.jsonl"
    await write_ledger(path, 3)
    anchor = (3, verify(path).last_hash)
    path.unlink()
    await write_ledger(path, 3, start=10)  # a whole new, self-consistent chain
    assert verify(path).ok
    result = verify(path, anchor=anchor)
    assert (result.ok, result.first_bad_seq, result.reason) == (False, 3, "edited")
    assert verify(path, anchor=(3, verify(path).last_hash)).ok


async def test_read_filters_by_time_with_since_inclusive_and_until_exclusive(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.jsonl"
    await write_ledger(path, 10)
    got = [r.time - T0 for r in read(path, since=T0 + 3, until=T0 + 6)]
    assert got == [3, 4, 5]


async def test_read_names_the_line_it_cannot_parse(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    await write_ledger(path, 3)
    rows = lines(path)
    rows[1] = b"garbage\n"
    path.write_bytes(b"".join(rows))
    with pytest.raises(LedgerFormatError, match=r"ledger\.jsonl:2: "):
        list(read(path))


def test_lines_after_a_trim_verify_from_the_trim_anchor(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    asyncio.run(write_ledger(path, 5))
    all_lines = lines(path)
    kept, cut = all_lines[3:], parse_line(all_lines[2])
    result = verify_lines(kept, start=(cut.seq, cut.hash))
    assert (result.ok, result.records, result.start_seq, result.last_seq) == (True, 2, 3, 5)
    # Without the anchor the same lines are a chain with its start missing.
    assert verify_lines(kept).reason == "removed"
    # A copy that does not continue from the anchor, or skips records after it.
    wrong = verify_lines(kept, start=(cut.seq, GENESIS))
    assert (wrong.ok, wrong.reason, wrong.first_bad_seq) == (False, "edited", 4)
    gap = verify_lines(all_lines[4:], start=(cut.seq, cut.hash))
    assert (gap.reason, gap.first_bad_seq) == ("removed", 4)
