"""The Redis store going away under the real proxy: stopped, paused, back again.

The documented failure modes (docs/scaling-out.md): rate limits fall back to this
process's counters (or let everything through with `rate_limit_fallback: open`),
behaviour windows to this process's, licence checks that need the store fail
closed with 503 and Retry-After; blocks and signature checks never depend on the
store; each fallback is counted; after a failure the store is not asked for
`store_retry_interval` seconds, so later requests do not wait for it; the store
recovers without a restart."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gatekeeper.licensing.keys import Keyring
from gatekeeper.licensing.licensees import Licensees
from gatekeeper.licensing.tokens import LicenseClaims, issue_token
from gatekeeper.settings import Settings
from tests.integration.conftest import GPTBOT, StartGate, Upstream
from tests.integration.test_identity_proxy import AGENT_UA, sign
from tests.integration.test_keydir import SIGNER
from tests.support.redis_server import RedisTestServer

POLICY = """
version: 1
licenses:
  - {name: train, usages: [ai-train]}
rules:
  - {name: slow-assistants, match: {crawlers: [ChatGPT-User]},
     action: {rate_limit: {rate: 1/h, burst: 2, key: crawler}}}
  - {name: training-needs-a-licence, match: {crawlers: [ClaudeBot]},
     action: {require_license: {any_of: [train]}}}
  - {name: no-gptbot, match: {crawlers: [GPTBot]}, action: block}
"""
ASSISTANT = {"User-Agent": "Mozilla/5.0 (compatible; ChatGPT-User/1.0)"}
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
           "Accept": "text/html", "Accept-Language": "en"}
TIMEOUT = Settings().store_timeout
# After a failure the store asks Redis again only once this has passed.
RETRY = Settings().store_retry_interval


@pytest.fixture
def redis_server() -> Iterator[RedisTestServer]:
    with RedisTestServer() as server:
        yield server


async def _statuses(url: str, headers: dict[str, str], n: int) -> list[int]:
    out = []
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as s:
        for _ in range(n):
            async with s.get(url, headers=headers) as r:
                await r.read()
                out.append(r.status)
    return out


def _fallbacks(gk: object) -> float:
    registry = gk.components.registry  # type: ignore[attr-defined]
    return registry.get_sample_value("gatekeeper_store_fallbacks_total", {"store": "redis"}) \
        or 0.0


async def test_a_stopped_store_falls_back_and_recovers_without_a_restart(
    upstream: Upstream, start_gatekeeper: StartGate, redis_server: RedisTestServer
) -> None:
    gk = await start_gatekeeper(upstream.url, POLICY, store="redis",
                                redis_url=redis_server.url, robots_compliance=False)
    assert await _statuses(gk.url + "/a", ASSISTANT, 3) == [200, 200, 429]
    assert _fallbacks(gk) == 0
    redis_server.stop()
    # This process's own bucket starts full: two more, then limited again.
    assert await _statuses(gk.url + "/a", ASSISTANT, 3) == [200, 200, 429]
    assert await _statuses(gk.url + "/b", BROWSER, 2) == [200, 200]  # behaviour, locally
    assert await _statuses(gk.url + "/a", {"User-Agent": GPTBOT}, 1) == [403]
    assert _fallbacks(gk) >= 5
    redis_server.start()
    await asyncio.sleep(RETRY)
    before = _fallbacks(gk)
    # The shared bucket again (the test server keeps nothing across a restart, so it
    # starts full), and no fallback counted.
    assert await _statuses(gk.url + "/a", ASSISTANT, 3) == [200, 200, 429]
    assert _fallbacks(gk) == before


async def test_rate_limits_can_fail_open(
    upstream: Upstream, start_gatekeeper: StartGate, redis_server: RedisTestServer
) -> None:
    gk = await start_gatekeeper(upstream.url, POLICY, store="redis", redis_url=redis_server.url,
                                rate_limit_fallback="open", robots_compliance=False)
    redis_server.stop()
    assert await _statuses(gk.url + "/a", ASSISTANT, 4) == [200] * 4


async def _timed_status(url: str, headers: dict[str, str]) -> tuple[int, float]:
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as s:
        started = time.monotonic()
        async with s.get(url, headers=headers) as r:
            await r.read()
            return r.status, time.monotonic() - started


async def test_after_a_paused_store_fails_once_requests_do_not_wait_for_it(
    upstream: Upstream, start_gatekeeper: StartGate, redis_server: RedisTestServer
) -> None:
    gk = await start_gatekeeper(upstream.url, POLICY, store="redis", redis_url=redis_server.url,
                                robots_compliance=False)
    assert await _statuses(gk.url + "/a", ASSISTANT, 1) == [200]
    redis_server.pause()
    try:
        # The first request meets the frozen store: its first store call waits out the
        # timeout, its second is not tried.
        status, first = await _timed_status(gk.url + "/a", {"User-Agent": GPTBOT})
        assert status == 403
        assert TIMEOUT * 0.8 <= first < TIMEOUT + 0.15
        before = _fallbacks(gk)
        # Later requests, blocked or let through, do not wait for the store at all:
        # each decided on its fallback. The assistant's bucket is this process's now.
        later = [("/a", {"User-Agent": GPTBOT}, 403), ("/b", BROWSER, 200),
                 ("/a", ASSISTANT, 200), ("/a", {"User-Agent": GPTBOT}, 403),
                 ("/c", BROWSER, 200), ("/a", ASSISTANT, 200), ("/a", ASSISTANT, 429)]
        for path, headers, expected in later:
            status, seconds = await _timed_status(gk.url + path, headers)
            assert status == expected, path
            assert seconds < TIMEOUT / 3, (path, headers, seconds)
        assert _fallbacks(gk) >= before + len(later)
    finally:
        redis_server.resume()
    # Back in use within the retry interval (counted from the failure), no restart: a
    # browser's request updates its behaviour windows in Redis with no fallback.
    resumed = time.monotonic()
    while True:
        before = _fallbacks(gk)
        assert await _statuses(gk.url + "/d", BROWSER, 1) == [200]
        if _fallbacks(gk) == before:
            break
        assert time.monotonic() - resumed < RETRY + 0.5, "the store was not used again"
        await asyncio.sleep(0.02)


async def test_licence_checks_fail_closed_while_the_store_is_down(
    upstream: Upstream, start_gatekeeper: StartGate, redis_server: RedisTestServer,
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    Keyring.generate(state / "keys")
    keyring = Keyring.load(state / "keys")
    Licensees(state / "licensees.json").add("acme", "Acme", "ClaudeBot", ["train"])
    gk = await start_gatekeeper(upstream.url, POLICY, store="redis", redis_url=redis_server.url,
                                site_hosts=("127.0.0.1",), state_dir=str(state),
                                robots_compliance=False)
    now = time.time()
    token = issue_token(LicenseClaims(
        issuer="https://127.0.0.1", audience=("127.0.0.1",), subject="acme",
        crawler="ClaudeBot", crawler_key=None, license="train", usages=("ai-train",),
        paths=(), not_before=now, expires=now + 3600, token_id="t-1",
    ), keyring.active_signing_key())
    licensed = {"User-Agent": "ClaudeBot/1.0", "Authorization": f"License {token}"}
    assert await _statuses(gk.url + "/a", licensed, 1) == [200]
    redis_server.stop()
    async with aiohttp.ClientSession() as s, s.get(gk.url + "/a", headers=licensed) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "5"
    redis_server.start()
    await asyncio.sleep(RETRY)
    assert await _statuses(gk.url + "/a", licensed, 1) == [200]


@pytest.mark.parametrize(("where", "shared"), [("shared", True), ("local", False)])
async def test_behaviour_windows_live_where_behaviour_store_says(
    upstream: Upstream, start_gatekeeper: StartGate, redis_server: RedisTestServer,
    where: str, shared: bool,
) -> None:
    import redis.asyncio

    gk = await start_gatekeeper(upstream.url, POLICY, store="redis", redis_url=redis_server.url,
                                behaviour_store=where, robots_compliance=False)
    assert await _statuses(gk.url + "/b", BROWSER, 2) == [200, 200]
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        windows = [key async for key in client.scan_iter(match="gk:win:*")]
    finally:
        await client.aclose()
    assert bool(windows) is shared


async def test_signatures_are_verified_while_the_store_is_down(
    upstream: Upstream, start_gatekeeper: StartGate, redis_server: RedisTestServer,
    tmp_path: Path,
) -> None:
    # The agent's key is pinned in the catalog (its directory is on a closed port), so
    # the only thing the store could add is the replay cache.
    agent = "https://127.0.0.1:9"
    x = base64.urlsafe_b64encode(
        SIGNER.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).rstrip(b"=").decode()
    entry = {"name": "TestAgent", "operator": "Agent Example", "purpose": "ai-agent",
             "ua_tokens": ["testagent/"], "robots_token": "TestAgent",
             "signature_agents": [agent],
             "signature_keys": [{"kty": "OKP", "crv": "Ed25519", "x": x}]}
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"version": 1, "crawlers": [entry]}))
    policy = """
