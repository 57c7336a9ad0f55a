"""The command line, run as a user would: `python -m gatekeeper ...`."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from gatekeeper import __version__

ROOT = Path(__file__).resolve().parents[2]


# Range lists from the packaged snapshots only, whatever this machine has cached.
_EMPTY_CACHE = tempfile.mkdtemp(prefix="gk-cli-ranges-")


def gk(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    environ["GATEKEEPER_RANGES_CACHE_DIR"] = _EMPTY_CACHE
    return subprocess.run([sys.executable, "-m", "gatekeeper", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=environ | (env or {}))


def test_version() -> None:
    out = gk("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"gatekeeper {__version__}"


def test_check_accepts_every_shipped_policy() -> None:
    files = [str(p) for p in sorted((ROOT / "policies").rglob("*.yaml"))]
    out = gk("check", *files)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(": ok (") == len(files)


def test_check_reports_file_line_and_field_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - match: {crawlers: [GPTBott]}\n    action: block\n")
    out = gk("check", str(ROOT / "policies" / "default.yaml"), str(bad))
    assert out.returncode == 1
    assert f"{bad}:3: rules[0].match.crawlers[0]: unknown crawler 'GPTBott'" in out.stderr
    assert "default.yaml: ok" in out.stdout


def test_explain_shows_classification_rule_and_answer() -> None:
    out = gk("explain", "--ua", "Mozilla/5.0 (compatible; GPTBot/1.2)", "--path", "/a/../b",
             "--ip", "20.171.206.7")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "GPTBot by OpenAI, purpose ai-training" in text
    assert ("identity:       verified (20.171.206.7 is in GPTBot's published range list "
            "openai-gptbot)") in text
    assert "rule:           block-ai-training at <embedded default policy>:" in text
    assert "answer 403 (blocked)" in text
    assert "GET localhost/b" in text


def test_explain_json_for_a_browser_is_a_forward() -> None:
    out = gk("explain", "--ua", "Mozilla/5.0 Firefox/128.0", "--path", "/x?q=1", "--json")
    report = json.loads(out.stdout)
    assert report["classification"]["kind"] == "unknown"
    assert report["decision"]["forward"] is True
    assert report["rule"]["name"] == "default"
    assert report["request"]["query"] == "q=1"


def test_explain_reports_a_request_the_gate_would_refuse() -> None:
    out = gk("explain", "--path", "/premium/%2Fx", "--json")
    report = json.loads(out.stdout)
    assert report["rejected"]["reason"] == "encoded_slash"


def test_explain_with_a_custom_policy_and_header(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nrules:\n  - name: keyed\n    match: {headers: {X-Key: present}}"
                      "\n    action: {block: {status: 451}}\n")
    out = gk("explain", "--policy", str(policy), "--header", "X-Key: 1", "--json")
    report = json.loads(out.stdout)
    assert report["rule"]["source"] == f"{policy}:3"
    assert report["decision"]["status"] == 451


def test_schema_is_json() -> None:
    out = gk("schema")
    assert json.loads(out.stdout)["title"].startswith("Gatekeeper policy")


def test_run_without_upstream_is_a_clear_error() -> None:
    out = gk("run", "--listen", "127.0.0.1:0")
    assert out.returncode == 2
    assert "upstream: required" in out.stderr


def test_explain_describes_the_rate_limit_it_would_apply() -> None:
    out = gk("explain", "--ua", "Mozilla/5.0 (compatible; ChatGPT-User/1.0)", "--json",
             "--ip", "104.208.184.193")
    limit = json.loads(out.stdout)["rule"]["rate_limit"]
    assert limit["per_second"] == 1.0
    assert limit["burst"] == 20
    assert limit["key"] == "crawler"


def test_explain_says_how_a_spoofer_was_caught() -> None:
    out = gk("explain", "--ua", "Mozilla/5.0 (compatible; GPTBot/1.2)", "--ip", "203.0.113.7",
             "--json")
    report = json.loads(out.stdout)
    assert report["identity"]["state"] == "spoofed"
    assert report["identity"]["verified_by"] == "ip-ranges"
    assert "203.0.113.7 is in none of GPTBot's published lists" in report["identity"]["how"]
    assert report["rule"]["name"] == "block-spoofed-crawlers"


def test_explain_checks_reverse_dns_against_the_configured_server() -> None:
    from tests.support.dns_server import DnsTestServer, reverse_name

    zone = {reverse_name("157.55.39.1"): [("PTR", "msnbot-157-55-39-1.search.msn.com", 60)],
            "msnbot-157-55-39-1.search.msn.com": [("A", "157.55.39.1", 60)]}
    with DnsTestServer(zone) as dns:
        env = {"GATEKEEPER_DNS_SERVERS": f"{dns.address[0]}:{dns.address[1]}"}
        bing = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"
        good = json.loads(gk("explain", "--ua", bing, "--ip", "157.55.39.1", "--json",
                             env=env).stdout)
        fake = json.loads(gk("explain", "--ua", bing, "--ip", "192.0.2.44", "--json",
                             env=env).stdout)
    assert good["identity"]["state"] == "verified"
    assert good["identity"]["verified_by"] == "reverse-dns"
    assert fake["identity"]["state"] == "spoofed"
    assert [c["method"] for c in fake["identity"]["checks"]] == ["reverse-dns"]


def test_explain_checks_a_given_robots_txt(tmp_path: Path) -> None:
    robots = tmp_path / "robots.txt"
    robots.write_text("User-agent: Googlebot\nDisallow: /drafts/\n")
    out = gk("explain", "--ua", "Mozilla/5.0 (compatible; Googlebot/2.1)", "--ip",
             "66.249.66.1", "--path", "/drafts/x", "--robots-txt", str(robots))
    assert "robots.txt:     disallows this path (Disallow: /drafts/, group Googlebot)" in out.stdout
    assert "rule:           enforce-robots-txt" in out.stdout



@pytest.mark.parametrize(("declarations", "path"), [
    ("{robots_txt: off}", "/robots.txt"),
    ("{tdmrep: false}", "/.well-known/tdmrep.json"),
])
def test_explain_forwards_a_document_gatekeeper_does_not_write_to_the_origin_ungated(
        tmp_path: Path, declarations: str, path: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\ndefault: block\ndeclarations: {declarations}\nrules: []\n")
    out = json.loads(gk("explain", "--policy", str(policy), "--ua", "GPTBot/1.2", "--ip",
                        "20.171.207.1", "--path", path, "--json").stdout)
    assert out["rule"]["name"] == "declarations"
    assert out["decision"]["forward"] is True
    assert out["decision"]["status"] is None


def test_crawlers_list_shows_every_packaged_list() -> None:
    out = gk("crawlers", "list")
    assert out.returncode == 0, out.stderr
    assert "openai-gptbot" in out.stdout
    assert "snapshot" in out.stdout
    assert "anthropic-bots" in out.stdout  # shipped without a snapshot: no data yet


@pytest.fixture
def range_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server with a range list, run in a thread; (url, CA file)."""
    import asyncio
    import threading

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    body = json.dumps({"creationTime": "2026-11-01T00:00:00", "prefixes": [
        {"ipv4Prefix": "198.51.100.0/24"}]})

    async def ranges(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="application/json")

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/gptbot.json", ranges)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{port}/gptbot.json", ca_file
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def test_crawlers_update_fetches_into_the_cache_and_explain_uses_it(
    tmp_path: Path, range_server: tuple[str, Path]
) -> None:
    url, ca_file = range_server
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps({"version": 1, "sources": {"openai-gptbot": {
        "operator": "OpenAI", "url": url, "format": "prefixes", "snapshot": None}}}))
    env = {"GATEKEEPER_RANGES_SOURCES": str(sources),
           "GATEKEEPER_RANGES_CACHE_DIR": str(tmp_path / "cache"),
           "SSL_CERT_FILE": str(ca_file)}  # the test CA, for this process only
    out = gk("crawlers", "update", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "openai-gptbot: updated (1 prefixes)" in out.stdout
    report = json.loads(gk("explain", "--ua", "GPTBot/1.2", "--ip", "198.51.100.9", "--json",
                           env=env).stdout)
    assert report["identity"]["state"] == "verified"
    listing = gk("crawlers", "list", env=env).stdout
    assert "openai-gptbot" in listing
    assert "cache" in listing


def test_crawlers_update_failure_keeps_the_last_good_copy_and_exits_1(tmp_path: Path) -> None:
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps({"version": 1, "sources": {"openai-gptbot": {
        "operator": "OpenAI", "url": "https://127.0.0.1:9/gptbot.json", "format": "prefixes",
        "snapshot": None}}}))
    env = {"GATEKEEPER_RANGES_SOURCES": str(sources),
           "GATEKEEPER_RANGES_CACHE_DIR": str(tmp_path / "cache")}
    out = gk("crawlers", "update", env=env)
    assert out.returncode == 1
    assert "openai-gptbot: failed (kept last good:" in out.stdout


def test_explain_scores_a_bare_request_as_a_client_s_first() -> None:
    report = json.loads(gk("explain", "--ua", "", "--json").stdout)
    behaviour = report["behaviour"]
    assert behaviour["scored"] is True
    assert {r["code"] for r in behaviour["reasons"]} == {"no-accept", "no-accept-language"}
    assert behaviour["undeclared"] is False
    crawler = json.loads(gk("explain", "--ua", "GPTBot/1.2", "--json").stdout)
    assert crawler["behaviour"]["scored"] is False
