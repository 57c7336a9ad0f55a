"""One usage record and its canonical, hash-chained line.

A line is one JSON object: the record's fields plus `seq` (1, 2, ...), `prev`
(the `hash` of the record before, 64 zeros for the first) and `hash`, the
SHA-256 of the canonical bytes of the object without `hash`. Canonical bytes are
JSON with sorted keys, no whitespace, UTF-8 with non-ASCII characters unescaped,
and floats in their shortest round-trip form. Because each hash covers `prev`,
changing or removing a record breaks every link after it unless the whole rest of
the chain is recomputed (see docs/ledger.md for what that means in practice).

Serialising a record is on the proxy's hot path (once per licensed request), so
it is two orjson calls and one SHA-256, nothing more.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from gatekeeper.errors import GatekeeperError

GENESIS: Final = "0" * 64

# A price is a plain non-negative decimal: exact, and comparable across records.
_PRICE: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_STR_FIELDS: Final = (
    "crawler", "currency", "license", "licensee", "path", "price", "section", "token_id",
)
_KEYS: Final = frozenset(
    {"time", "status", "bytes", "seq", "prev", "hash", *_STR_FIELDS}
)

FormatProblem = Literal["bad-json", "edited"]


class LedgerError(GatekeeperError):
    """A usage ledger cannot be opened, written, read or verified."""


class LedgerFormatError(LedgerError):
    """A ledger line or record is not in the ledger format.

    `problem` is "bad-json" when the line is not a JSON object at all and
    "edited" when it is JSON but not a line the ledger writes.
    """

    def __init__(self, message: str, problem: FormatProblem = "edited") -> None:
        super().__init__(message)
        self.problem: FormatProblem = problem


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One request served under a licence.

    `price` is a decimal string so amounts stay exact ("" when the use was free,
    and then `currency` is "" too); `section` is the content section the path
    belongs to ("" when the policy maps it to none).
    """

    time: float  # unix seconds
    licensee: str
    license: str
    crawler: str
    path: str  # the canonical path, as forwarded
    status: int
    bytes: int  # response body bytes sent to the client
    price: str = ""
    currency: str = ""
    section: str = ""
    token_id: str = ""


@dataclass(frozen=True, slots=True)
class ChainedRecord:
    """A record as read back from a line, with its place in the chain."""

    record: UsageRecord
    seq: int
    prev: str
    hash: str


def encode(record: UsageRecord, seq: int, prev: str) -> tuple[bytes, str]:
    """The line (with its newline) for `record` at `seq` after `prev`, and its hash.

    Raises `LedgerFormatError` for a price that is not a plain decimal or a time
    that is not finite: such a line could not be summed exactly or read back, so it
    must not enter the ledger.
    """
    if record.price and not is_plain_decimal(record.price):
        raise LedgerFormatError(
            f"usage record price {record.price!r} is not a plain decimal such as '0.002'"
        )
    fields = _fields(record, seq, prev)
    if not math.isfinite(fields["time"]):
        # orjson would write null, and the line could never be read back.
        raise LedgerFormatError(f"usage record time {record.time!r} is not a finite number")
    try:
        body = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        # orjson refuses lone surrogates (undecodable bytes smuggled through str);
        # replace them so the line stays valid UTF-8 and re-serialises identically.
        fields = {k: _valid_utf8(v) if isinstance(v, str) else v for k, v in fields.items()}
        body = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(body).hexdigest()
    fields["hash"] = digest
    line = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)
    return line, digest


def is_plain_decimal(price: str) -> bool:
    """True for a price the ledger accepts: digits, optionally a point and digits."""
    return _PRICE.fullmatch(price) is not None


def parse_line(line: bytes) -> ChainedRecord:
    """The record in one ledger line (with or without its newline).

    Checks the shape only; whether the hash and chain are right is `verify`'s job.
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise LedgerFormatError(f"not JSON: {exc}", "bad-json") from exc
    if not isinstance(obj, dict):
        raise LedgerFormatError("not a JSON object", "bad-json")
    keys = set(obj)
    if keys != _KEYS:
        missing, extra = sorted(_KEYS - keys), sorted(keys - _KEYS)
        raise LedgerFormatError(f"wrong fields (missing {missing}, unexpected {extra})")
    for name in _STR_FIELDS:
        if not isinstance(obj[name], str):
            raise LedgerFormatError(f"{name} must be a string")
    for name in ("status", "bytes", "seq"):
        if not _is_int(obj[name]):
            raise LedgerFormatError(f"{name} must be an integer")
    when = obj["time"]
    if not isinstance(when, (int, float)) or isinstance(when, bool):
        raise LedgerFormatError("time must be a number")
    for name in ("prev", "hash"):
        if not isinstance(obj[name], str) or _HEX64.fullmatch(obj[name]) is None:
            raise LedgerFormatError(f"{name} must be 64 lowercase hex digits")
    if obj["price"] and not is_plain_decimal(obj["price"]):
        raise LedgerFormatError(f"price {obj['price']!r} is not a plain decimal")
    record = UsageRecord(
        time=float(when),
        licensee=obj["licensee"],
        license=obj["license"],
        crawler=obj["crawler"],
        path=obj["path"],
        status=obj["status"],
        bytes=obj["bytes"],
        price=obj["price"],
        currency=obj["currency"],
        section=obj["section"],
        token_id=obj["token_id"],
    )
    return ChainedRecord(record, obj["seq"], obj["prev"], obj["hash"])


def _fields(record: UsageRecord, seq: int, prev: str) -> dict[str, Any]:
    # Coerced so that a caller passing an int time or a bool status still gets the
    # same bytes as the parser's re-serialisation, which `verify` compares.
    return {
        "bytes": int(record.bytes),
        "crawler": record.crawler,
        "currency": record.currency,
        "license": record.license,
        "licensee": record.licensee,
        "path": record.path,
        "prev": prev,
        "price": record.price,
        "section": record.section,
        "seq": seq,
        "status": int(record.status),
        "time": float(record.time),
        "token_id": record.token_id,
    }


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _valid_utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")
