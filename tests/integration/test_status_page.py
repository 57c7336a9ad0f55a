"""The status page on the admin listener: its JSON over real sockets, and the page
itself rendered by a real headless Chromium after real traffic."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp

from gatekeeper import wiring
from gatekeeper.edge.server import Listeners
from tests.integration.conftest import GPTBOT, Gatekeeper, StartGate, Upstream

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
ASSISTANT = "Mozilla/5.0 (compatible; Claude-Web/1.0)"  # no published ranges: unverified
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
           "Accept": "text/html", "Accept-Language": "en"}


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


async def test_the_page_in_headless_chromium_shows_the_crawlers_and_is_screenshotted(
    upstream: Upstream, start_gatekeeper: StartGate, tmp_path: Path
) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, ("Debian's chromium is not installed: the test command (scripts/test.sh) "
                      "installs it")
    gk = await start_gatekeeper(upstream.url)
    listeners = Listeners()
    try:
        admin = await _admin(gk, listeners)
        await _traffic(gk)
        flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                 "--virtual-time-budget=10000", "--window-size=1280,1100"]
        dom = await _chromium(chromium, *flags, "--dump-dom", admin + "/status")
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "status-page.png"
        shot.unlink(missing_ok=True)
        await _chromium(chromium, *flags, f"--screenshot={shot}", admin + "/status")
    finally:
        await listeners.stop()
    # The script ran, fetched status.json and filled the table.
    assert 'data-loaded="1"' in dom, dom[dom.find('id="policy"'):][:300]
    assert 'data-crawler="GPTBot"' in dom
    assert 'data-crawler="Claude-Web"' in dom
    assert "&lt;embedded default policy&gt;" in dom
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def _chromium(binary: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")
