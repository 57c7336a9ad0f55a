"""B1-B7: spoofing and bypass of who the client is and what it claims to be.

What the upstream receives (the gate's own X-Forwarded-For, X-Real-IP and Forwarded,
never a client's copy) and what the gate logged (client_ip, crawler, identity) are
the assertions. 127.0.0.10 is the only trusted proxy and 127.0.1.0/24 GPTBot's
published range. Behaviour scoring keeps a window per /24, so each case uses
sources of its own network where a refusal elsewhere could leak into it.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from aiohttp import web

from gatekeeper.catalog_loader import load_catalog
from tests.adversarial.conftest import POLICY, Origin, StartGate
from tests.integration.conftest import BROWSER, BROWSER_HEADERS, GPTBOT
from tests.support.gate_process import Event, GateProcess
from tests.support.https_server import https_server
from tests.support.raw_http import IN_RANGE, PUBLIC, TRUSTED_PROXY, exchange, request
from tests.support.recording_upstream import Received

VECTORS = yaml.safe_load(
    (Path(__file__).parents[1] / "vectors" / "adversarial" / "spoofing.yaml").read_text())
# Requests without a user agent under /ua/ have a rule of their own (B5).
SPOOFING_POLICY = POLICY + """
  - name: refuse-missing-user-agent
    match: {paths: ["/ua/**"], headers: {User-Agent: absent}}
    action: block
"""
SPOOFED = "127.0.1.5"  # an address in GPTBot's range that no client here uses
# The crawler label's closed set besides catalog names (gatekeeper/observe/metrics.py).
CRAWLER_BUCKETS = {"unknown", "other-bot", "undeclared-bot", "other"}


@pytest.fixture(scope="module")
def gate_policy() -> str:
    return SPOOFING_POLICY


def forwarded(origin: Origin, path: str) -> Received:
    """The one request the upstream received, which must be for `path`."""
    received = origin.upstream.requests()
    assert [r.target for r in received] == [path]
    assert received[0].complete
    return received[0]


async def logged(gate: GateProcess, path: str, event: str = "request") -> Event:
    found = await gate.wait_flushed(lambda es: any(e.get("path") == path for e in es), event)
    (line,) = [e for e in found if e.get("path") == path]
    return line


def assert_identity_headers(received: Received, client: str, xff: str | None = None) -> None:
    """Exactly the gate's forwarded headers, each once, naming `client`."""
    assert received.all("X-Forwarded-For") == [xff or client]
    assert received.all("X-Real-IP") == [client]
    assert received.all("Forwarded") == [f"for={client};proto=http;host=t"]
    assert received.all("True-Client-IP") == received.all("CF-Connecting-IP") == []


# -- B1 ------------------------------------------------------------------------------


async def test_b1_forwarded_headers_from_an_untrusted_peer_are_replaced_not_believed(
    gate: GateProcess, origin: Origin
) -> None:
    spoof = [("X-Forwarded-For", SPOOFED), ("X-Real-IP", SPOOFED),
             ("Forwarded", f"for={SPOOFED}"), ("True-Client-IP", SPOOFED),
             ("CF-Connecting-IP", SPOOFED), ("Connection", "close")]
    browser = await exchange(gate.port, request(
        "GET", "/public/b1", [*BROWSER_HEADERS.items(), *spoof]), source=PUBLIC)
    assert browser.status == 200
    assert_identity_headers(forwarded(origin, "/public/b1"), PUBLIC)
    assert SPOOFED.encode() not in origin.upstream.client_bytes()
    assert (await logged(gate, "/public/b1"))["client_ip"] == PUBLIC

    origin.upstream.clear()
    crawler = await exchange(gate.port, request(
        "GET", "/articles/b1", [("User-Agent", GPTBOT), *spoof]), source=PUBLIC)
    assert crawler.status == 403  # GPTBot from outside its range: spoofed, blocked
    line = await logged(gate, "/articles/b1")
    assert (line["client_ip"], line["identity"], line["rule"]) == (
        PUBLIC, "spoofed", "block-spoofed-crawlers")
    assert origin.upstream.client_bytes() == b""


# -- B2 ------------------------------------------------------------------------------


@dataclass
class Sent:
    status: int
    line: Event
    received: list[Received]  # what the upstream received for this case's path


