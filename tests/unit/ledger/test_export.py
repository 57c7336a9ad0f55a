"""Ledger aggregates: grouping, exact money, CSV and JSON shapes, time bounds."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest

from gatekeeper.ledger.export import Row, aggregate, iso_time, parse_bound, to_csv, to_json
from gatekeeper.ledger.file import FileLedger, read
from gatekeeper.ledger.record import LedgerError, UsageRecord

T0 = 1_793_491_200.0  # 2026-11-01T00:00:00Z
DAY = 86_400.0


def use(
    licensee: str,
    license: str,
    section: str,
    price: str = "0.01",
    currency: str = "USD",
    *,
    at: float = T0,
    size: int = 100,
) -> UsageRecord:
    return UsageRecord(
        time=at, licensee=licensee, license=license, crawler="GPTBot", path="/x",
        status=200, bytes=size, price=price, currency=currency if price else "",
        section=section, token_id="t",
    )


RECORDS = [
    use("acme", "acme-news", "news", "0.01", at=T0 + 5),
    use("acme", "acme-docs", "docs", "0.02", at=T0 + 1),
    use("acme", "acme-docs", "docs", "0.50", "EUR", at=T0 + 9),
    use("zeta", "zeta-all", "news", "", at=T0 + 3),
    use("zeta", "zeta-all", "", "0.03", at=T0 + 7, size=1),
]


def by_key(rows: list[Row]) -> dict[str, Row]:
    return {row.key: row for row in rows}


def test_grouping_by_licensee_counts_bytes_times_and_revenue_per_currency() -> None:
    rows = aggregate(RECORDS, "licensee")
    assert [r.key for r in rows] == ["acme", "zeta"]
    acme, zeta = rows
    assert (acme.count, acme.bytes, acme.first, acme.last) == (3, 300, T0 + 1, T0 + 9)
    assert acme.revenue == {"EUR": Decimal("0.50"), "USD": Decimal("0.03")}
    assert (zeta.count, zeta.bytes, zeta.revenue) == (2, 101, {"USD": Decimal("0.03")})


def test_grouping_by_license_keeps_each_licence_apart() -> None:
    rows = by_key(aggregate(RECORDS, "license"))
    assert sorted(rows) == ["acme-docs", "acme-news", "zeta-all"]
    assert rows["acme-docs"].count == 2
    assert rows["acme-news"].revenue == {"USD": Decimal("0.01")}


def test_grouping_by_section_puts_records_without_one_under_the_empty_key() -> None:
    rows = by_key(aggregate(RECORDS, "section"))
    assert sorted(rows) == ["", "docs", "news"]
    assert rows["news"].count == 2
    assert rows["news"].revenue == {"USD": Decimal("0.01")}
    assert rows[""].count == 1


def test_grouping_by_owner_maps_sections_and_keeps_unowned_use_in_the_total() -> None:
    owners = {"news": "newsroom", "docs": "newsroom"}
    rows = by_key(aggregate(RECORDS, "owner", owners=owners))
    assert sorted(rows) == ["", "newsroom"]
    assert rows["newsroom"].count == 4
    assert rows["newsroom"].revenue == {"EUR": Decimal("0.50"), "USD": Decimal("0.03")}
    assert sum(r.count for r in rows.values()) == len(RECORDS)


def test_grouping_by_owner_without_a_mapping_leaves_everything_unowned() -> None:
    assert [(r.key, r.count) for r in aggregate(RECORDS, "owner")] == [("", 5)]


def test_free_use_counts_requests_but_adds_no_revenue() -> None:
    (row,) = aggregate([use("a", "l", "s", "")] * 3, "licensee")
    assert (row.count, row.revenue) == (3, {})


def test_a_thousand_uses_at_a_tenth_of_a_cent_sum_to_exactly_one_dollar() -> None:
    (row,) = aggregate([use("a", "l", "s", "0.001")] * 1000, "licensee")
    assert str(row.revenue["USD"]) == "1.000"
    assert row.revenue["USD"] == Decimal(1)


def test_sums_beyond_the_default_decimal_precision_are_not_rounded() -> None:
    many_digits = "1234567890123456789012345.000000000001"
    (row,) = aggregate([use("a", "l", "s", many_digits)] * 2, "licensee")
    assert str(row.revenue["USD"]) == "2469135780246913578024690.000000000002"


def test_an_unknown_grouping_is_refused_with_the_choices() -> None:
    with pytest.raises(LedgerError, match="licensee, license, section, owner"):
        aggregate(RECORDS, "crawler")  # type: ignore[arg-type]


def test_a_record_with_a_bad_price_is_refused_with_who_and_when() -> None:
    with pytest.raises(LedgerError, match=r"'acme'.*'1e3'"):
        aggregate([use("acme", "l", "s", "1e3")], "licensee")


def test_csv_has_a_header_then_one_row_per_key_with_a_revenue_column_per_currency() -> None:
    text = to_csv(aggregate(RECORDS, "licensee"))
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["key", "count", "bytes", "first", "last", "revenue_EUR", "revenue_USD"]
    assert table[1] == ["acme", "3", "300", "2026-11-01T00:00:01.000000Z",
                        "2026-11-01T00:00:09.000000Z", "0.50", "0.03"]
    assert table[2][0] == "zeta"
    assert table[2][5:] == ["0", "0.03"]
    assert len(table) == 3


def test_csv_quotes_a_key_that_contains_a_comma() -> None:
    text = to_csv(aggregate([use("Acme, Inc.", "l", "s")], "licensee"))
    assert text.splitlines()[1].startswith('"Acme, Inc.",1,')


def test_json_is_an_array_of_rows_with_amounts_as_decimal_strings() -> None:
    data = json.loads(to_json(aggregate([use("a", "l", "s", "0.001")] * 1000, "licensee")))
    assert data == [{
        "key": "a", "count": 1000, "bytes": 100_000,
        "first": "2026-11-01T00:00:00.000000Z", "last": "2026-11-01T00:00:00.000000Z",
        "revenue": {"USD": "1.000"},
    }]


def test_no_records_export_as_a_header_only_csv_and_an_empty_json_array() -> None:
    assert to_csv(aggregate([], "licensee")) == "key,count,bytes,first,last\n"
    assert json.loads(to_json(aggregate([], "licensee"))) == []


async def test_since_and_until_select_the_records_of_a_month(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = FileLedger(path)
    days = [-1, 0, 15, 29, 30]  # October 31st .. December 1st
    for day in days:
        ledger.append(use("acme", "l", "s", "1", at=T0 + day * DAY))
    await ledger.close()
    since, until = parse_bound("2026-11-01"), parse_bound("2026-12-01")
    (row,) = aggregate(read(path, since=since, until=until), "licensee")
    assert row.count == 3
    assert row.revenue == {"USD": Decimal(3)}
    assert iso_time(row.first) == "2026-11-01T00:00:00.000000Z"
    assert iso_time(row.last) == "2026-11-30T00:00:00.000000Z"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01", T0),
        ("2026-11-01T00:00:00Z", T0),
        ("2026-11-01T01:30:00", T0 + 5400),
        ("2026-11-01T01:00:00+01:00", T0),
        ("2026-11-01 00:00:10", T0 + 10),
    ],
)
def test_time_bounds_are_iso_dates_or_datetimes_in_utc(text: str, expected: float) -> None:
    assert parse_bound(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "01/11/2026", ""])
def test_a_time_bound_that_is_not_iso_is_refused_with_an_example(text: str) -> None:
    with pytest.raises(LedgerError, match="2026-11-01T12:00:00Z"):
        parse_bound(text)
