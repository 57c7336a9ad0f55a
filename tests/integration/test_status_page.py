"""The status page on the admin listener: its JSON over real sockets, and the page
itself driven in a real headless Chromium (Debian's, through Playwright) while real
traffic goes through a real `gatekeeper run`: licensed requests, a robots.txt
violation, a bad policy reloaded by SIGHUP, and a crawler that shows up while the page
is open."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import signal
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from playwright.async_api import Page, async_playwright

from gatekeeper import wiring
from gatekeeper.edge.server import Listeners
from gatekeeper.licensing.keys import Keyring
from gatekeeper.licensing.licensees import Licensees
from tests.integration.conftest import GPTBOT, Gatekeeper, StartGate, Upstream
from tests.integration.test_process import run_gatekeeper  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
ASSISTANT = "Mozilla/5.0 (compatible; Claude-Web/1.0)"  # no published ranges: unverified
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
           "Accept": "text/html", "Accept-Language": "en"}
OPENAI = {"User-Agent": GPTBOT, "X-Forwarded-For": "20.171.206.7"}  # in GPTBot's ranges

POLICY = """\
version: 1
licenses:
  - name: ai-train-articles
    usages: [ai-train]
    paths: ["/articles/**"]
    validity: 1d
rules:
  - name: enforce-robots-txt
    match: {kinds: [crawler], robots: disallowed}
    action: block
  - name: training-needs-a-licence
    match: {purposes: [ai-training]}
    action: {require_license: {any_of: [ai-train-articles]}}
"""
BROKEN = POLICY.replace("action: block", "action: blok")


async def _traffic(gk: Gatekeeper) -> None:
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as s:
        # The browser first: after a crawler's refusal, a browser from the same address
        # is a crawler switching user agents (docs/behaviour.md).
        async with s.get(gk.url + "/", headers=BROWSER) as r:
            assert r.status == 200
        for path in ("/articles/1", "/articles/2", "/private/x"):
            async with s.get(gk.url + path, headers={"User-Agent": GPTBOT}) as r:
                assert r.status == 403
        for _ in range(3):
            async with s.get(gk.url + "/news", headers={"User-Agent": ASSISTANT}) as r:
                assert r.status == 200


async def _admin(gk: Gatekeeper, listeners: Listeners) -> str:
    port = await listeners.start(wiring.admin_app(gk.components), "127.0.0.1:0",
                                 gk.components.settings)
    return f"http://127.0.0.1:{port}"


async def test_status_json_lists_the_crawlers_just_seen(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    listeners = Listeners()
    try:
        admin = await _admin(gk, listeners)
        await _traffic(gk)
        async with aiohttp.ClientSession() as s:
            async with s.get(admin + "/status.json") as r:
                assert r.status == 200
                assert r.headers["Cache-Control"] == "no-store"
                doc = await r.json()
            async with s.get(admin + "/status") as r:
                assert r.headers["Content-Type"].startswith("text/html")
                assert "default-src 'none'" in r.headers["Content-Security-Policy"]
                assert "status.json" in await r.text()
    finally:
        await listeners.stop()
    rows = {row["crawler"]: row for row in doc["crawlers"]}
    assert rows["GPTBot"]["requests"] == 3
    assert rows["GPTBot"]["operator"] == "OpenAI"
    assert rows["GPTBot"]["reasons"] == {"blocked": 3}
    assert rows["GPTBot"]["identities"] == {"spoofed": 3}
    assert rows["Claude-Web"]["reasons"] == {"allowed": 3}
    assert doc["browsers"]["requests"] == 1
    assert {p["path"] for p in doc["top_paths"]} == {"/articles/1", "/articles/2",
                                                     "/private/x", "/news"}
    assert doc["policy"]["source"] == "<embedded default policy>"
    assert doc["policy"]["mode"] == "enforce"
    embedded = resources.files("gatekeeper.data").joinpath("default-policy.yaml").read_bytes()
    assert doc["policy"]["digest"] == hashlib.sha256(embedded).hexdigest()[:12]


async def test_the_digest_of_a_policy_with_includes_covers_every_file(
    upstream: Upstream, start_gatekeeper: StartGate, tmp_path: Path
) -> None:
    main = "version: 1\ninclude: [extra.yaml]\nrules:\n  - {name: first, action: allow}\n"
    extra = "rules:\n  - {name: second, action: block}\n"
    (tmp_path / "extra.yaml").write_text(extra)
    gk = await start_gatekeeper(upstream.url, main)
    digests = "".join(hashlib.sha256(text.encode()).hexdigest() + "\n"
                      for text in (main, extra))
    policy = wiring.status_document(gk.components)["policy"]
    assert isinstance(policy, dict)
    assert policy["rules"] == 2
    assert policy["digest"] == hashlib.sha256(digests.encode()).hexdigest()[:12]


# -- a licensing site, a failed reload, a running process --------------------------------


@dataclass
class Site:
    """A `gatekeeper run` serving POLICY, after a licensed request, a robots.txt
    violation and a reload of BROKEN that failed; `digest` is POLICY's."""

    gk: Any
    policy: Path
    digest: str
    failed_at: float


