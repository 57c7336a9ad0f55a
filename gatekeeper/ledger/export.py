"""Ledger aggregates for billing and revenue sharing, as CSV or JSON.

Records are grouped per licensee, licence, content section, or content owner
(sections mapped to the people who wrote them), and each group gets its request
count, bytes, first and last time, and revenue per currency. Money is summed as
`Decimal` with a precision that cannot round, and written as decimal strings, so
1000 uses at 0.001 USD come to exactly 1.000 USD in both formats.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from typing import Any, Final, Literal

import orjson

from gatekeeper.ledger.record import LedgerError, UsageRecord, is_plain_decimal

By = Literal["licensee", "license", "section", "owner"]
BY_KEYS: Final[tuple[By, ...]] = ("licensee", "license", "section", "owner")

# Wide enough that no sum of ledger prices is ever rounded.
_EXACT: Final = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


@dataclass(frozen=True, slots=True)
class Row:
    """One group of records. `key` is "" for records without a section or owner."""

    key: str
    count: int
    bytes: int
    revenue: Mapping[str, Decimal]  # currency -> amount; free use adds nothing
    first: float  # unix seconds of the earliest record
    last: float


@dataclass(slots=True)
class _Group:
    count: int
    bytes: int
    first: float
    last: float
    revenue: dict[str, Decimal] = field(default_factory=dict)


def aggregate(
    records: Iterable[UsageRecord], by: By, *, owners: Mapping[str, str] | None = None
) -> list[Row]:
    """Group `records` by `by`; rows sorted by key.

    For `by="owner"`, `owners` maps a section to its owner's name; a record whose
    section has no owner lands in the "" row, so the totals still add up.
    """
    if by not in BY_KEYS:
        raise LedgerError(f"cannot group the ledger by {by!r}; use one of {', '.join(BY_KEYS)}")
    owner_of = owners or {}
    groups: dict[str, _Group] = {}
    for record in records:
        key = _key(record, by, owner_of)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(0, 0, record.time, record.time)
        group.count += 1
        group.bytes += record.bytes
        group.first = min(group.first, record.time)
        group.last = max(group.last, record.time)
        if record.price:
            spent = group.revenue.get(record.currency, Decimal(0))
            group.revenue[record.currency] = _EXACT.add(spent, _price(record))
    return [
        Row(key, g.count, g.bytes, dict(sorted(g.revenue.items())), g.first, g.last)
        for key, g in sorted(groups.items())
    ]


def _price(record: UsageRecord) -> Decimal:
    if not is_plain_decimal(record.price):
        raise LedgerError(
            f"usage record at {iso_time(record.time)} for {record.licensee!r} has price "
            f"{record.price!r}, not a plain decimal"
        )
    return Decimal(record.price)


def _key(record: UsageRecord, by: By, owners: Mapping[str, str]) -> str:
    if by == "licensee":
        return record.licensee
    if by == "license":
        return record.license
    if by == "section":
        return record.section
    return owners.get(record.section, "")


def to_csv(rows: Sequence[Row]) -> str:
    """One line per row: key, count, bytes, first, last, then `revenue_<CUR>` per
    currency found in any row ("0" where a row has none)."""
    currencies = _currencies(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["key", "count", "bytes", "first", "last",
                     *(f"revenue_{c}" for c in currencies)])
    for row in rows:
        writer.writerow([
            row.key, row.count, row.bytes, iso_time(row.first), iso_time(row.last),
            *(str(row.revenue.get(c, Decimal(0))) for c in currencies),
        ])
    return out.getvalue()


def to_json(rows: Sequence[Row]) -> str:
    """A JSON array of row objects; amounts are decimal strings, times ISO 8601 UTC."""
    return orjson.dumps([_json_row(row) for row in rows], option=orjson.OPT_INDENT_2).decode()


def _json_row(row: Row) -> dict[str, Any]:
    return {
        "key": row.key,
        "count": row.count,
        "bytes": row.bytes,
        "first": iso_time(row.first),
        "last": iso_time(row.last),
        "revenue": {c: str(row.revenue[c]) for c in sorted(row.revenue)},
    }


def _currencies(rows: Sequence[Row]) -> list[str]:
    return sorted({c for row in rows for c in row.revenue})


def iso_time(when: float) -> str:
    """Unix seconds as ISO 8601 UTC with microseconds, e.g. 2026-11-01T00:00:00.000000Z."""
    moment = dt.datetime.fromtimestamp(when, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_bound(text: str) -> float:
    """A `--since`/`--until` value as unix seconds.

    Accepts an ISO date (midnight UTC) or datetime; a datetime without an offset
    is UTC. Raises `LedgerError` naming the value otherwise.
    """
    try:
        if "T" not in text and " " not in text.strip():
            day = dt.date.fromisoformat(text)
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise LedgerError(
            f"{text!r} is not an ISO date or datetime (2026-11-01 or 2026-11-01T12:00:00Z)"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def with_shares(rows: Sequence[Row], shares: Mapping[str, Decimal]) -> list[Row]:
    """Owner rows whose revenue is each owner's share of it (`shares`: owner -> percent).

    The row of records without an owner ("") and owners without a share get nothing;
    amounts stay exact (no rounding: a share of a fraction of a cent is kept)."""
    out = []
    for row in rows:
        percent = shares.get(row.key, Decimal(0)) if row.key else Decimal(0)
        owed = {c: _EXACT.multiply(amount, percent) / 100 for c, amount in row.revenue.items()}
        out.append(Row(row.key, row.count, row.bytes, owed, row.first, row.last))
    return out
