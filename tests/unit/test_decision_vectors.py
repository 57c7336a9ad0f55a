"""Decision vectors: request -> classification -> decision, with the real catalog
and the shipped policies. The same files drive the proxy in the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from multidict import CIMultiDict, CIMultiDictProxy

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.behaviour import BehaviourConfig
from gatekeeper.core.facts import RequestFacts
from gatekeeper.explain import StaticRobots
from gatekeeper.gate import Gate
from gatekeeper.policy.loader import load_default_policy, load_policy_file
from gatekeeper.store.memory import MemoryStore
from gatekeeper.verify.identity import IdentityVerifier
from gatekeeper.verify.ranges import RangeRegistry
from gatekeeper.verify.rdns import ReverseDnsVerifier
from tests.support.dns_server import DnsTestServer
from tests.support.vector_dns import vector_zone

ROOT = Path(__file__).resolve().parents[2]
VECTORS = sorted((ROOT / "tests" / "vectors" / "decisions").glob("*.yaml"))


def load_cases() -> list[tuple[str, str, dict[str, Any]]]:
    cases = []
    for file in VECTORS:
        doc = yaml.safe_load(file.read_text())
        for case in doc["cases"]:
            cases.append((doc["policy"], file.stem, {"robots_txt": doc.get("robots_txt"), **case}))
    return cases




CASES = load_cases()


@pytest.fixture(scope="module")
def catalog():  # type: ignore[no-untyped-def]
    return load_catalog()


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsTestServer]:
    with DnsTestServer(vector_zone()) as server:
        yield server


@pytest.mark.parametrize(
    ("policy_name", "case"),
    [(p, c) for p, _, c in CASES],
    ids=[f"{f}:{c['name']}" for _, f, c in CASES],
)
async def test_decision_vector(policy_name: str, case: dict[str, Any], catalog,  # type: ignore[no-untyped-def]
                               dns: DnsTestServer) -> None:
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
    # The packaged range snapshots, and reverse DNS answered by the vectors' zone.
    rdns = ReverseDnsVerifier([dns.address])
    identity = IdentityVerifier(catalog, RangeRegistry.load, rdns=rdns, rdns_budget=None)
    try:
        robots = StaticRobots(case["robots_txt"].encode()) if case["robots_txt"] else None
        outcome = await Gate(catalog, lambda: policy, MemoryStore(), identity=identity,
                             robots=robots, behaviour=BehaviourConfig()).decide(facts)
    finally:
        await rdns.close()
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
