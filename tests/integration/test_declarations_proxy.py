"""Declarations served by the main listener over real sockets: robots.txt merged with
the origin's own file, tdmrep.json, and the headers forwarded responses carry."""

from __future__ import annotations

import json
import urllib.robotparser
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from gatekeeper.core.robots import RobotsRules
from tests.integration.conftest import StartGate, Upstream
from tests.support.declared import DeclaredRobots, parse_usage

GPTBOT = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2)"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/130.0 Safari/537.36"
LICENCE_POLICY = """
version: 1
licenses:
  - {name: train, usages: [ai-train], price: {amount: 0.01, currency: USD}}
rules:
  - {name: declarations, match: {paths: ["/robots.txt", "/.well-known/**"]}, action: allow}
  - name: premium-licensed
    match: {purposes: [ai-training], paths: ["/premium/**"]}
    action: {require_license: {any_of: [train]}}
  - {name: no-training, match: {purposes: [ai-training]}, action: block}
"""


async def _get(url: str, ua: str = BROWSER, method: str = "GET",
               ) -> tuple[int, dict[str, list[str]], bytes]:
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as s, s.request(
            method, url, headers={"User-Agent": ua}) as r:
        headers: dict[str, list[str]] = {}
        for name, value in r.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        return r.status, headers, await r.read()


