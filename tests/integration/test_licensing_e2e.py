"""A crawler vendor from scratch, against the real proxy: it is refused with a 402
that says how to license, obtains a token with its credentials from the licence
server on the site, fetches the page paying per request, and is metered in the
ledger. Everything over real sockets; keys, licensees and the ledger in files."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import aiohttp

from gatekeeper import wiring
from gatekeeper.ledger.file import read, verify
from gatekeeper.licensing.keys import Keyring
from gatekeeper.licensing.licensees import Licensees
from tests.integration.conftest import GPTBOT, StartGate, Upstream

POLICY = """
version: 1
licenses:
  - name: ai-train-standard
    usages: [ai-train]
    description: Training on the articles, per request.
    paths: ["/articles/**"]
    price: {amount: 0.002, currency: USD, per: request}
    validity: 1d
rules:
  - name: training-needs-a-licence
    match: {purposes: [ai-training]}
    action: {require_license: {any_of: [ai-train-standard]}}
"""
OPENAI = {"User-Agent": GPTBOT, "X-Forwarded-For": "20.171.206.7"}  # OpenAI's range


async def test_a_crawler_vendor_licenses_fetches_and_is_metered(
    upstream: Upstream, start_gatekeeper: StartGate, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    Keyring.generate(state / "keys")
    secret = Licensees(state / "licensees.json").add(
        "acme", "Acme AI", "GPTBot", ["ai-train-standard"])
    gk = await start_gatekeeper(upstream.url, POLICY, trusted_proxies=("127.0.0.0/8",),
                                site_hosts=("127.0.0.1",), state_dir=str(state))
    ledger = await wiring.open_ledger(gk.components)
    basic = base64.b64encode(f"acme:{secret}".encode()).decode()
    page = gk.url + "/articles/1"
    async with aiohttp.ClientSession() as s:
        # 1. Refused, with everything needed to obtain a licence.
        async with s.get(page, headers=OPENAI) as r:
            assert r.status == 402
            assert r.headers["crawler-price"] == "USD 0.002"
            offer = await r.json()
        assert offer["licenses"][0]["name"] == "ai-train-standard"
        async with s.get(gk.url + offer["rsl"]) as r:
            assert r.headers["Content-Type"].startswith("application/rsl+xml")
            assert ET.fromstring(await r.read()).tag.endswith("rsl")
        # 2. A token from the licence server, with the vendor's client credentials.
        form = {"grant_type": "rsl", "license": "ai-train-standard", "resource": page}
        async with s.post(gk.url + offer["token_endpoint"], data=form,
                          headers={"Authorization": f"Basic {basic}"}) as r:
            assert r.status == 200, await r.text()
            grant = await r.json()
        assert grant["token_type"] == "License"
        token = grant["access_token"]
        licensed = {**OPENAI, "Authorization": f"License {token}"}
        # 3. The token alone does not pay a per-request price ...
        async with s.get(page, headers=licensed) as r:
            assert r.status == 402
            assert r.headers["crawler-error"] == "MissingCrawlerPrice"
        # ... accepting it does: served, charged, the token kept from the origin.
        async with s.get(page, headers={**licensed, "crawler-max-price": "USD 0.01"}) as r:
            assert r.status == 200
            assert r.headers["crawler-charged"] == "USD 0.002"
            # Linked once: the gate's link and the declared one name one document.
            assert sum('rel="license"' in v for v in r.headers.getall("Link")) == 1
        # A forged token is refused as invalid, and the same token for another path
        # outside the licence is refused as out of scope.
        async with s.get(page, headers={**OPENAI, "Authorization": f"License {token}x"}) as r:
            assert r.status == 401
            assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
        async with s.get(gk.url + "/about", headers={**licensed,
                                                      "crawler-max-price": "USD 1"}) as r:
            assert r.status == 403
        # The public keys that verify it are published.
        async with s.get(gk.url + "/.well-known/jwks.json") as r:
            assert [k["crv"] for k in (await r.json())["keys"]] == ["Ed25519"]
    forwarded = [seen for seen in upstream.seen if seen.raw_path == "/articles/1"]
    assert len(forwarded) == 1
    assert not any(name.lower() == "authorization" for name, _ in forwarded[0].headers)
    # 4. Metered: one ledger record, chained, with the price charged.
    await ledger.close()
    records = list(read(ledger.path))
    assert [(r.licensee, r.license, r.crawler, r.path, r.price, r.currency)
            for r in records] == [
        ("acme", "ai-train-standard", "GPTBot", "/articles/1", "0.002", "USD")]
    assert verify(ledger.path).ok
    # The operator's view of it, from the command line.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    env["GATEKEEPER_STATE_DIR"] = str(state)
    cli = [sys.executable, "-m", "gatekeeper", "ledger"]

    def ledger_command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, env=env,
                              timeout=60, check=False)

    checked = await asyncio.to_thread(ledger_command, "verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    exported = await asyncio.to_thread(ledger_command, "export", "--by", "licensee",
                                       "--format", "json")
    rows = json.loads(exported.stdout)
    assert rows[0]["key"] == "acme"
    assert rows[0]["count"] == 1
    value = gk.components.registry.get_sample_value
    assert value("gatekeeper_licensed_requests_total",
                 {"license": "ai-train-standard", "licensee": "acme"}) == 1
    assert value("gatekeeper_license_tokens_issued_total",
                 {"license": "ai-train-standard"}) == 1
    from gatekeeper.licensing.issued import read as read_issued

    (held,) = read_issued(state / "issued.jsonl")
    assert (held.licensee, held.license, held.crawler) == ("acme", "ai-train-standard", "GPTBot")
    assert token not in (state / "issued.jsonl").read_text()
    refused = {reason: value("gatekeeper_license_checks_total",
                             {"result": "invalid", "reason": reason})
               for reason in ("bad-signature", "malformed")}
    assert sum(v or 0 for v in refused.values()) == 1, refused
    assert value("gatekeeper_license_checks_total",
                 {"result": "insufficient", "reason": "out-of-scope"}) == 1


async def test_the_terms_page_and_rsl_are_served_without_any_policy_decision(
    upstream: Upstream, start_gatekeeper: StartGate, tmp_path: Path
) -> None:
    gk = await start_gatekeeper(upstream.url, POLICY, state_dir=str(tmp_path / "state"))
    async with aiohttp.ClientSession() as s:
        async with s.get(gk.url + "/.well-known/gatekeeper/licenses",
                         headers={"User-Agent": GPTBOT}) as r:
            assert r.status == 200
            assert "ai-train-standard" in await r.text()
        async with s.get(gk.url + "/.well-known/gatekeeper/licenses?format=json") as r:
            terms = json.loads(await r.read())
        async with s.head(gk.url + "/license.xml") as r:
            assert r.status == 200
    assert "ai-train-standard" in json.dumps(terms)
    assert upstream.seen == []


async def test_a_licence_s_request_limit_is_enforced_per_licensee_and_period(
    upstream: Upstream, start_gatekeeper: StartGate, tmp_path: Path
) -> None:
    policy = """
