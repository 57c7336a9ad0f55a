"""Identity, robots.txt compliance and behaviour through the real proxy: a signed
agent behind a browser's user agent, a spoofer, a crawler breaking robots.txt, and a
refused crawler that comes back as a browser."""

from __future__ import annotations

import base64
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gatekeeper.catalog_loader import parse_catalog
from gatekeeper.core.catalog import Catalog
from gatekeeper.gate import Gate
from gatekeeper.policy.loader import load_policy_text
from gatekeeper.store.memory import MemoryStore
from gatekeeper.verify.identity import IdentityVerifier
from gatekeeper.verify.keydir import MEDIA_TYPE, WELL_KNOWN_PATH, KeyDirectory
from gatekeeper.verify.ranges import RangeRegistry
from gatekeeper.verify.webbotauth import WebBotAuthVerifier
from tests.integration.conftest import BROWSER, GPTBOT, StartGate, Upstream
from tests.integration.test_keydir import SIGNER, directory_response, keyid

AGENT_UA = "TestAgent/1.0 (+https://agent.example/bot)"
POLICY = """\
version: 1
rules:
  - name: signed-agent
    match: {crawlers: [TestAgent], identities: [signed]}
    action: allow
  - name: refuse-the-rest-of-testagent
    match: {crawlers: [TestAgent]}
    action: block
"""


def catalog_with_agent(origin: str) -> Catalog:
    entry = {"name": "TestAgent", "operator": "Agent Example", "purpose": "ai-agent",
             "ua_tokens": ["testagent/"], "robots_token": "TestAgent",
             "signature_agents": [origin]}
    return parse_catalog(json.dumps({"version": 1, "crawlers": [entry]}), "test-catalog")