async def test_robots_txt_merges_the_origins_file_with_the_policys_groups(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    upstream.robots_txt = ("User-agent: *\nDisallow: /private/\n\n"
                           "Sitemap: https://example.com/sitemap.xml\n")
    gk = await start_gatekeeper(upstream.url)
    status, headers, body = await _get(gk.url + "/robots.txt", GPTBOT)
    assert status == 200
    assert headers["content-type"] == ["text/plain; charset=utf-8"]
    text = body.decode()
    assert "User-agent: GPTBot\n" in text
    assert "Sitemap: https://example.com/sitemap.xml" in text
    assert "Content-Signal: search=yes, ai-input=yes, ai-train=no" in text
    # Read with the gate's own user agent, never forwarded as the client's request.
    assert upstream.paths() == []
    assert len(upstream.robots_fetches) == 1
    # A classic parser reading it over HTTP draws the same lines.
    robots = urllib.robotparser.RobotFileParser(gk.url + "/robots.txt")
    await _in_thread(robots.read)
    assert not robots.can_fetch("GPTBot", gk.url + "/articles/1")
    assert robots.can_fetch("Googlebot", gk.url + "/articles/1")
    assert not robots.can_fetch("Googlebot", gk.url + "/private/x")
    assert DeclaredRobots.parse(text).usage("*", "/articles/1") == {
        "train-ai": False, "search": True}


async def test_a_blocked_crawler_still_reads_every_declaration(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    # No rule spares the declaration paths here: they are never gated anyway.
    gk = await start_gatekeeper(upstream.url, "version: 1\ndefault: block\n"
                                "licenses: [{name: t, usages: [ai-train]}]\nrules: []\n")
    for path in ("/robots.txt", "/.well-known/tdmrep.json", "/license.xml",
                 "/.well-known/gatekeeper/licenses"):
        status, _, body = await _get(gk.url + path, GPTBOT)
        assert status == 200, path
        assert body, path
    status, _, _ = await _get(gk.url + "/articles/1", GPTBOT)
    assert status == 403
    assert upstream.paths() == []
    registry = gk.components.registry
    assert registry.get_sample_value("gatekeeper_declaration_requests_total",
                                     {"document": "robots.txt", "crawler": "GPTBot"}) == 1
    assert registry.get_sample_value("gatekeeper_declaration_requests_total",
                                     {"document": "tdmrep.json", "crawler": "GPTBot"}) == 1
    logged = [o for o in gk.observer.observed if o.document == "robots.txt"]
    assert logged[0].outcome.decision.rule == "declarations"


async def test_tdmrep_json_and_response_headers_agree(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, LICENCE_POLICY)
    status, headers, body = await _get(gk.url + "/.well-known/tdmrep.json")
    assert status == 200
    assert headers["content-type"] == ["application/json"]
    rules = json.loads(body)
    rsl = gk.url + "/license.xml"
    terms = gk.url + "/.well-known/gatekeeper/licenses"
    assert {"location": "/premium/", "tdm-reservation": 1, "tdm-policy": terms} in rules
    assert rules[-1] == {"location": "/", "tdm-reservation": 1}
    # The TDM policy is a page a person reads (TDMRep: text/html is human-readable).
    _, page, _ = await _get(terms)
    assert page["content-type"] == ["text/html; charset=utf-8"]

    status, headers, _ = await _get(gk.url + "/premium/story")
    assert status == 200  # a browser: forwarded, with the declarations for the path
    assert headers["tdm-reservation"] == ["1"]
    assert headers["tdm-policy"] == [terms]
    assert f'<{rsl}>; rel="license"; type="application/rsl+xml"' in headers["link"]
    assert parse_usage(headers["content-usage"][0]) == {"train-ai": False, "search": True}
    _, headers, _ = await _get(gk.url + "/free/story")
    assert headers["tdm-reservation"] == ["1"]
    assert "tdm-policy" not in headers
    assert "link" not in headers


async def test_a_blocked_crawler_is_allowed_the_licence_it_is_pointed_at(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, "version: 1\ndefault: block\n"
                                "licenses: [{name: t, usages: [ai-train]}]\nrules: []\n")
    _, _, body = await _get(gk.url + "/robots.txt", GPTBOT)
    assert DeclaredRobots.parse(body.decode()).licence_for("GPTBot") == [gk.url + "/license.xml"]
    served = RobotsRules.parse(body)
    for path in ("/license.xml", "/.well-known/tdmrep.json", "/.well-known/gatekeeper/licenses",
                 "/.well-known/gatekeeper/licenses?format=json"):
        assert served.verdict("GPTBot", path).allowed, path
        status, _, _ = await _get(gk.url + path, GPTBOT)
        assert status == 200, path
    assert not served.verdict("GPTBot", "/articles/1").allowed


async def test_a_contradicting_origin_group_is_logged_once(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    upstream.robots_txt = "User-agent: GPTBot\nDisallow: /x/\n"
    gk = await start_gatekeeper(upstream.url, "version: 1\nrules:\n  - {name: welcome, "
                                "match: {crawlers: [GPTBot]}, action: allow}\n",
                                robots_compliance=False)
    with capture_logs() as logs:
        for _ in range(2):
            status, _, body = await _get(gk.url + "/robots.txt", GPTBOT)
            assert status == 200
    conflicts = [entry for entry in logs if entry["event"] == "robots_txt_conflict"]
    assert conflicts == [{
        "event": "robots_txt_conflict", "log_level": "warning",
        "detail": "GPTBot: the origin's robots.txt disallows /x/ (Disallow: /x/) but the "
                  "policy serves it (rule 'welcome')"}]
    # The origin's own group is served; the gate still follows the policy.
    assert b"User-agent: GPTBot\nDisallow: /x/" in body
    status, _, _ = await _get(gk.url + "/x/1", GPTBOT)
    assert status == 200



async def test_an_origin_content_signal_that_contradicts_the_policy_is_replaced_and_logged_once(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    upstream.robots_txt = ("User-agent: *\nContent-Signal: search=yes, ai-train=yes\n"
                           "Disallow: /private/\n")
    gk = await start_gatekeeper(upstream.url, None)  # the default policy: ai-train=no
    with capture_logs() as logs:
        for _ in range(2):
            status, _, body = await _get(gk.url + "/robots.txt", GPTBOT)
            assert status == 200
    conflicts = [entry["detail"] for entry in logs if entry["event"] == "robots_txt_conflict"]
    assert len(conflicts) == 1
    assert "ai-train" in conflicts[0]
    signals = [line for line in body.decode().splitlines()
               if line.lower().startswith("content-signal:")]
    assert signals
    assert all("ai-train=yes" not in line for line in signals)
    assert b"Disallow: /private/" in body  # the rest of the origin's group stays


ROBOTS_CONDITIONED = """
version: 1
default: block
rules:
  - {name: robots-allowed, match: {crawlers: [GPTBot], robots: allowed}, action: allow}
"""


@pytest.mark.parametrize("compliance", [True, False], ids=["compliance-on", "compliance-off"])
async def test_served_robots_txt_agrees_with_the_gate_on_a_robots_condition(
    upstream: Upstream, start_gatekeeper: StartGate, compliance: bool
) -> None:
    # With compliance off the gate has no robots.txt verdict, so `robots: allowed`
    # never matches and the default refuses: the served file must not say "allowed".
    gk = await start_gatekeeper(upstream.url, ROBOTS_CONDITIONED,
                                robots_compliance=compliance)
    _, _, body = await _get(gk.url + "/robots.txt", GPTBOT)
    robots = urllib.robotparser.RobotFileParser()
    robots.parse(body.decode().splitlines())
    answers = {}
    for path in ("/articles/1", "/private/x"):
        status, _, _ = await _get(gk.url + path, GPTBOT)
        answers[path] = status
        assert robots.can_fetch("GPTBot", gk.url + path) is (status == 200), (path, status)
    # The origin's file disallows /private/ for `*`: with compliance on, GPTBot is
    # served elsewhere; with it off, nowhere.
    assert answers == {"/articles/1": 200 if compliance else 403, "/private/x": 403}
    # The usage words state the policy's stance where the origin's file allows the path.
    usage = DeclaredRobots.parse(body.decode()).usage("GPTBot", "/articles/1")
    assert usage["train-ai"] is compliance, usage


@pytest.fixture
async def opinionated_origin() -> AsyncIterator[str]:
    """An origin that states its own, different preferences and links."""
    async def page(request: web.Request) -> web.Response:
        if request.path == "/robots.txt":
            return web.Response(status=503)
        return web.Response(text="page", headers={
            "Content-Usage": "train-ai=y", "tdm-reservation": "0",
            "Link": "</style.css>; rel=preload; as=style"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_the_policys_declarations_replace_the_origins_and_keep_its_links(
    opinionated_origin: str, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(opinionated_origin, LICENCE_POLICY, robots_compliance=False)
    _, headers, _ = await _get(gk.url + "/premium/a")
    assert headers["content-usage"] == ["train-ai=n, search=y"]
    assert headers["tdm-reservation"] == ["1"]
    assert "</style.css>; rel=preload; as=style" in headers["link"]
    assert len(headers["link"]) == 2


async def test_an_unreachable_origin_robots_txt_is_answered_503(
    opinionated_origin: str, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(opinionated_origin)
    status, headers, _ = await _get(gk.url + "/robots.txt", GPTBOT)
    # RFC 9309: "unreachable" reads as "disallow everything", which is what is known.
    assert status == 503
    assert headers["retry-after"] == ["60"]


async def test_robots_txt_off_forwards_the_origins_file(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, "version: 1\ndeclarations: {robots_txt: off}\n"
                                "rules: []\n", robots_compliance=False)
    status, _, _ = await _get(gk.url + "/robots.txt", GPTBOT)
    assert status == 200
    assert upstream.paths() == ["/robots.txt"]


async def test_a_blocked_crawler_gets_the_origins_robots_txt_when_gatekeeper_writes_none(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    # A 403 for robots.txt would read as "no restrictions" (RFC 9309): never gated.
    gk = await start_gatekeeper(upstream.url, "version: 1\ndefault: block\n"
                                "declarations: {robots_txt: off, tdmrep: false}\nrules: []\n")
    for path in ("/robots.txt", "/.well-known/tdmrep.json"):
        status, _, body = await _get(gk.url + path, GPTBOT)
        assert status == 200, path
        seen = json.loads(body)  # the origin's answer: what it was asked
        assert seen["raw_path"] == path
        assert ["User-Agent", GPTBOT] in seen["headers"]
    status, _, _ = await _get(gk.url + "/articles/1", GPTBOT)
    assert status == 403
    assert upstream.paths() == ["/robots.txt", "/.well-known/tdmrep.json"]
    registry = gk.components.registry
    for document in ("robots.txt", "tdmrep.json"):
        assert registry.get_sample_value("gatekeeper_declaration_requests_total",
                                         {"document": document, "crawler": "GPTBot"}) == 1
    forwarded = [o for o in gk.observer.observed if o.document]
    assert [(o.document, o.status, o.outcome.decision.rule) for o in forwarded] == [
        ("robots.txt", 200, "declarations"), ("tdmrep.json", 200, "declarations")]


async def test_a_licence_offered_only_to_search_engines_is_linked_on_its_paths(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, """
version: 1
licenses:
  - {name: idx, usages: [search], price: {amount: 0.001, currency: USD}}
rules:
  - name: paid-search
    match: {purposes: [search-engine], paths: ["/archive/**"]}
    action: {require_license: {any_of: [idx]}}
""")
    rsl = gk.url + "/license.xml"
    _, _, robots = await _get(gk.url + "/robots.txt")
    assert DeclaredRobots.parse(robots.decode()).licence_for("Googlebot") == [rsl]
    status, headers, _ = await _get(gk.url + "/archive/x")
    assert status == 200  # a browser: forwarded, with the declarations for the path
    assert headers["link"] == [f'<{rsl}>; rel="license"; type="application/rsl+xml"']
    assert headers["tdm-reservation"] == ["0"]
    assert "tdm-policy" not in headers
    _, headers, _ = await _get(gk.url + "/news/x")
    assert "link" not in headers


async def test_head_of_robots_txt_has_the_length_and_no_body(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    _, got, body = await _get(gk.url + "/robots.txt")
    status, headers, head_body = await _get(gk.url + "/robots.txt", method="HEAD")
    assert status == 200
    assert head_body == b""
    assert headers["content-length"] == [str(len(body))]
    assert got["content-type"] == headers["content-type"]


async def _in_thread(fn: object) -> None:
    import asyncio

    await asyncio.get_running_loop().run_in_executor(None, fn)  # type: ignore[arg-type]