@pytest.fixture(scope="module")
def chains(gate: GateProcess, shared_origin: Origin) -> dict[str, Sent]:
    """Every B2 chain sent once, then the log read once (each case's own path)."""
    shared_origin.reset()

    async def send_all() -> dict[str, tuple[int, list[Received]]]:
        out = {}
        for case in VECTORS["chains"]:
            path = f"/public/b2-{case['name']}"
            if case.get("user_agent") == "gptbot":
                headers: list[tuple[str, str]] = [("User-Agent", GPTBOT)]
            else:
                headers = list(BROWSER_HEADERS.items())
            headers += [(name, value) for name, value in case["headers"]]
            reply = await exchange(gate.port, request(
                "GET", path, [*headers, ("Connection", "close")]),
                source=case.get("peer", TRUSTED_PROXY))
            out[path] = (reply.status, [r for r in shared_origin.upstream.requests()
                                        if r.path == path])
        return out

    sent = shared_origin.servers.run(send_all())
    lines = shared_origin.servers.run(gate.wait_flushed(
        lambda es: len({e["path"] for e in es} & set(sent)) == len(sent)))
    shared_origin.reset()
    return {path: Sent(status, next(e for e in lines if e["path"] == path), received)
            for path, (status, received) in sent.items()}


@pytest.mark.parametrize("case", VECTORS["chains"], ids=lambda c: c["name"])
def test_b2_the_client_is_the_first_untrusted_hop_and_garbage_stops_the_walk(
    chains: dict[str, Sent], case: dict[str, Any]
) -> None:
    sent = chains[f"/public/b2-{case['name']}"]
    status = case.get("status", 200)
    assert sent.status == status
    assert sent.line["client_ip"] == case["client"]
    assert sent.line["identity"] == case.get("identity", "unknown")
    if status == 200:
        (received,) = sent.received
        assert received.complete
        assert_identity_headers(received, case["client"], case["xff"])
    else:
        assert sent.received == []


# -- B3 ------------------------------------------------------------------------------


async def test_b3_rotating_x_forwarded_for_does_not_reset_the_rate_limit(
    gate: GateProcess, origin: Origin
) -> None:
    client, rng = "127.0.0.4", random.Random(3)
    before = await gate.value("gatekeeper_rate_limited_total")
    statuses, retry_after = [], []
    for _ in range(30):
        fake = ".".join(str(rng.randrange(1, 255)) for _ in range(4))
        reply = await exchange(gate.port, request("GET", "/limited/b3", [
            *BROWSER_HEADERS.items(), ("X-Forwarded-For", fake), ("X-Real-IP", fake),
            ("Connection", "close")]), source=client)
        statuses.append(reply.status)
        if reply.status == 429:
            retry_after.append(reply.responses[0].header("Retry-After"))
    # 10/min with a burst of 10, keyed on the derived client: the socket peer.
    assert statuses == [200] * 10 + [429] * 20
    assert all(value is not None and int(value) >= 1 for value in retry_after)
    received = origin.upstream.requests()
    assert [r.target for r in received] == ["/limited/b3"] * 10
    assert all(r.all("X-Forwarded-For") == [client] for r in received)
    assert await gate.value("gatekeeper_rate_limited_total") - before == 20
    lines = await gate.wait_flushed(
        lambda es: sum(e["path"] == "/limited/b3" for e in es) == 30)
    assert {e["client_ip"] for e in lines if e["path"] == "/limited/b3"} == {client}


# -- B4 ------------------------------------------------------------------------------


@pytest.mark.parametrize("nominated", [
    "close, X-Forwarded-For, X-Real-IP, Forwarded, X-Gatekeeper-Crawler",
    "close, x-forwarded-for, x-real-ip, forwarded, x-gatekeeper-crawler",
], ids=["as_spelt", "lower_case"])
async def test_b4_connection_nominated_and_aliased_headers_never_replace_the_gates(
    gate: GateProcess, origin: Origin, nominated: str
) -> None:
    client = "127.0.4.6"  # a network where no crawler was refused
    path = f"/public/b4-{'lower' if nominated.islower() else 'spelt'}"
    reply = await exchange(gate.port, request("GET", path, [
        *BROWSER_HEADERS.items(), ("Connection", nominated),
        ("X_Forwarded_For", SPOOFED), ("X.Real.IP", SPOOFED),
        ("X.Gatekeeper.Crawler", "human"), ("x-gatekeeper-license-valid", "true"),
        ("X-GATEKEEPER-CRAWLER", "human"), ("X_Gatekeeper_Identity", "verified"),
    ]), source=client)
    assert reply.status == 200
    received = forwarded(origin, path)
    assert_identity_headers(received, client)
    names = [name.lower() for name, _ in received.headers]
    # In proxy mode the gate adds no X-Gatekeeper-* header, so none may arrive at all,
    # and no `_` or `.` spelling of any of them (or of X-Forwarded-For, X-Real-IP).
    assert not [n for n in names if n.startswith("x-gatekeeper-")]
    assert not [n for n in names if "_" in n or "." in n]
    assert SPOOFED.encode() not in origin.upstream.client_bytes()
    assert b"human" not in origin.upstream.client_bytes()
    line = await logged(gate, path)
    assert (line["client_ip"], line["crawler"], line["identity"]) == (client, "unknown", "unknown")


