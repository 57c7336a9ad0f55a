"""Content owners: who owns a path, what their stance refuses, and the registry file."""

from __future__ import annotations

import json
import os
import time
from decimal import Decimal
from pathlib import Path

import pytest

from gatekeeper.core.catalog import Purpose
from gatekeeper.core.owners import Stance, refuses
from gatekeeper.ledger.export import Row, with_shares
from gatekeeper.licensing.owners_registry import OwnerRegistry, OwnersError

ALICE = {"paths": ["/articles/alice/**"], "stance": "opt-out"}
BOB = {"paths": ["/articles/bob/**", "/bob"], "stance": "licensable", "share": "70"}


def test_the_first_owner_whose_paths_match_owns_the_path(tmp_path: Path) -> None:
    registry = OwnerRegistry(tmp_path / "owners.json")
    registry.put("alice", ALICE)
    registry.put("bob", BOB)
    owners = registry.current()
    alice = owners.owner_of("/articles/alice/2026/x")
    assert alice is not None
    assert alice.stance is Stance.OPT_OUT
    bob = owners.owner_of("/bob")
    assert bob is not None
    assert bob.share == Decimal(70)
    assert owners.owner_of("/articles/carol/1") is None
    assert owners.shares() == {"bob": Decimal(70)}


@pytest.mark.parametrize(
    ("purpose", "refused"),
    [(Purpose.AI_TRAINING, True), (Purpose.AI_SEARCH, True), (Purpose.AI_ASSISTANT, True),
     (Purpose.AI_AGENT, True), (Purpose.UNDECLARED_BOT, True),
     (Purpose.SEARCH_ENGINE, False), (Purpose.ARCHIVER, False), (None, False)],
)
def test_an_opt_out_refuses_every_ai_use_and_nothing_else(
    tmp_path: Path, purpose: Purpose | None, refused: bool
) -> None:
    registry = OwnerRegistry(tmp_path / "owners.json")
    registry.put("alice", ALICE)
    registry.put("bob", BOB)
    owners = registry.current()
    assert refuses(owners.owner_of("/articles/alice/1"), purpose) is refused
    assert refuses(owners.owner_of("/articles/bob/1"), purpose) is False


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"paths": [], "stance": "opt-out"}, "paths: a non-empty list"),
        ({"paths": ["/a/**"], "stance": "maybe"}, "stance: 'maybe' is not one of"),
        ({"paths": ["/a/**"], "stance": "licensable", "share": "101"}, "share: '101'"),
        ({"paths": ["/a/**"], "stance": "opt-out", "share": "10"}, "takes no licence revenue"),
        ({"paths": ["/a/{"], "stance": "opt-out"}, r"paths\[0\]: bad glob"),
        ({"paths": ["/a"], "stance": "opt-out", "colour": 1}, "unknown field"),
    ],
)
def test_a_bad_entry_is_refused_and_nothing_is_written(
    tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    path = tmp_path / "owners.json"
    registry = OwnerRegistry(path)
    registry.put("alice", ALICE)
    before = path.read_bytes()
    with pytest.raises(OwnersError, match=message):
        registry.put("x", entry)
    assert path.read_bytes() == before


def test_an_edited_file_is_seen_and_a_broken_one_keeps_the_last_good(tmp_path: Path) -> None:
    path = tmp_path / "owners.json"
    registry = OwnerRegistry(path)
    registry.put("alice", ALICE)
    other = OwnerRegistry(path)  # the running proxy's view
    assert other.current().owner_of("/articles/alice/1") is not None
    path.write_text(json.dumps({"version": 1, "owners": [{"name": "bob", **BOB}]}))
    future = time.time() + 5
    os.utime(path, (future, future))
    other._checked_at = float("-inf")  # the once-a-second look, now
    assert other.current().owner_of("/articles/alice/1") is None
    path.write_text("{not json")
    os.utime(path, (future + 5, future + 5))
    other._checked_at = float("-inf")
    assert other.current().owner_of("/bob") is not None  # last good kept
    assert other.last_error is not None
    assert "not valid JSON" in other.last_error


def test_owners_are_paid_their_share_exactly() -> None:
    rows = [Row("bob", 3, 30, {"USD": Decimal("0.006")}, 0.0, 1.0),
            Row("", 1, 10, {"USD": Decimal("0.002")}, 0.0, 1.0)]
    paid = with_shares(rows, {"bob": Decimal("33.3")})
    assert paid[0].revenue == {"USD": Decimal("0.0019980")}
    assert paid[1].revenue == {"USD": Decimal(0)}


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", "2026-11-29T13:05:00", "2026-11-29T00:00:00", "2026-11-30T00:00:00"),
        ("month", "2026-12-31T23:59:59", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("month", "2026-02-10T00:00:00", "2026-02-01T00:00:00", "2026-03-01T00:00:00"),
        ("year", "2026-07-01T00:00:00", "2026-01-01T00:00:00", "2027-01-01T00:00:00"),
    ],
)
def test_quota_periods_are_calendar_periods_in_utc(
    period: str, now: str, start: str, end: str
) -> None:
    import calendar

    from gatekeeper.core.model import PricePer
    from gatekeeper.licensing.check import period_bounds

    def unix(text: str) -> float:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S")))

    assert period_bounds(PricePer(period), unix(now)) == (unix(start), unix(end))
