"""The decision vectors of tests/vectors/decisions, sent through the real proxy:
the adapter answers exactly what the core decided, and forwards only what it allowed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.integration.conftest import StartGate, Upstream
from tests.support.dns_server import DnsTestServer
from tests.support.vector_dns import vector_zone

ROOT = Path(__file__).resolve().parents[2]
CASES: list[tuple[str, dict[str, Any]]] = []
for file in sorted((ROOT / "tests" / "vectors" / "decisions").glob("*.yaml")):
    doc = yaml.safe_load(file.read_text())
    CASES += [(doc["policy"], {"robots_txt": doc.get("robots_txt"), **case})
              for case in doc["cases"]]


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsTestServer]:
    with DnsTestServer(vector_zone()) as server:
        yield server


@pytest.mark.parametrize(("policy", "case"), CASES, ids=[c["name"] for _, c in CASES])
async def test_proxy_answers_what_the_core_decided(
    policy: str, case: dict[str, Any], upstream: Upstream, start_gatekeeper: StartGate,
    dns: DnsTestServer,
) -> None:
    text = None if policy == "default" else (ROOT / policy).read_text()
    if case["robots_txt"]:
        upstream.robots_txt = case["robots_txt"]
    # The test client stands for a trusted proxy that forwards the case's client
    # address; reverse DNS goes to the vectors' zone and may take its time.
    gk = await start_gatekeeper(
        upstream.url, text, trusted_proxies=("127.0.0.0/8",),
        dns_servers=(f"{dns.address[0]}:{dns.address[1]}",), rdns_budget=5.0,
    )
    headers = {"User-Agent": case["ua"], "X-Forwarded-For": case.get("ip", "192.0.2.10"),
               **case.get("headers", {})}
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as s, s.request(
        case.get("method", "GET"), gk.url + case["path"], headers=headers
    ) as r:
        status = r.status
        body = await r.read()
    expect = case["expect"]
    if case["path"] in ("/robots.txt", "/.well-known/tdmrep.json"):
        # Declarations are never gated, and Gatekeeper answers robots.txt itself: the
        # origin's file with the policy's groups (docs/declarations.md).
        assert status == 200
        assert upstream.paths() == []
        assert body
    elif expect.get("forward", not expect.get("status")):
        assert status == 200
        assert upstream.paths() == [case["path"]]
    else:
        assert status == expect["status"]
        assert upstream.seen == []