# -- B5 ------------------------------------------------------------------------------


def _ua_bytes(case: dict[str, Any]) -> bytes:
    value: bytes = case["ua"].encode("utf-8")
    if "append_bytes" in case:
        first, last = case["append_bytes"]
        value += bytes(range(first, last + 1))
    tail: str = case.get("append", "")
    return value + tail.encode("utf-8")


def _raw_request(path: str, user_agents: list[bytes]) -> bytes:
    lines = [f"GET {path} HTTP/1.1".encode(), b"Host: t"]
    lines += [b"User-Agent: " + ua for ua in user_agents]
    return b"\r\n".join([*lines, b"Connection: close", b"", b""])


async def test_b5_user_agent_tricks_are_classified_by_what_they_really_name(
    gate: GateProcess, origin: Origin
) -> None:
    # The first forwarded response after a policy load builds the declaration headers
    # (some hundreds of milliseconds; the nudges that flush the log reload the policy):
    # built here, so that what is measured below is the decisions.
    warm = await exchange(gate.port, request("GET", "/ua/warm", [
        *BROWSER_HEADERS.items(), ("Connection", "close")]), source=IN_RANGE)
    assert warm.status == 200
    decided = []
    for case in VECTORS["user_agents"]:
        origin.upstream.clear()
        path = f"/ua/{case['name']}"
        ua = _ua_bytes(case)
        reply = await exchange(gate.port, _raw_request(path, [ua]), source=IN_RANGE)
        assert reply.status == case["status"], case["name"]
        if case["status"] == 400:
            assert json.loads(reply.responses[0].body)["error"] == case["reason"]
            assert origin.upstream.client_bytes() == b""
            continue
        # Forwarded with the value as sent, whitespace around it aside (RFC 9110 OWS).
        sent_on = forwarded(origin, path).header("User-Agent")
        assert sent_on is not None
        assert sent_on.encode("latin-1") == ua.strip()
        decided.append(case)
    # No user agent: the policy's rule for it, not a guess.
    origin.upstream.clear()
    reply = await exchange(gate.port, _raw_request("/ua/none", []), source=IN_RANGE)
    assert reply.status == 403
    assert json.loads(reply.responses[0].body)["rule"] == "refuse-missing-user-agent"
    # Two user agents, and one over the header limit: refused before any decision.
    two = await exchange(gate.port, _raw_request("/ua/two", [b"GPTBot/1.2", BROWSER.encode()]),
                         source=IN_RANGE)
    huge = await exchange(gate.port, _raw_request("/ua/huge", [b"GPTBot/1.2 " + b"a" * 16384]),
                          source=IN_RANGE)
    assert (two.status, huge.status) == (400, 431)
    assert origin.upstream.client_bytes() == b""
    # What the gate took each one for, read once all were sent.
    paths = {f"/ua/{case['name']}": case for case in decided} | {"/ua/none": None}
    lines = {e["path"]: e for e in await gate.wait_flushed(
        lambda es: set(paths) <= {e["path"] for e in es}) if e["path"] in paths}
    for path, case in paths.items():
        line = lines[path]
        expected = case["crawler"] if case else "other-bot"  # no user agent: other-bot
        assert line["crawler"] == expected, path
        assert line["identity"] == ("verified" if expected == "GPTBot" else "unknown"), path
    durations = [line["duration_ms"] for line in lines.values()]
    # Every crawler label stays in the closed set, whatever the user agents were.
    names = load_catalog().names | CRAWLER_BUCKETS
    labels = {dict(labels).get("crawler") for (name, labels) in (await gate.metrics())
              if name.startswith("gatekeeper_") and "crawler" in dict(labels)}
    assert labels <= names, labels - names
    print(f"B5 worst decision latency: {max(durations):.3f} ms")
    assert max(durations) < 250  # milliseconds: classification is microseconds


# -- B6 ------------------------------------------------------------------------------


@pytest.fixture
async def list_server(tmp_path: Path) -> AsyncIterator[tuple[str, list[str], Path]]:
    """GPTBot's list over HTTPS from a local CA (trusted by the gate through
    SSL_CERT_FILE); the test swaps `prefixes[0]` to publish another list."""
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    prefixes = ["127.0.1.0/24"]

    async def gptbot(_: web.Request) -> web.Response:
        doc = {"creationTime": "2026-11-28T00:00:00.000000",
               "prefixes": [{"ipv4Prefix": prefixes[0]}]}
        return web.json_response(doc)

    app = web.Application()
    app.router.add_get("/gptbot.json", gptbot)
    async with https_server(app, ca) as base:
        yield base + "/gptbot.json", prefixes, bundle


