"""The decision vectors of tests/vectors/decisions, sent through the real proxy:
the adapter answers exactly what the core decided, and forwards only what it allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.integration.conftest import StartGate, Upstream

ROOT = Path(__file__).resolve().parents[2]
CASES: list[tuple[str, dict[str, Any]]] = []
for file in sorted((ROOT / "tests" / "vectors" / "decisions").glob("*.yaml")):
    doc = yaml.safe_load(file.read_text())
    CASES += [(doc["policy"], case) for case in doc["cases"]]


@pytest.mark.parametrize(("policy", "case"), CASES, ids=[c["name"] for _, c in CASES])
async def test_proxy_answers_what_the_core_decided(
    policy: str, case: dict[str, Any], upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    text = None if policy == "default" else (ROOT / policy).read_text()
    gk = await start_gatekeeper(upstream.url, text)
    headers = {"User-Agent": case["ua"], **case.get("headers", {})}
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as s, s.request(
        case.get("method", "GET"), gk.url + case["path"], headers=headers
    ) as r:
        status = r.status
        await r.read()
    expect = case["expect"]
    if expect.get("forward", not expect.get("status")):
        assert status == 200
        assert upstream.paths() == [case["path"]]
    else:
        assert status == expect["status"]
        assert upstream.seen == []