version: 1
licenses:
  - name: metered
    usages: [ai-train]
    limits: {requests: 2, per: day}
rules:
  - match: {purposes: [ai-training]}
    action: {require_license: {any_of: [metered]}}
"""
    state = tmp_path / "state"
    Keyring.generate(state / "keys")
    secret = Licensees(state / "licensees.json").add("acme", "Acme AI", "GPTBot", ["metered"])
    gk = await start_gatekeeper(upstream.url, policy, trusted_proxies=("127.0.0.0/8",),
                                site_hosts=("127.0.0.1",), state_dir=str(state))
    basic = base64.b64encode(f"acme:{secret}".encode()).decode()
    async with aiohttp.ClientSession() as s:
        async with s.post(gk.url + "/.well-known/gatekeeper/token",
                          data={"grant_type": "rsl", "license": "metered",
                                "resource": gk.url + "/a"},
                          headers={"Authorization": f"Basic {basic}"}) as r:
            token = (await r.json())["access_token"]
        statuses, retry = [], None
        for _ in range(3):
            async with s.get(gk.url + "/a", headers={**OPENAI,
                                                     "Authorization": f"License {token}"}) as r:
                statuses.append(r.status)
                retry = r.headers.get("Retry-After")
    assert statuses == [200, 200, 429]  # a free licence: no price header needed
    assert retry is not None
    assert 0 < int(retry) <= 86400  # until the day (UTC) ends
    assert len(upstream.seen) == 2
