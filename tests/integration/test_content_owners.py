"""Two content owners who chose differently, end to end: one opted out of AI use, one
licenses at a 70% revenue share. Owners are set through the admin API while the proxy
runs; the opt-out beats a valid licence token; the ledger export pays the other."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

from gatekeeper import wiring
from gatekeeper.licensing.keys import Keyring
from gatekeeper.licensing.licensees import Licensees
from tests.integration.conftest import GPTBOT, StartGate, Upstream
from tests.integration.test_licensing_e2e import POLICY

OPENAI = {"User-Agent": GPTBOT, "X-Forwarded-For": "20.171.206.7"}
GOOGLEBOT = {"User-Agent": "Mozilla/5.0 (compatible; Googlebot/2.1)",
             "X-Forwarded-For": "66.249.66.1"}


async def test_an_owner_s_opt_out_beats_the_site_s_licence_and_the_other_is_paid(
    upstream: Upstream, start_gatekeeper: StartGate, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    Keyring.generate(state / "keys")
    secret = Licensees(state / "licensees.json").add(
        "acme", "Acme AI", "GPTBot", ["ai-train-standard"])
    gk = await start_gatekeeper(upstream.url, POLICY, trusted_proxies=("127.0.0.0/8",),
                                site_hosts=("127.0.0.1",), state_dir=str(state))
    ledger = await wiring.open_ledger(gk.components)
    admin = web.AppRunner(wiring.admin_app(gk.components))
    await admin.setup()
    site = web.TCPSite(admin, "127.0.0.1", 0)
    await site.start()
    admin_url = f"http://127.0.0.1:{admin.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as s:
            # The owners, set at run time: no restart, no policy reload.
            for name, entry in (
                ("alice", {"paths": ["/articles/alice/**"], "stance": "opt-out"}),
                ("bob", {"paths": ["/articles/bob/**"], "stance": "licensable", "share": "70"}),
            ):
                async with s.put(f"{admin_url}/owners/{name}", json=entry) as r:
                    assert r.status == 200, await r.text()
            async with s.put(f"{admin_url}/owners/carol",
                             json={"paths": ["/x/**"], "stance": "licensable",
                                   "share": "150"}) as r:
                assert r.status == 400
                assert "share" in (await r.json())["message"]
            async with s.get(f"{admin_url}/owners") as r:
                assert [o["name"] for o in (await r.json())["owners"]] == ["alice", "bob"]
            # The licence server answers on the admin listener as well.
            async with s.get(f"{admin_url}/.well-known/jwks.json") as r:
                assert r.status == 200
            async with s.post(f"{admin_url}/token", data={"grant_type": "nope"}) as r:
                assert r.status == 401  # no client credentials: invalid_client
            basic = base64.b64encode(f"acme:{secret}".encode()).decode()
            form = {"grant_type": "rsl", "license": "ai-train-standard",
                    "resource": gk.url + "/articles/bob/1"}
            async with s.post(gk.url + "/.well-known/gatekeeper/token", data=form,
                              headers={"Authorization": f"Basic {basic}"}) as r:
                token = (await r.json())["access_token"]
            paying = {**OPENAI, "Authorization": f"License {token}",
                      "crawler-max-price": "USD 0.01"}
            async with s.get(gk.url + "/articles/bob/1", headers=paying) as r:
                assert r.status == 200
            # Alice withheld her pages: a valid, paid-up token changes nothing.
            async with s.get(gk.url + "/articles/alice/1", headers=paying) as r:
                assert r.status == 403
                body = await r.json()
            assert body["error"] == "owner_opted_out"
            assert body["owner"] == "alice"
            # Search is not AI use: her pages stay findable.
            async with s.get(gk.url + "/articles/alice/1", headers=GOOGLEBOT) as r:
                assert r.status == 200
            # The declaration follows her: the RSL document withholds her pages.
            async with s.get(gk.url + "/license.xml") as r:
                rsl = await r.text()
            assert 'url="/articles/alice/"' in rsl
    finally:
        await admin.cleanup()
    assert [seen.raw_path for seen in upstream.seen] == ["/articles/bob/1", "/articles/alice/1"]
    await ledger.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    env["GATEKEEPER_STATE_DIR"] = str(state)

    def export() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gatekeeper", "ledger", "export",
                               "--by", "owner", "--format", "json"], capture_output=True,
                              text=True, env=env, timeout=60, check=False)

    done = await asyncio.to_thread(export)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["key"], r["count"], r["revenue"]) for r in rows] == [
        ("bob", 1, {"USD": "0.0014"})]  # 70% of 0.002
