"""The gate in front of a real upstream: what is forwarded, what is answered, and
that a denied request never reaches the upstream."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from gatekeeper.core.facts import RequestFacts
from gatekeeper.gate import Gate, Outcome
from tests.integration.conftest import (
    BROWSER,
    GPTBOT,
    MiB,
    RawUpstream,
    StartGate,
    StartRaw,
    Upstream,
    raw_request,
    read_head,
    status_of,
    statuses_of,
)

PREMIUM_BLOCKED = """
version: 1
rules:
  - name: block-premium
    match: {paths: ["/premium/**"]}
    action: block
"""


async def test_browser_is_forwarded_and_gptbot_blocked_without_reaching_upstream(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    async with aiohttp.ClientSession() as s:
        async with s.get(gk.url + "/article", headers={"User-Agent": BROWSER}) as r:
            assert r.status == 200
            assert (await r.json())["raw_path"] == "/article"
        async with s.get(gk.url + "/article", headers={"User-Agent": GPTBOT}) as r:
            assert r.status == 403
            body = await r.json()
            # GPTBot's name from loopback, outside OpenAI's published ranges: a spoofer.
            assert body == {"error": "blocked", "rule": "block-spoofed-crawlers", "status": 403}
    assert upstream.paths() == ["/article"]


async def test_gptbot_may_still_read_robots_txt(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    upstream.robots_txt = "User-agent: *\nDisallow: /private/\n"
    gk = await start_gatekeeper(upstream.url)
    async with aiohttp.ClientSession() as s, s.get(
        gk.url + "/robots.txt", headers={"User-Agent": GPTBOT}
    ) as r:
        assert r.status == 200
        text = await r.text()
    # Answered by Gatekeeper: the origin's file (read with its own user agent) and the
    # group declaring what the default policy enforces for GPTBot.
    assert upstream.paths() == []
    assert "Disallow: /private/" in text
    assert "User-agent: GPTBot\n" in text


async def test_rate_limited_assistant_gets_429_with_retry_after(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    policy = """
version: 1
rules:
  - match: {purposes: [ai-assistant]}
    action: {rate_limit: {rate: 1/h, burst: 2}}
"""
    gk = await start_gatekeeper(upstream.url, policy)
    ua = "Mozilla/5.0 (compatible; ChatGPT-User/1.0; +https://openai.com/bot)"
    statuses = []
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.get(gk.url + "/a", headers={"User-Agent": ua}) as r:
                statuses.append(r.status)
                retry_after = r.headers.get("Retry-After")
    assert statuses == [200, 200, 429]
    assert retry_after is not None
    assert int(retry_after) > 0
    assert len(upstream.seen) == 2


async def test_require_license_answers_402_with_machine_readable_terms(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    policy = """
version: 1
licenses:
  - name: ai-train-standard
    usages: [ai-train]
    price: {amount: 0.002, currency: USD, per: request}
rules:
  - match: {purposes: [ai-training]}
    action: {require_license: {any_of: [ai-train-standard]}}
