"""Decision vectors: request -> classification -> decision, with the real catalog
and the shipped policies. The same files drive the proxy in the integration tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from multidict import CIMultiDict, CIMultiDictProxy

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.facts import RequestFacts
from gatekeeper.gate import Gate
from gatekeeper.policy.loader import load_default_policy, load_policy_file
from gatekeeper.store.memory import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
VECTORS = sorted((ROOT / "tests" / "vectors" / "decisions").glob("*.yaml"))


def load_cases() -> list[tuple[str, str, dict[str, Any]]]:
    cases = []
    for file in VECTORS:
        doc = yaml.safe_load(file.read_text())
        for case in doc["cases"]:
            cases.append((doc["policy"], file.stem, case))
    return cases


CASES = load_cases()


@pytest.fixture(scope="module")
def catalog():  # type: ignore[no-untyped-def]
    return load_catalog()


@pytest.mark.parametrize(
    ("policy_name", "case"),
    [(p, c) for p, _, c in CASES],
    ids=[f"{f}:{c['name']}" for _, f, c in CASES],
)
async def test_decision_vector(policy_name: str, case: dict[str, Any], catalog) -> None:  # type: ignore[no-untyped-def]
    if policy_name == "default":
        policy = load_default_policy(catalog)
    else:
        policy = load_policy_file(str(ROOT / policy_name), catalog)
    headers: CIMultiDict[str] = CIMultiDict(case.get("headers", {}))
    headers["User-Agent"] = case["ua"]
    facts = RequestFacts(
        case.get("method", "GET"), case.get("host", "example.com"), case["path"], "",
        CIMultiDictProxy(headers), case.get("ip", "192.0.2.10"), 1_000_000.0,
    )
    outcome = await Gate(catalog, lambda: policy, MemoryStore()).decide(facts)
    cls, decision = outcome.classification, outcome.decision
    got = {
        "kind": cls.kind.value,
        "crawler": cls.crawler.name if cls.crawler else None,
        "purpose": cls.purpose.value if cls.purpose else None,
        "identity": outcome.identity.value,
        "action": decision.action,
        "rule": decision.rule,
        "forward": decision.forward,
        "status": decision.status,
        "reason": decision.reason.value,
    }
    for key, want in case["expect"].items():
        assert got[key] == want, f"{key}: expected {want!r}, got {got[key]!r} ({got})"