async def _refreshed(gate: GateProcess, count: int) -> None:
    deadline = time.monotonic() + 15
    while await gate.value("gatekeeper_crawler_ranges_updates_total",
                           list="openai-gptbot", result="updated") < count:
        assert time.monotonic() < deadline, gate.log_file.read_text()[-2000:]
        await asyncio.sleep(0.05)


async def test_b6_a_crawler_is_verified_only_from_its_published_range_and_follows_a_new_list(
    own_origin: Origin, start_gate: StartGate, tmp_path: Path,
    list_server: tuple[str, list[str], Path],
) -> None:
    url, prefixes, bundle = list_server
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps({"version": 1, "sources": {"openai-gptbot": {
        "operator": "OpenAI", "url": url, "format": "prefixes", "snapshot": None}}}))
    gate = start_gate(own_origin.faults.url, env={
        "GATEKEEPER_RANGES_SOURCES": str(sources), "GATEKEEPER_RANGES_REFRESH_INTERVAL": "0.3",
        "SSL_CERT_FILE": str(bundle)})
    async def gptbot(source: str, path: str) -> Event:
        reply = await exchange(gate.port, request("GET", path, [
            ("User-Agent", GPTBOT), ("Connection", "close")]), source=source)
        line = await logged(gate, path)
        assert line["status"] == reply.status
        return line

    await _refreshed(gate, 1)  # the same range, fetched: fresh
    assert await gate.value("gatekeeper_crawler_ranges_age_seconds",
                            list="openai-gptbot") < 60
    outside, inside = await gptbot(PUBLIC, "/articles/b6-1"), await gptbot(IN_RANGE,
                                                                            "/articles/b6-2")
    assert (outside["status"], outside["identity"]) == (403, "spoofed")
    assert (inside["status"], inside["identity"]) == (401, "verified")  # a licence is needed
    # OpenAI publishes another range: the old one no longer vouches for GPTBot.
    prefixes[0] = "127.0.9.0/24"
    await _refreshed(gate, 2)
    assert await gate.value("gatekeeper_crawler_ranges_prefixes", list="openai-gptbot") == 1
    assert await gate.value("gatekeeper_crawler_ranges_age_seconds",
                            list="openai-gptbot") < 60
    before = await gate.value("gatekeeper_spoofed_requests_total", crawler="GPTBot")
    moved = await gptbot(IN_RANGE, "/articles/b6-3")
    assert (moved["status"], moved["identity"]) == (403, "spoofed")
    assert (await gptbot("127.0.9.7", "/articles/b6-4"))["identity"] == "verified"
    assert await gate.value("gatekeeper_spoofed_requests_total", crawler="GPTBot") - before == 1
    assert own_origin.upstream.requests() == []


# -- B7 ------------------------------------------------------------------------------


async def test_b7_a_refused_crawler_that_comes_back_as_a_browser_is_an_undeclared_bot(
    gate: GateProcess, origin: Origin
) -> None:
    client, bystander = "127.0.5.5", "127.0.6.6"  # networks no other case uses
    refused = await exchange(gate.port, request("GET", "/articles/b7-1", [
        ("User-Agent", GPTBOT), ("Connection", "close")]), source=client)
    assert refused.status == 403
    before = await gate.value("gatekeeper_reclassifications_total", by="behaviour")
    # Then a browser, with every header a browser sends, from the same address:
    # reclassified at its first request (ua-switch-after-refusal weighs the threshold).
    pages = 20
    for n in range(2, pages + 2):
        reply = await exchange(gate.port, request("GET", f"/premium/b7-{n}", [
            *BROWSER_HEADERS.items(), ("Connection", "close")]), source=client)
        assert reply.status == 403, n
        assert json.loads(reply.responses[0].body)["rule"] == "premium-closed-to-ai"
    assert origin.upstream.client_bytes() == b""
    line = await logged(gate, "/premium/b7-2")
    assert (line["crawler"], line["purpose"]) == ("undeclared-bot", "undeclared-bot")
    assert "ua-switch-after-refusal" in line["behaviour"]["reasons"]
    assert await gate.value("gatekeeper_reclassifications_total",
                            by="behaviour") - before == pages
    # The same browser where no crawler was refused reads the page.
    reply = await exchange(gate.port, request("GET", "/premium/b7-control", [
        *BROWSER_HEADERS.items(), ("Connection", "close")]), source=bystander)
    assert reply.status == 200
    assert forwarded(origin, "/premium/b7-control").all("X-Real-IP") == [bystander]