version: 1
rules:
  - {name: signed-agent, match: {crawlers: [TestAgent], identities: [signed]}, action: allow}
  - {name: unsigned-agent, match: {crawlers: [TestAgent]}, action: block}
"""
    # Behaviour scoring off: the replay cache is then the only part that needs the store.
    gk = await start_gatekeeper(upstream.url, policy, catalog=str(catalog), store="redis",
                                redis_url=redis_server.url, robots_compliance=False,
                                behaviour=False)
    redis_server.stop()
    authority = f"127.0.0.1:{gk.port}"
    good = sign(authority, "/signed", agent, "c3RvcmUtZG93bg")
    forged = sign(authority, "/forged", agent, "Zm9yZ2Vk", key=Ed25519PrivateKey.generate())
    async with aiohttp.ClientSession() as s:
        async with s.get(gk.url + "/signed", headers={"User-Agent": AGENT_UA, **good}) as r:
            assert r.status == 200
        # Still checked, not waved through: a signature by another key is refused.
        async with s.get(gk.url + "/forged", headers={"User-Agent": AGENT_UA, **forged}) as r:
            assert r.status == 403
            assert (await r.json())["rule"] == "unsigned-agent"
    assert upstream.paths() == ["/signed"]
    value = gk.components.registry.get_sample_value
    assert value("gatekeeper_verifications_total",
                 {"method": "web-bot-auth", "result": "verified"}) == 1
    assert value("gatekeeper_requests_total", {
        "crawler": "TestAgent", "purpose": "ai-agent", "identity": "signed",
        "action": "allow", "reason": "allowed"}) == 1
    # The signature accepted without its replay check counts as a fallback; the forged
    # one failed before the replay cache was asked.
    assert _fallbacks(gk) == 1