def sign(authority: str, path: str, agent: str, nonce: str,
         key: Ed25519PrivateKey = SIGNER) -> dict[str, str]:
    """Web Bot Auth headers for GET `path` at `authority`, built from RFC 9421 by hand."""
    created = int(time.time())
    params = (f'("@method" "@authority" "@path" "signature-agent";key="a1");created={created};'
              f'expires={created + 60};keyid="{keyid(key)}";nonce="{nonce}";'
              'tag="web-bot-auth"')
    base = (f'"@method": GET\n"@authority": {authority}\n"@path": {path}\n'
            f'"signature-agent";key="a1": "{agent}"\n"@signature-params": {params}')
    signature = base64.b64encode(key.sign(base.encode())).decode()
    return {"Signature-Input": f"sig1={params}", "Signature": f"sig1=:{signature}:",
            "Signature-Agent": f'a1="{agent}"'}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def directory_origin(ca: trustme.CA) -> AsyncIterator[str]:
    """The agent's key directory over HTTPS, signed now (the proxy checks real time)."""
    authority = ""

    async def directory(request: web.Request) -> web.Response:
        now = int(time.time())
        body, headers = directory_response([SIGNER], [SIGNER], authority, created=now - 10,
                                           expires=now + 3600)
        return web.Response(body=body, headers=headers, content_type=MEDIA_TYPE)

    app = web.Application()
    app.router.add_get(WELL_KNOWN_PATH, directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    authority = f"127.0.0.1:{runner.addresses[0][1]}"
    yield f"https://{authority}"
    await runner.cleanup()


async def test_signed_agent_is_recognised_behind_a_browser_user_agent(
    upstream: Upstream, start_gatekeeper: StartGate, directory_origin: str, ca: trustme.CA,
) -> None:
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    catalog = catalog_with_agent(directory_origin)
    policy = load_policy_text(POLICY, "test-policy.yaml", catalog)
    store = MemoryStore()
    async with aiohttp.ClientSession() as directory_session:
        keys = KeyDirectory(directory_session, ssl=trust)
        identity = IdentityVerifier(catalog, lambda: RangeRegistry.from_prefixes({}),
                                    signatures=WebBotAuthVerifier(keys, store))
        gate = Gate(catalog, lambda: policy, store, identity=identity)
        gk = await start_gatekeeper(upstream.url, gate=gate)
        authority = f"127.0.0.1:{gk.port}"
        async with aiohttp.ClientSession() as s:
            signed = sign(authority, "/articles/1", directory_origin, "bm9uY2Ux")
            async with s.get(gk.url + "/articles/1",
                             headers={"User-Agent": BROWSER, **signed}) as r:
                assert r.status == 200
            # The same signature again is a replay; and the agent's name without a
            # signature is a spoofer, since this operator signs everything.
            async with s.get(gk.url + "/articles/1",
                             headers={"User-Agent": AGENT_UA, **signed}) as r:
                assert r.status == 403
            async with s.get(gk.url + "/articles/1", headers={"User-Agent": AGENT_UA}) as r:
                assert r.status == 403
    assert upstream.paths() == ["/articles/1"]
    value = gk.components.registry.get_sample_value
    # The custom catalog's crawler is not in the metrics' label set: it counts as other.
    assert value("gatekeeper_requests_total", {
        "crawler": "other", "purpose": "ai-agent", "identity": "signed",
        "action": "allow", "reason": "allowed"}) == 1
    assert value("gatekeeper_signature_failures_total", {"reason": "replayed"}) == 1
    assert value("gatekeeper_reclassifications_total",
                 {"by": "web-bot-auth", "crawler": "other"}) == 1
    assert value("gatekeeper_verifications_total",
                 {"method": "web-bot-auth", "result": "verified"}) == 1


async def test_crawler_breaking_robots_txt_is_refused_and_counted(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    upstream.robots_txt = "User-agent: Googlebot\nDisallow: /drafts/\n"
    gk = await start_gatekeeper(upstream.url, trusted_proxies=("127.0.0.0/8",))
    googlebot = {"User-Agent": "Mozilla/5.0 (compatible; Googlebot/2.1)",
                 "X-Forwarded-For": "66.249.66.1"}  # in Google's published ranges
    async with aiohttp.ClientSession() as s:
        async with s.get(gk.url + "/drafts/x", headers=googlebot) as r:
            assert r.status == 403
            assert (await r.json())["rule"] == "enforce-robots-txt"
        async with s.get(gk.url + "/articles/x", headers=googlebot) as r:
            assert r.status == 200
    assert upstream.paths() == ["/articles/x"]
    assert [f.raw_path for f in upstream.robots_fetches] == ["/robots.txt"]
    value = gk.components.registry.get_sample_value
    assert value("gatekeeper_robots_violations_total", {"crawler": "Googlebot"}) == 1


async def test_refused_crawler_coming_back_as_a_browser_is_an_undeclared_bot(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    async with aiohttp.ClientSession() as s:
        async with s.get(gk.url + "/a", headers={"User-Agent": GPTBOT}) as r:
            assert r.status == 403
        async with s.get(gk.url + "/a", headers={"User-Agent": BROWSER}) as r:
            assert r.status == 200  # slowed, not refused: within the burst
    value = gk.components.registry.get_sample_value
    assert value("gatekeeper_requests_total", {
        "crawler": "undeclared-bot", "purpose": "undeclared-bot", "identity": "unknown",
        "action": "rate_limit", "reason": "allowed"}) == 1
    assert value("gatekeeper_undeclared_bot_reasons_total",
                 {"reason": "ua-switch-after-refusal"}) == 1
    assert value("gatekeeper_reclassifications_total",
                 {"by": "behaviour", "crawler": "undeclared-bot"}) == 1


async def test_a_browser_from_another_address_is_not_affected(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, trusted_proxies=("127.0.0.0/8",))
    async with aiohttp.ClientSession() as s:
        async with s.get(gk.url + "/a", headers={"User-Agent": GPTBOT,
                                                 "X-Forwarded-For": "203.0.113.5"}) as r:
            assert r.status == 403
        async with s.get(gk.url + "/a", headers={"User-Agent": BROWSER,
                                                 "X-Forwarded-For": "198.51.100.5"}) as r:
            assert r.status == 200
    value = gk.components.registry.get_sample_value
    assert value("gatekeeper_requests_total", {
        "crawler": "unknown", "purpose": "none", "identity": "unknown",
        "action": "allow", "reason": "allowed"}) == 1


async def test_pinned_key_in_a_catalog_file_verifies_without_its_directory(
    upstream: Upstream, start_gatekeeper: StartGate, tmp_path: Path
) -> None:
    # The agent's directory is on a closed port: only the pinned key can verify.
    closed = "https://127.0.0.1:9"
    x = base64.urlsafe_b64encode(
        SIGNER.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).rstrip(b"=").decode()
    entry = {"name": "TestAgent", "operator": "Agent Example", "purpose": "ai-agent",
             "ua_tokens": ["testagent/"], "robots_token": "TestAgent",
             "signature_agents": [closed],
             "signature_keys": [{"kty": "OKP", "crv": "Ed25519", "x": x}]}
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"version": 1, "crawlers": [entry]}))
    gk = await start_gatekeeper(upstream.url, POLICY, catalog=str(catalog))
    signed = sign(f"127.0.0.1:{gk.port}", "/a", closed, "cGlubmVk")
    async with aiohttp.ClientSession() as s:
        async with s.get(gk.url + "/a", headers={"User-Agent": AGENT_UA, **signed}) as r:
            assert r.status == 200
        async with s.get(gk.url + "/a", headers={"User-Agent": AGENT_UA}) as r:
            assert r.status == 403
    assert upstream.paths() == ["/a"]