"""
    gk = await start_gatekeeper(upstream.url, policy)
    async with aiohttp.ClientSession() as s, s.get(
        gk.url + "/a", headers={"User-Agent": GPTBOT}
    ) as r:
        assert r.status == 402
        body = await r.json()
        assert [offer["name"] for offer in body["licenses"]] == ["ai-train-standard"]
        assert body["licenses"][0]["price"] == {"amount": "0.002", "currency": "USD",
                                                "per": "request"}
        assert r.headers["Link"] == '</license.xml>; rel="license"; type="application/rsl+xml"'
        assert r.headers["crawler-price"] == "USD 0.002"
        assert r.headers["WWW-Authenticate"].startswith('License error="invalid_request"')
    assert upstream.seen == []


async def test_monitor_mode_forwards_what_would_be_blocked(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    policy = "version: 1\nmode: monitor\nrules:\n  - match: {purposes: [ai-training]}\n" \
             "    action: block\n"
    gk = await start_gatekeeper(upstream.url, policy)
    async with aiohttp.ClientSession() as s, s.get(
        gk.url + "/a", headers={"User-Agent": GPTBOT}
    ) as r:
        assert r.status == 200
    assert upstream.paths() == ["/a"]


async def test_path_tricks_never_reach_a_blocked_path(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, PREMIUM_BLOCKED)
    tricks = [
        "/premium/report", "/a/../premium/report", "/%2e%2e/premium/report",
        "/free/%2E%2E/premium/report", "//premium/report", "/./premium/report",
        "/premium/%2Freport", "/premium%2freport", "/free/..%2fpremium/report",
        "/premium\\report", "/%70remium/report", "/free//../premium/report",
    ]
    statuses = {}
    for target in tricks:
        req = (f"GET {target} HTTP/1.1\r\nHost: site.example\r\nUser-Agent: {BROWSER}\r\n"
               "Connection: close\r\n\r\n").encode()
        statuses[target] = status_of(await raw_request(gk.port, req))
    assert all(code in (400, 403) for code in statuses.values()), statuses
    assert not any("premium" in p.lower() for p in upstream.paths()), upstream.paths()


async def test_canonical_path_is_what_upstream_receives(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    req = (b"GET /a/./b/../c//d/%7Euser/%e2%82%ac?q=%2F..&x=1 HTTP/1.1\r\nHost: h\r\n"
           b"Connection: close\r\n\r\n")
    assert status_of(await raw_request(gk.port, req)) == 200
    assert upstream.paths() == ["/a/c/d/~user/%E2%82%AC?q=%2F..&x=1"]


async def test_ambiguous_requests_get_400_and_upstream_sees_nothing(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    cases = [
        b"GET http://evil.example/admin HTTP/1.1\r\nHost: h\r\n\r\n",
        b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"GET /a%00b HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /a%zz HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /a HTTP/1.1\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: user@h\r\n\r\n",
    ]
    for raw in cases:
        response = await raw_request(gk.port, raw, timeout=2)
        assert status_of(response) in (400, 0), (raw, response[:80])
    assert upstream.seen == []
    counted = gk.components.registry.get_sample_value
    assert sum(
        counted("gatekeeper_bad_requests_total", {"reason": r}) or 0
        for r in ("absolute_form", "connect", "asterisk_form", "ambiguous_framing", "nul",
                  "bad_escape", "bad_host")
    ) >= 7


async def test_spoofed_forwarded_for_from_untrusted_peer_is_replaced(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    req = (b"GET /a HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 66.249.66.1\r\n"
           b"X-Real-IP: 66.249.66.1\r\nForwarded: for=66.249.66.1\r\nTrue-Client-IP: 1.1.1.1\r\n"
           b"X-Gatekeeper-Decision: allow\r\nX_Forwarded_For: 9.9.9.9\r\n"
           b"Connection: close\r\n\r\n")
    assert status_of(await raw_request(gk.port, req, source="127.0.0.7")) == 200
    headers = upstream.seen[0].headers
    names = [k.lower() for k, _ in headers]
    assert dict((k.lower(), v) for k, v in headers)["x-forwarded-for"] == "127.0.0.7"
    assert dict((k.lower(), v) for k, v in headers)["x-real-ip"] == "127.0.0.7"
    assert dict((k.lower(), v) for k, v in headers)["forwarded"].startswith("for=127.0.0.7;")
    assert names.count("x-forwarded-for") == 1
    for dropped in ("true-client-ip", "x-gatekeeper-decision", "x_forwarded_for"):
        assert dropped not in names


async def test_trusted_proxy_chain_is_walked_right_to_left(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, trusted_proxies=("127.0.0.2/32", "10.0.0.0/8"))
    req = (b"GET /a HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.9, 198.51.100.4, "
           b"10.1.2.3\r\nConnection: close\r\n\r\n")
    assert status_of(await raw_request(gk.port, req, source="127.0.0.2")) == 200
    xff = dict((k.lower(), v) for k, v in upstream.seen[0].headers)["x-forwarded-for"]
    # 10.1.2.3 is a trusted hop, 198.51.100.4 is the first untrusted address: the client.
    assert xff == "10.1.2.3, 198.51.100.4"


async def test_hop_by_hop_and_connection_nominated_headers_never_reach_upstream(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    req = (b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret, X-Forwarded-For\r\n"
           b"Keep-Alive: timeout=5\r\nX-Secret: s3cr3t\r\nTE: trailers\r\nTrailer: X-T\r\n"
           b"Proxy-Authorization: Basic eA==\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n")
    await raw_request(gk.port, req, timeout=1)
    names = {k.lower() for k, _ in upstream.seen[0].headers}
    for gone in ("x-secret", "keep-alive", "te", "trailer", "proxy-authorization", "upgrade"):
        assert gone not in names
    assert "x-kept" in names
    # Connection cannot nominate the gate's own forwarded headers away.
    assert "x-forwarded-for" in names


async def test_response_headers_keep_duplicates_and_lose_hop_by_hop(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    async with aiohttp.ClientSession() as s, s.get(gk.url + "/set-cookie") as r:
        assert len(r.headers.getall("Set-Cookie")) == 2


async def test_metrics_count_decisions_by_crawler_and_action(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    async with aiohttp.ClientSession() as s:
        for ua in (BROWSER, GPTBOT, GPTBOT):
            async with s.get(gk.url + "/a", headers={"User-Agent": ua}) as r:
                await r.read()
    value = gk.components.registry.get_sample_value
    assert value("gatekeeper_requests_total", {
        "crawler": "GPTBot", "purpose": "ai-training", "identity": "spoofed",
        "action": "block", "reason": "blocked"}) == 2
    assert value("gatekeeper_spoofed_requests_total", {"crawler": "GPTBot"}) == 2
    assert value("gatekeeper_verifications_total",
                 {"method": "ip-ranges", "result": "refuted"}) == 2
    assert value("gatekeeper_requests_total", {
        "crawler": "unknown", "purpose": "none", "identity": "unknown",
        "action": "allow", "reason": "allowed"}) == 1
    assert value("gatekeeper_rule_matches_total",
                 {"rule": "block-spoofed-crawlers", "action": "block"}) == 2


def _json(body: bytes) -> dict[str, object]:
    return json.loads(body.split(b"\r\n\r\n", 1)[1])  # type: ignore[no-any-return]


async def test_pipelined_requests_are_decided_one_by_one_in_order(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    req = b"".join(
        f"GET /p{i} HTTP/1.1\r\nHost: h\r\nUser-Agent: {ua}\r\n{last}\r\n".encode()
        for i, (ua, last) in enumerate(
            [(BROWSER, ""), (GPTBOT, ""), (BROWSER, ""), (GPTBOT, "Connection: close\r\n")]
        )
    )
    response = await raw_request(gk.port, req)
    statuses = statuses_of(response)
    assert statuses == [200, 403, 200, 403]
    assert upstream.paths() == ["/p0", "/p2"]


async def test_every_request_is_observed_exactly_once(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, max_body_size=1000)
    async with aiohttp.ClientSession() as s:
        for path, ua in (("/a", BROWSER), ("/a", GPTBOT), ("/big?mib=1", BROWSER),
                         ("/redirect", BROWSER)):
            async with s.get(gk.url + path, headers={"User-Agent": ua},
                             allow_redirects=False) as r:
                await r.read()
        async with s.post(gk.url + "/up", data=b"x" * 5000) as r:
            assert r.status == 413
    await raw_request(gk.port, b"GET /%zz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    await raw_request(gk.port, b"GET /a HTTP/1.x\r\nHost: h\r\n\r\n")
    decided = [(o.facts.path, o.status) for o in gk.observer.observed]
    assert decided == [("/a", 200), ("/a", 403), ("/big", 200), ("/redirect", 302)]
    assert gk.observer.observed[2].bytes_sent == MiB
    assert gk.observer.refused == [
        ("body_too_large", 413), ("bad_escape", 400), ("bad_request_line", 400),
    ]


class ExplodingGate(Gate):
    """A gate with a bug in it."""

    def __init__(self) -> None:
        pass

    async def decide(self, facts: RequestFacts) -> Outcome:
        raise RuntimeError("bug")


async def test_a_failing_gate_answers_500_and_forwards_nothing(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url, gate=ExplodingGate())
    async with aiohttp.ClientSession() as s, s.get(gk.url + "/a") as r:
        assert r.status == 500
        assert await r.json() == {"error": "internal_error", "status": 500}
    assert upstream.seen == []
    assert gk.observer.refused == [("internal_error", 500)]


async def test_requests_the_parser_refuses_get_the_same_json_answer(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    cases = {
        b"GET /a HTTP/1.1\r\nHost : h\r\n\r\n": "bad_header",
        b"GET /a HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n": "bad_header",
        b"GET /a HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n": "bad_header",
        b"GET /a HTTP/1.x\r\nHost: h\r\n\r\n": "bad_request_line",
        b"G@T /a HTTP/1.1\r\nHost: h\r\n\r\n": "bad_method",
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked"
        b"\r\n\r\n0\r\n\r\n": "ambiguous_framing",
    }
    for raw, reason in cases.items():
        response = await raw_request(gk.port, raw)
        assert status_of(response) == 400, raw
        assert _json(response) == {"error": reason, "status": 400}, raw
    assert [r for r, _ in gk.observer.refused] == list(cases.values())
    assert upstream.seen == []
    value = gk.components.registry.get_sample_value
    assert value("gatekeeper_bad_requests_total", {"reason": "bad_header"}) == 3


async def test_http09_and_transfer_encodings_the_parser_tolerates_get_400(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url)
    cases = [
        b"GET /a\r\n\r\n",
        b"GET /a HTTP/0.9\r\nHost: h\r\n\r\n",
        b"POST /a HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ]
    for raw in cases:
        response = await raw_request(gk.port, raw, timeout=2)
        assert status_of(response) in (400, 0), (raw, response[:80])
    assert upstream.seen == []


async def test_upstream_base_path_is_prefixed_to_the_canonical_path(
    upstream: Upstream, start_gatekeeper: StartGate
) -> None:
    gk = await start_gatekeeper(upstream.url + "/base/")
    req = b"GET /a/../b/./c?q=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    assert status_of(await raw_request(gk.port, req)) == 200
    assert upstream.paths() == ["/base/b/c?q=1"]


async def test_response_hop_by_hop_headers_never_reach_the_client(
    raw_upstream: StartRaw, start_gatekeeper: StartGate
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     state: RawUpstream) -> None:
        await read_head(reader, state)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\n"
                     b"X-Internal: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic"
                     b"\r\nUpgrade: h2c\r\nX-Kept: 1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
                     b"Content-Length: 2\r\n\r\nok")
        await writer.drain()

    up = await raw_upstream(script)
    gk = await start_gatekeeper(up.url)
    async with aiohttp.ClientSession() as s, s.get(gk.url + "/a") as r:
        assert await r.read() == b"ok"
        names = {k.lower() for k in r.headers}
        assert r.headers.getall("Set-Cookie") == ["a=1", "b=2"]
    assert "x-kept" in names
    for gone in ("x-internal", "keep-alive", "proxy-authenticate", "upgrade"):
        assert gone not in names
