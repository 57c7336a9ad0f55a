"""The running proxy's range-list refresh, as `wiring` sets it up: a refreshed list
verifies the next request, and the age and update metrics follow."""

from __future__ import annotations

import dataclasses
import json
import ssl
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web
from prometheus_client import CollectorRegistry

from gatekeeper import wiring
from gatekeeper.settings import Settings
from tests.support.https_server import https_server

GPTBOT = "Mozilla/5.0 (compatible; GPTBot/1.2; +https://openai.com/gptbot)"


@pytest.fixture
async def list_server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """An HTTPS server publishing a GPTBot list, behind a test CA that the sessions
    the wiring makes for verification trust (and only they)."""
    ca = trustme.CA()
    trust = ssl.create_default_context()
    ca.configure_trust(trust)

    def trusting_session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust))

    monkeypatch.setattr(wiring, "verification_session", trusting_session)
    body = json.dumps({"creationTime": "2026-11-28T00:00:00",
                       "prefixes": [{"ipv4Prefix": "198.51.100.0/24"}]})

    async def gptbot(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="application/json",
                            headers={"ETag": '"v1"'})

    app = web.Application()
    app.router.add_get("/gptbot.json", gptbot)
    async with https_server(app, ca) as base:
        yield base + "/gptbot.json"


async def test_background_refresh_swaps_the_lists_the_gate_uses(
    tmp_path: Path, list_server: str
) -> None:
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps({"version": 1, "sources": {"openai-gptbot": {
        "operator": "OpenAI", "url": list_server, "format": "prefixes", "snapshot": None}}}))
    settings = dataclasses.replace(
        Settings(), upstream="http://127.0.0.1:9", ranges_sources=str(sources),
        ranges_cache_dir=str(tmp_path / "cache"), ranges_refresh_interval=3600.0,
    )
    c = wiring.build(settings, CollectorRegistry())
    value = c.registry.get_sample_value
    assert value("gatekeeper_crawler_ranges_prefixes", {"list": "openai-gptbot"}) == 0
    refresher = wiring.range_refresher(c)
    assert refresher is not None
    await refresher.refresh()
    assert c.identity.ranges.current.match(["openai-gptbot"], "198.51.100.7") == "openai-gptbot"
    assert value("gatekeeper_crawler_ranges_prefixes", {"list": "openai-gptbot"}) == 1
    assert value("gatekeeper_crawler_ranges_updates_total",
                 {"list": "openai-gptbot", "result": "updated"}) == 1
    age = value("gatekeeper_crawler_ranges_age_seconds", {"list": "openai-gptbot"})
    assert age is not None
    assert 0 <= age < 60
    # The next request from that network is verified by the fresh list.
    from multidict import CIMultiDict, CIMultiDictProxy

    from gatekeeper.core.facts import RequestFacts

    facts = RequestFacts("GET", "example.com", "/", "",
                         CIMultiDictProxy(CIMultiDict({"User-Agent": GPTBOT})),
                         "198.51.100.7", 0.0)
    outcome = await c.gate.decide(facts)
    assert outcome.identity.value == "verified"
    await c.identity.close()


async def test_refresh_interval_zero_switches_the_refresher_off() -> None:
    settings = dataclasses.replace(Settings(), upstream="http://127.0.0.1:9",
                                   ranges_refresh_interval=0.0)
    c = wiring.build(settings, CollectorRegistry())
    assert wiring.range_refresher(c) is None
    await c.identity.close()


async def test_an_unreachable_list_keeps_serving_the_snapshot(tmp_path: Path) -> None:
    snapshot = resources.files("gatekeeper.data").joinpath("ip-ranges/openai-gptbot.json")
    (tmp_path / "openai-gptbot.json").write_bytes(snapshot.read_bytes())
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps({"version": 1, "sources": {"openai-gptbot": {
        "operator": "OpenAI", "url": "https://127.0.0.1:9/gptbot.json", "format": "prefixes",
        "snapshot": "openai-gptbot.json"}}}))
    settings = dataclasses.replace(Settings(), upstream="http://127.0.0.1:9",
                                   ranges_sources=str(sources),
                                   ranges_cache_dir=str(tmp_path / "cache"))
    c = wiring.build(settings, CollectorRegistry())
    refresher = wiring.range_refresher(c)
    assert refresher is not None
    # Nothing listens on port 9: the update fails, the snapshot stays.
    await refresher.refresh()
    assert c.identity.ranges.current.info("openai-gptbot").origin == "snapshot"
    assert c.identity.ranges.current.match(["openai-gptbot"], "20.171.206.7") is not None
    assert c.registry.get_sample_value("gatekeeper_crawler_ranges_updates_total",
                                       {"list": "openai-gptbot", "result": "failed"}) == 1
    await c.identity.close()