async def _status(s: aiohttp.ClientSession, admin_url: str) -> dict[str, Any]:
    async with s.get(admin_url + "/status.json") as r:
        assert r.status == 200
        doc: dict[str, Any] = await r.json()
    return doc


async def _licensed_site(upstream: Upstream, start: Any, tmp_path: Path,
                         s: aiohttp.ClientSession) -> Site:
    state = tmp_path / "state-0"  # run_gatekeeper's first process keeps its state here
    Keyring.generate(state / "keys")
    secret = Licensees(state / "licensees.json").add(
        "acme", "Acme AI", "GPTBot", ["ai-train-articles"])
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({
        "site_hosts": ["127.0.0.1"], "trusted_proxies": ["127.0.0.0/8"],
        "ranges_refresh_interval": 0, "log_level": "warning"}))
    gk = start(upstream.url, "--policy", str(policy), "--config", str(settings))
    digest = hashlib.sha256(POLICY.encode()).hexdigest()[:12]
    assert (await _status(s, gk.admin_url))["policy"]["digest"] == digest

    basic = base64.b64encode(f"acme:{secret}".encode()).decode()
    form = {"grant_type": "rsl", "license": "ai-train-articles",
            "resource": gk.url + "/articles/1"}
    async with s.post(gk.url + "/.well-known/gatekeeper/token", data=form,
                      headers={"Authorization": f"Basic {basic}"}) as r:
        assert r.status == 200, await r.text()
        token = (await r.json())["access_token"]
    licensed = {**OPENAI, "Authorization": f"License {token}"}
    async with s.get(gk.url + "/articles/1", headers=licensed) as r:
        assert r.status == 200
    # The upstream's robots.txt disallows /private/ to everyone (tests' conftest).
    async with s.get(gk.url + "/private/report", headers=OPENAI) as r:
        assert r.status == 403
        assert (await r.json())["rule"] == "enforce-robots-txt"

    # A broken policy on disk, and SIGHUP: rejected, the last good policy serves on.
    policy.write_text(BROKEN)
    gk.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while True:
        last = (await _status(s, gk.admin_url))["policy"]["last_reload"]
        if last is not None and not last["ok"]:
            break
        assert time.monotonic() < deadline, f"no failed reload reported: {last}"
        await asyncio.sleep(0.05)
    return Site(gk, policy, digest, last["at"])


async def test_status_json_reports_licences_robots_violations_and_a_failed_reload(
    upstream: Upstream, run_gatekeeper: Any, tmp_path: Path  # noqa: F811
) -> None:
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as s:
        site = await _licensed_site(upstream, run_gatekeeper, tmp_path, s)
        doc = await _status(s, site.gk.admin_url)
        # Still the last good policy: an unlicensed training crawler is asked for one.
        async with s.get(site.gk.url + "/articles/2", headers=OPENAI) as r:
            assert r.status == 401
    assert doc["licences"] == [
        {"license": "ai-train-articles", "requests": 1, "licensees": ["acme"]}]
    (gptbot,) = doc["crawlers"]
    assert gptbot["crawler"] == "GPTBot"
    assert gptbot["robots_violations"] == 1
    assert gptbot["licensed"] == 1
    assert gptbot["reasons"] == {"licensed": 1, "blocked": 1}
    assert gptbot["identities"] == {"verified": 2}
    policy = doc["policy"]
    assert policy["source"] == str(site.policy)
    assert policy["digest"] == site.digest  # the serving policy's, not the file's now
    assert policy["licences"] == ["ai-train-articles"]
    assert policy["rules"] == 2
    assert policy["serving_since"] < site.failed_at
    last = policy["last_reload"]
    assert last["ok"] is False
    assert last["source"] == str(site.policy)
    assert any("blok" in problem and f"{site.policy}:" in problem
               for problem in last["problems"]), last["problems"]


