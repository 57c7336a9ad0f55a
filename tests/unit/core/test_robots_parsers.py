"""The conformance vectors run against Protego and robotexclusionrulesparser directly.

Gatekeeper decides robots.txt compliance with its own matcher
(`gatekeeper.core.robots`); these tests keep the measurement that justified that
choice (docs/robots-compliance.md) honest. Each library's failing case ids must
equal the list in tests/vectors/robots/known-failures.yaml, so an upgrade that
fixes or breaks a case shows up here, in either direction.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import robotexclusionrulesparser
import yaml
from protego import Protego

from gatekeeper.core.robots import RobotsRules
from tests.unit.core.test_robots import CASES, VECTORS, RobotsCase

KNOWN_FAILURES = VECTORS / "known-failures.yaml"


def _protego(case: RobotsCase) -> bool:
    parser = Protego.parse(case.body.decode("utf-8", errors="replace"))
    return parser.can_fetch(case.url, case.agent)


def _robotexclusionrulesparser(case: RobotsCase) -> bool:
    parser = robotexclusionrulesparser.RobotExclusionRulesParser()
    parser.parse(case.body.decode("utf-8", errors="replace"))
    return bool(parser.is_allowed(case.agent, case.url))


def _gatekeeper(case: RobotsCase) -> bool:
    return RobotsRules.parse(case.body).verdict(case.agent, case.path).allowed


ENGINES: dict[str, Callable[[RobotsCase], bool]] = {
    "protego": _protego,
    "robotexclusionrulesparser": _robotexclusionrulesparser,
    "gatekeeper": _gatekeeper,
}


def _failing(engine: Callable[[RobotsCase], bool]) -> list[str]:
    failing = []
    for case in CASES:
        try:
            allowed = engine(case)
        except Exception:  # a parser that raises on a case fails that case
            failing.append(case.id)
            continue
        if allowed is not case.allowed:
            failing.append(case.id)
    return failing


def _known(path: Path) -> dict[str, list[str]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {name: list(entry["failing"]) for name, entry in data["engines"].items()}


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_each_engine_fails_exactly_its_recorded_cases(name: str) -> None:
    recorded = _known(KNOWN_FAILURES)[name]
    failing = _failing(ENGINES[name])
    newly_failing = sorted(set(failing) - set(recorded))
    newly_passing = sorted(set(recorded) - set(failing))
    assert (newly_failing, newly_passing) == ([], [])
    assert failing == recorded  # same order as the vectors: the file stays reviewable


def test_the_recorded_counts_match_the_lists() -> None:
    data = yaml.safe_load(KNOWN_FAILURES.read_text(encoding="utf-8"))
    assert data["cases"] == len(CASES)
    for entry in data["engines"].values():
        assert entry["failed"] == len(entry["failing"])
        assert entry["passed"] == len(CASES) - entry["failed"]


def test_gatekeeper_passes_every_case_and_protego_nearly_all() -> None:
    known = _known(KNOWN_FAILURES)
    assert known["gatekeeper"] == []
    assert len(known["protego"]) < len(known["robotexclusionrulesparser"])