async def _gptbot_row_cards_and_paths_are_rendered(page: Page) -> None:
    """What _licensed_site's two GPTBot requests (one licensed, one blocked for the
    robots.txt violation, both from OpenAI's published ranges) put on the page."""
    gptbot = page.locator('tr[data-crawler="GPTBot"]')
    cells = gptbot.locator("td")
    assert await cells.count() == 7
    assert await cells.nth(3).inner_text() == "2"
    # Identity: one tag per state, coloured by it.
    tags = cells.nth(5).locator("span.tag")
    assert await tags.all_inner_texts() == ["verified 2"]
    assert await tags.first.get_attribute("class") == "tag verified"
    # What happened: the bar's title carries the breakdown, one segment per reason.
    bar = cells.nth(4).locator(".bar")
    assert await bar.count() == 1
    title = await bar.get_attribute("title") or ""
    assert sorted(title.split(", ")) == ["blocked: 1", "licensed: 1"], title
    styles = sorted(await bar.locator("span").evaluate_all(
        "spans => spans.map(s => s.getAttribute('style'))"))
    assert styles == ["width:50%;background:var(--blocked)",
                      "width:50%;background:var(--licensed)"], styles
    # robots.txt violations: the row's cell and the card.
    assert await cells.nth(6).inner_text() == "1"
    assert await page.locator("#c-violations").inner_text() == "1"
    assert await page.locator("#c-licensed").inner_text() == "1"
    assert await page.locator("#c-crawler-requests").inner_text() == "2"
    # The paths GPTBot took, each once.
    paths = await page.locator("#paths tbody tr").all_inner_texts()
    assert sorted(paths) == ["/articles/1\t1\tGPTBot", "/private/report\t1\tGPTBot"], paths


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, ("Debian's chromium is not installed: the test command (scripts/test.sh) "
                   "installs it")
    return found


async def test_the_page_in_headless_chromium_updates_live_and_is_screenshotted(
    upstream: Upstream, run_gatekeeper: Any, tmp_path: Path  # noqa: F811
) -> None:
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as s, \
            async_playwright() as pw:
        site = await _licensed_site(upstream, run_gatekeeper, tmp_path, s)
        # Debian's Chromium, never a browser of Playwright's own; no sandbox, as root.
        browser = await pw.chromium.launch(executable_path=_chromium(), headless=True,
                                           args=["--no-sandbox", "--disable-gpu",
                                                 "--disable-dev-shm-usage"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1100})
            await page.goto(site.gk.admin_url + "/status?poll=0.2")
            await page.wait_for_selector('tr[data-crawler="GPTBot"]', timeout=10_000)
            licence = page.locator('#licences tr[data-license="ai-train-articles"]')
            assert await licence.inner_text() == "ai-train-articles\t1\tacme"
            reload = page.locator("#reload")
            assert await reload.get_attribute("class") == "pill bad"
            assert (await reload.inner_text()).startswith("failed, last good policy kept")
            assert "blok" in (await reload.get_attribute("title") or "")
            assert await page.locator("#digest").inner_text() == site.digest
            assert await page.locator("#poll").inner_text() == "0.2"
            assert await page.locator('tr[data-crawler="Claude-Web"]').count() == 0
            await _gptbot_row_cards_and_paths_are_rendered(page)

            # A crawler not seen yet: its row appears while the page stays loaded.
            await page.evaluate("window.loadedOnce = true")
            async with s.get(site.gk.url + "/news", headers={"User-Agent": ASSISTANT}) as r:
                assert r.status == 200
            row = page.locator('tr[data-crawler="Claude-Web"]')
            await row.wait_for(timeout=5_000)
            assert await page.evaluate("window.loadedOnce") is True  # not reloaded
            assert "Anthropic" in await row.inner_text()

            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "status-page.png"
            shot.unlink(missing_ok=True)
            await page.screenshot(path=str(shot), full_page=True)
        finally:
            await browser.close()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
