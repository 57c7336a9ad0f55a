"""The forward-auth endpoint on a real socket, asked the way nginx, Traefik and Envoy
ask: what it answers, what it hints a cache may keep, and that a denial is never a
2xx. Where the reverse proxy answers the same request, the answers are compared."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from prometheus_client import CollectorRegistry
from yarl import URL

from gatekeeper import wiring
from gatekeeper.core.decision import Reason
from gatekeeper.core.facts import RequestFacts
from gatekeeper.edge.forward_auth import forward_auth_app, header_body, header_value
from gatekeeper.edge.server import Listeners
from gatekeeper.errors import SettingsError
from gatekeeper.gate import Outcome
from gatekeeper.observe import logging as gk_logging
from gatekeeper.settings import Settings
from tests.integration.conftest import (
    AHREFS,
    ASSISTANT,
    BROWSER,
    BROWSER_HEADERS,
    GPTBOT,
    CountingObserver,
    StartGate,
    Upstream,
)
from tests.integration.test_process import free_port
from tests.support.gate_process import GateProcess
from tests.support.redis_server import RedisTestServer

POLICY = """
version: 1
default: allow
licenses:
  - name: ai-train-standard
    usages: [ai-train]
    price: {amount: 0.002, currency: USD, per: request}
rules:
  - name: never-gate-declarations
    match: {paths: ["/robots.txt", "/.well-known/**"]}
    action: allow
  - name: premium-needs-a-licence
    match: {paths: ["/premium/**"], kinds: [crawler]}
    action: {require_license: {any_of: [ai-train-standard]}}
  - name: block-ai-training
    match: {purposes: [ai-training]}
    action: block
  - name: rate-limit-ai-assistants
    match: {purposes: [ai-assistant]}
    action: {rate_limit: {rate: 1/h, burst: 2, key: crawler}}
"""
CACHED = {"X-Accel-Expires": "5", "Cache-Control": "private, max-age=5"}
NOT_CACHED = {"X-Accel-Expires": "0", "Cache-Control": "no-store"}


@dataclass
class Auth:
    url: str
    observer: CountingObserver
    components: wiring.Components

    async def ask(self, target: str = "/", ua: str = BROWSER, *, method: str = "GET",
                  nginx: bool = False, path: str = "/auth", **headers: str) -> Answer:
        """A check as nginx sends one: the original target in X-Original-URI."""
        sent = dict(BROWSER_HEADERS) if ua == BROWSER else {"User-Agent": ua}
        sent["X-Original-URI"] = target
        sent["X-Original-Method"] = method
        sent["X-Forwarded-Host"] = "www.example.com"
        if nginx:
            sent["X-Gatekeeper-Front"] = "nginx"
        sent.update({k.replace("_", "-"): v for k, v in headers.items()})
        return await self.send("GET", path, {k: v for k, v in sent.items() if v != ""})

    async def send(self, method: str, path: str, headers: dict[str, str]) -> Answer:
        async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as s, s.request(
            method, URL(self.url + path, encoded=True), headers=headers,
        ) as r:
            return Answer(r.status, r.headers, await r.read())

    @property
    def outcomes(self) -> list[Outcome]:
        return [o.outcome for o in self.observer.observed]


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def cache_hint(self) -> dict[str, str]:
        return {k: self.headers[k] for k in ("X-Accel-Expires", "Cache-Control")}


StartAuth = Callable[..., Awaitable[Auth]]


@pytest.fixture
async def start_auth(upstream: Upstream, tmp_path: Path) -> AsyncIterator[StartAuth]:
    listeners: list[Listeners] = []
    built: list[wiring.Components] = []
    gk_logging.configure("json", "warning", cache_loggers=False)

    async def start(policy: str | None = POLICY, *, cache_ttl: float = 5.0,
                    path_prefix: str = "", **overrides: Any) -> Auth:
        policy_file = ""
        if policy is not None:
            path = tmp_path / f"policy-{len(listeners)}.yaml"
            path.write_text(policy)
            policy_file = str(path)
        overrides.setdefault("trusted_proxies", ("127.0.0.1/32",))
        settings = dataclasses.replace(
            Settings(), upstream=upstream.url, policy=policy_file, listen="127.0.0.1:0",
            state_dir=str(tmp_path / "state"), ranges_refresh_interval=0, **overrides)
        c = wiring.build(settings, CollectorRegistry())
        built.append(c)
        observer = CountingObserver(c.recorder)
        app = forward_auth_app(c, observer, cache_ttl=cache_ttl, path_prefix=path_prefix)
        lst = Listeners()
        port = await lst.start(app, "127.0.0.1:0", settings)
        listeners.append(lst)
        return Auth(f"http://127.0.0.1:{port}", observer, c)

    yield start
    for lst in listeners:
        await lst.stop()
    for c in built:
        await c.store.close()


async def test_allowed_browser_gets_200_with_the_decision_in_headers(
    start_auth: StartAuth,
) -> None:
    auth = await start_auth()
    answer = await auth.ask("/article?id=7")
    assert answer.status == 200
    assert answer.body == b""
    assert answer.headers["X-Gatekeeper-Action"] == "allow"
    assert answer.headers["X-Gatekeeper-Rule"] == "default"
    assert answer.headers["X-Gatekeeper-Reason"] == "allowed"
    assert answer.headers["X-Gatekeeper-Identity"] == "unknown"
    assert answer.headers["X-Gatekeeper-Crawler"] == auth.outcomes[0].classification.name
    assert "X-Gatekeeper-Status" not in answer.headers
    # A browser's requests are counted by behaviour scoring: never cached.
    assert auth.outcomes[0].behaviour is not None
    assert answer.cache_hint() == NOT_CACHED
    # The declarations the proxy adds to a forwarded GET, for the front proxy to add.
    assert answer.headers["Content-Usage"]
    (obs,) = auth.observer.observed
    assert (obs.facts.method, obs.facts.host, obs.facts.path, obs.facts.query) == (
        "GET", "www.example.com", "/article", "id=7")
    assert (obs.status, obs.bytes_sent, obs.upstream_duration) == (200, 0, None)


async def test_plain_allow_of_a_classified_client_is_cacheable(start_auth: StartAuth) -> None:
    auth = await start_auth()
    answer = await auth.ask("/page", AHREFS)
    assert answer.status == 200
    assert answer.headers["X-Gatekeeper-Crawler"] == "AhrefsBot"
    assert answer.headers["X-Gatekeeper-Identity"] == "unverified"
    assert answer.cache_hint() == CACHED


async def test_browsers_are_cacheable_when_behaviour_is_off(start_auth: StartAuth) -> None:
    auth = await start_auth(behaviour=False, cache_ttl=7.9)
    answer = await auth.ask("/page")
    assert answer.status == 200
    assert answer.cache_hint() == {"X-Accel-Expires": "7", "Cache-Control": "private, max-age=7"}


async def test_a_zero_cache_ttl_caches_nothing(start_auth: StartAuth) -> None:
    auth = await start_auth(cache_ttl=0)
    assert (await auth.ask("/page", AHREFS)).cache_hint() == NOT_CACHED
    assert (await auth.ask("/page", GPTBOT)).cache_hint() == NOT_CACHED


async def test_gptbot_gets_the_proxys_403_and_the_block_is_cacheable(
    start_auth: StartAuth, start_gatekeeper: StartGate, upstream: Upstream
) -> None:
    auth = await start_auth()
    proxy = await start_gatekeeper(upstream.url, POLICY)
    answer = await auth.ask("/article", GPTBOT)
    async with aiohttp.ClientSession() as s, s.get(
        proxy.url + "/article", headers={"User-Agent": GPTBOT}
    ) as r:
        proxied = Answer(r.status, r.headers, await r.read())
    assert answer.status == proxied.status == 403
    assert answer.body == proxied.body
    assert json.loads(answer.body) == {"error": "blocked", "rule": "block-ai-training",
                                       "status": 403}
    assert answer.headers["Content-Type"] == proxied.headers["Content-Type"]
    assert answer.headers["X-Gatekeeper-Status"] == "403"
    assert answer.headers["X-Gatekeeper-Action"] == "block"
    assert answer.cache_hint() == CACHED
    (obs,) = auth.observer.observed
    assert (obs.status, obs.bytes_sent) == (403, len(answer.body))
    assert upstream.paths() == []


async def test_nginx_gets_every_denial_as_403_with_the_answer_in_headers(
    start_auth: StartAuth,
) -> None:
    auth = await start_auth()
    answer = await auth.ask("/premium/report", GPTBOT, nginx=True)
    decision = auth.outcomes[0].decision
    assert decision.status == 402
    assert answer.status == 403
    assert answer.body == b""
    assert answer.headers["X-Gatekeeper-Status"] == "402"
    assert answer.headers["X-Gatekeeper-Body"] + "\n" == decision.body.decode()
    for name, value in decision.headers:
        assert answer.headers[name] == value
    # The observation is the client's answer, not nginx's subrequest status.
    assert auth.observer.observed[0].status == 402


async def test_rate_limited_assistant_gets_429_and_nothing_is_cached(
    start_auth: StartAuth,
) -> None:
    auth = await start_auth()
    answers = [await auth.ask("/news", ASSISTANT) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 429]
    assert int(answers[2].headers["Retry-After"]) > 0
    assert json.loads(answers[2].body)["error"] == "rate_limited"
    assert answers[2].headers["X-Gatekeeper-Status"] == "429"
    # Each request takes a token: the allowed ones are not cacheable either.
    assert [a.cache_hint() for a in answers] == [NOT_CACHED] * 3
    assert answers[0].headers["X-Gatekeeper-Action"] == "rate_limit"


async def test_licence_path_gets_402_with_the_rsl_body_never_cached(
    start_auth: StartAuth, start_gatekeeper: StartGate, upstream: Upstream
) -> None:
    auth = await start_auth()
    proxy = await start_gatekeeper(upstream.url, POLICY)
    answer = await auth.ask("/premium/report", GPTBOT)
    async with aiohttp.ClientSession() as s, s.get(
        proxy.url + "/premium/report", headers={"User-Agent": GPTBOT}
    ) as r:
        proxied_status, proxied_headers, proxied_body = r.status, r.headers, await r.read()
    assert answer.status == proxied_status == 402
    assert answer.body == proxied_body
    doc = json.loads(answer.body)
    assert doc["error"] == "license_required"
    assert [lic["name"] for lic in doc["licenses"]] == ["ai-train-standard"]
    for name in ("WWW-Authenticate", "Link", "crawler-price", "Content-Type"):
        assert answer.headers[name] == proxied_headers[name]
    assert answer.cache_hint() == NOT_CACHED


@pytest.fixture
def redis_server() -> Iterator[RedisTestServer]:
    with RedisTestServer() as server:
        yield server


async def test_nothing_decided_while_the_store_fails_is_cacheable(
    start_auth: StartAuth, redis_server: RedisTestServer,
) -> None:
    auth = await start_auth(store="redis", redis_url=redis_server.url)
    assert (await auth.ask("/page", AHREFS)).cache_hint() == CACHED
    assert (await auth.ask("/page", GPTBOT)).cache_hint() == CACHED
    redis_server.stop()
    # The same decisions, but each was reached on a fallback (the client's behaviour
    # window, the refusal note): nginx must ask again rather than keep it for 5 s.
    allowed = await auth.ask("/page", AHREFS)
    assert (allowed.status, allowed.cache_hint()) == (200, NOT_CACHED)
    blocked = await auth.ask("/page", GPTBOT, nginx=True)
    assert (blocked.status, blocked.headers["X-Gatekeeper-Status"]) == (403, "403")
    assert blocked.cache_hint() == NOT_CACHED
    assert [o.store_fallback for o in auth.outcomes] == [False, False, True, True]
    redis_server.start()
    # Back on its own: the store may hold off the server for a moment after a failure
    # (`store_retry_interval`), and answers fixed decisions from the store again then.
    deadline = time.monotonic() + 10
    while (await auth.ask("/page", AHREFS)).cache_hint() != CACHED:
        assert time.monotonic() < deadline, "still not cacheable after the store came back"
        await asyncio.sleep(0.1)


async def test_untrusted_peer_is_refused(start_auth: StartAuth) -> None:
    auth = await start_auth(trusted_proxies=("10.0.0.0/8",))
    for front in (False, True):
        answer = await auth.ask("/page", AHREFS, nginx=front)
        assert answer.status == 403
        assert json.loads(answer.body) == {"error": "untrusted_peer", "status": 403}
        assert answer.cache_hint() == NOT_CACHED
    assert auth.observer.observed == []
    assert auth.observer.refused == [("untrusted_peer", 403)] * 2


async def test_forward_auth_needs_trusted_proxies(tmp_path: Path, upstream: Upstream) -> None:
    settings = dataclasses.replace(Settings(), upstream=upstream.url,
                                   state_dir=str(tmp_path / "state"))
    c = wiring.build(settings, CollectorRegistry())
    with pytest.raises(SettingsError, match="trusted_proxies"):
        forward_auth_app(c)


@pytest.mark.parametrize(("headers", "reason"), [
    ({"X-Original-URI": "/a%2Fb"}, "encoded_slash"),
    ({"X-Original-URI": "/a/..;/b"}, "dot_segment_param"),
    ({"X-Original-URI": "http://evil.example/x"}, "absolute_form"),
    ({"X-Original-URI": "/a", "X-Original-Method": "CONNECT"}, "connect"),
    ({"X-Original-URI": "/a", "X-Original-Method": "G E T"}, "bad_method"),
    ({"X-Original-URI": "/a", "X-Forwarded-Host": "bad host"}, "bad_host"),
    ({"X-Original-URI": "/a", "X-Forwarded-Uri": "/b"}, "conflicting_forwarded"),
    ({"X-Original-URI": "/a", "X-Forwarded-Method": "POST"}, "conflicting_forwarded"),
])
async def test_bad_original_requests_get_the_proxys_400(
    start_auth: StartAuth, headers: dict[str, str], reason: str
) -> None:
    auth = await start_auth()
    base = {"User-Agent": AHREFS, "X-Forwarded-Host": "www.example.com",
            "X-Original-Method": "GET"}
    answer = await auth.send("GET", "/auth", {**base, **headers})
    assert answer.status == 400
    assert json.loads(answer.body) == {"error": reason, "status": 400}
    assert answer.headers["X-Gatekeeper-Status"] == "400"
    nginx = await auth.send("GET", "/auth", {**base, **headers, "X-Gatekeeper-Front": "nginx"})
    assert nginx.status == 403
    assert nginx.headers["X-Gatekeeper-Status"] == "400"
    assert json.loads(nginx.headers["X-Gatekeeper-Body"]) == {"error": reason, "status": 400}
    assert auth.observer.refused == [(reason, 400)] * 2


async def test_the_same_target_gets_the_same_canonical_path(start_auth: StartAuth) -> None:
    auth = await start_auth()
    for target in ("/a/../premium/report", "//premium//report", "/%70remium/report"):
        assert (await auth.ask(target, GPTBOT)).status == 402, target
    assert {o.facts.path for o in auth.observer.observed} == {"/premium/report"}


async def test_traefik_forwarded_headers(start_auth: StartAuth) -> None:
    auth = await start_auth()
    answer = await auth.send("GET", "/", {
        "User-Agent": GPTBOT, "X-Forwarded-Method": "HEAD", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "Shop.Example.com:8443", "X-Forwarded-Uri": "/premium/a?b=1",
        "X-Forwarded-For": "203.0.113.9",
    })
    assert answer.status == 402
    facts = auth.observer.observed[0].facts
    assert (facts.method, facts.scheme, facts.host, facts.path, facts.query, facts.client_ip) \
        == ("HEAD", "https", "shop.example.com", "/premium/a", "b=1", "203.0.113.9")


async def test_envoy_path_prefix_takes_the_path_and_ignores_target_headers(
    start_auth: StartAuth,
) -> None:
    auth = await start_auth(path_prefix="/ext_authz")
    answer = await auth.send("POST", "/ext_authz/premium/a?x=1", {
        "User-Agent": GPTBOT, "Host": "www.example.com", "X-Original-URI": "/robots.txt",
        "X-Forwarded-Host": "other.example", "X-Forwarded-For": "198.51.100.4"})
    assert answer.status == 402
    facts = auth.observer.observed[0].facts
    assert (facts.method, facts.host, facts.path, facts.query, facts.client_ip) == (
        "POST", "www.example.com", "/premium/a", "x=1", "198.51.100.4")
    # Outside the prefix only the target headers say what the request was.
    missing = await auth.send("GET", "/elsewhere", {"User-Agent": GPTBOT})
    assert missing.status == 400
    assert json.loads(missing.body)["error"] == "no_original_target"


async def test_envoy_without_prefix_checks_its_own_path(start_auth: StartAuth) -> None:
    auth = await start_auth()
    answer = await auth.send("GET", "/premium/x", {"User-Agent": GPTBOT})
    assert answer.status == 402
    assert auth.observer.observed[0].facts.path == "/premium/x"


async def test_client_address_through_the_trusted_chain(start_auth: StartAuth) -> None:
    auth = await start_auth()
    await auth.ask("/a", AHREFS, X_Forwarded_For="198.51.100.7, 203.0.113.5")
    await auth.ask("/a", AHREFS, X_Real_IP="192.0.2.44")
    await auth.ask("/a", AHREFS, X_Real_IP="not an address")
    assert [o.facts.client_ip for o in auth.observer.observed] == [
        "203.0.113.5", "192.0.2.44", "127.0.0.1"]


async def test_monitor_mode_allows_dry_runs_and_caches_only_fixed_ones(
    start_auth: StartAuth,
) -> None:
    auth = await start_auth(POLICY.replace("default: allow", "default: allow\nmode: monitor"))
    blocked = await auth.ask("/a", GPTBOT)
    assert blocked.status == 200
    assert blocked.headers["X-Gatekeeper-Action"] == "block"
    assert blocked.headers["X-Gatekeeper-Reason"] == "dry_run"
    assert blocked.cache_hint() == CACHED
    limited = [await auth.ask("/news", ASSISTANT) for _ in range(3)]
    assert [a.status for a in limited] == [200, 200, 200]
    assert limited[2].headers["X-Gatekeeper-Reason"] == "dry_run"
    assert [a.cache_hint() for a in limited] == [NOT_CACHED] * 3
    licence = await auth.ask("/premium/a", GPTBOT)
    assert licence.status == 200
    assert licence.cache_hint() == NOT_CACHED


async def test_monitor_rules_and_header_conditions_are_not_cacheable(
    start_auth: StartAuth,
) -> None:
    auth = await start_auth("""
version: 1
rules:
  - name: no-training
    match: {purposes: [ai-training]}
    action: block
  - name: watch-seo
    match: {crawlers: [AhrefsBot], paths: ["/watched/**"]}
    action: monitor
  - name: api-key-holders
    match: {paths: ["/api/**"], headers: {X-Api-Key: present}}
    action: allow
  - name: api-is-closed
    match: {paths: ["/api/**"]}
    action: block
""")
    watched = await auth.ask("/watched/a", AHREFS)
    assert (watched.status, watched.headers["X-Gatekeeper-Action"]) == (200, "monitor")
    assert watched.cache_hint() == NOT_CACHED
    # Both answers on /api depend on a header no cache key holds.
    assert (await auth.ask("/api/a", AHREFS, X_Api_Key="k")).cache_hint() == NOT_CACHED
    closed = await auth.ask("/api/a", AHREFS)
    assert closed.status == 403
    assert closed.cache_hint() == NOT_CACHED
    # Decided before any rule with a header condition was tried: cacheable.
    assert (await auth.ask("/api/a", GPTBOT)).cache_hint() == CACHED
    # The default comes after every rule, the header conditions included.
    assert (await auth.ask("/elsewhere", AHREFS)).cache_hint() == NOT_CACHED


async def test_public_documents_are_never_gated(start_auth: StartAuth) -> None:
    auth = await start_auth("version: 1\ndefault: block\n")
    assert (await auth.ask("/page", AHREFS)).status == 403
    robots = await auth.ask("/robots.txt", GPTBOT)
    assert robots.status == 200
    assert robots.headers["X-Gatekeeper-Rule"] == "declarations"
    assert auth.observer.observed[-1].document == "robots.txt"


async def test_a_failing_gate_answers_500_never_2xx(start_auth: StartAuth) -> None:
    auth = await start_auth()

    async def broken(facts: RequestFacts) -> Outcome:
        raise RuntimeError("boom")

    auth.components.gate.decide = broken  # type: ignore[method-assign]
    for nginx in (False, True):
        answer = await auth.ask("/page", AHREFS, nginx=nginx)
        assert answer.status == 500
        assert answer.cache_hint() == NOT_CACHED
    assert auth.observer.refused == [("internal_error", 500)] * 2


# Every combination below is checked: the answer is a 2xx exactly when the gate
# forwards, and a denial's real status is always in X-Gatekeeper-Status.
TABLE_AGENTS = (BROWSER, GPTBOT, ASSISTANT, AHREFS, "", "curl/8.5.0")
TABLE_TARGETS = ("/", "/premium/report", "/robots.txt", "/a/../premium/x", "/news?x=1",
                 "/a%2Fb", "/%ZZ")
TABLE_METHODS = ("GET", "HEAD", "POST", "DELETE")


@pytest.mark.parametrize("monitor", [False, True])
async def test_never_a_2xx_for_a_deny(start_auth: StartAuth, monitor: bool) -> None:
    policy = POLICY.replace("default: allow", "default: allow\nmode: monitor") if monitor \
        else POLICY
    auth = await start_auth(policy)
    seen = 0
    for ua, target, method, nginx in itertools.product(
            TABLE_AGENTS, TABLE_TARGETS, TABLE_METHODS, (False, True)):
        answer = await auth.ask(target, ua, method=method, nginx=nginx)
        case = (ua, target, method, nginx, answer.status)
        observed = auth.observer.observed
        if len(observed) == seen:  # refused before a decision: a 400
            assert answer.status == (403 if nginx else 400), case
            assert answer.headers["X-Gatekeeper-Status"] == "400", case
            continue
        seen = len(observed)
        decision = observed[-1].outcome.decision
        assert (200 <= answer.status < 300) is decision.forward, case
        if decision.forward:
            assert "X-Gatekeeper-Status" not in answer.headers, case
        else:
            assert answer.status == (403 if nginx else decision.status), case
            assert answer.headers["X-Gatekeeper-Status"] == str(decision.status), case
            assert observed[-1].status == decision.status, case
        if monitor:
            assert decision.forward, case
        assert decision.reason in set(Reason), case


def test_header_value_and_body_are_one_header_line() -> None:
    assert header_value("block-ai") == "block-ai"
    assert header_value("bloqué 100%") == "bloqu%C3%A9 100%25"
    assert header_body(b'{"a":1}\n') == '{"a":1}'
    assert header_body(b"two\nlines\r\n\n") == "two lines  "
    assert header_body("été".encode()) == "été"


# -- licence byte limits: refused, since a check never sees the response -------------------

# GPTBot is refused; served as the proxy, this would also be a good policy.
REFUSING_GPTBOT = """
version: 1
licenses:
  - name: ai-train-metered
    usages: [ai-train]
    limits: {requests: 1000, per: day}
rules:
  - name: block-gptbot
    match: {crawlers: [GPTBot]}
    action: block
"""
# The same licence with a byte limit, and GPTBot let through.
BYTE_LIMITED = """
version: 1
licenses:
  - name: ai-train-metered
    usages: [ai-train]
    limits: {requests: 1000, per: day}
  - name: ai-train-by-volume
    usages: [ai-train]
    limits: {bytes: 10GiB, per: month}
rules:
  - name: premium-needs-a-licence
    match: {paths: ["/premium/**"]}
    action: {require_license: {any_of: [ai-train-by-volume]}}
"""
# What the refusal says, with the licence's file and line (line 7: BYTE_LIMITED starts
# with a blank line).
BYTE_LIMIT_REFUSED = ("{policy}:7: licenses[1].limits.bytes: licence 'ai-train-by-volume' "
                      "limits the bytes a licensee may take, which forward-auth cannot count")


def test_forward_auth_refuses_to_start_with_a_licence_byte_limit(
    upstream: Upstream, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(BYTE_LIMITED)
    proc = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "run", "--mode", "forward-auth",
         "--upstream", upstream.url, "--policy", str(policy),
         "--trusted-proxy", "127.0.0.1/32", "--listen", f"127.0.0.1:{free_port()}",
         "--admin-listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "GATEKEEPER_STATE_DIR": str(tmp_path / "state")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert BYTE_LIMIT_REFUSED.format(policy=policy) in proc.stderr
    assert ("reverse proxy (--mode proxy) or the mitmproxy front end, which count response "
            "bytes") in proc.stderr


def test_only_forward_auth_refuses_a_licence_byte_limit(
    upstream: Upstream, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(BYTE_LIMITED)
    settings = dataclasses.replace(Settings(), upstream=upstream.url, policy=str(policy),
                                   state_dir=str(tmp_path / "state"))
    # The proxy counts response bytes: the same policy is served.
    wiring.build(settings, CollectorRegistry())
    with pytest.raises(SettingsError) as refused:
        wiring.build(dataclasses.replace(settings, mode="forward-auth"), CollectorRegistry())
    assert str(refused.value).startswith(BYTE_LIMIT_REFUSED.format(policy=policy))


@pytest.mark.parametrize("trigger", ["sighup", "file-watch"])
async def test_a_reload_to_a_licence_byte_limit_keeps_the_last_good_policy(
    upstream: Upstream, tmp_path: Path, trigger: str
) -> None:
    gate = GateProcess(tmp_path / "gk", upstream.url, REFUSING_GPTBOT, env={
        "GATEKEEPER_TRUSTED_PROXIES": "127.0.0.1/32",
        "GATEKEEPER_POLICY_WATCH_INTERVAL": "0" if trigger == "sighup" else "0.2"},
        args=("--mode", "forward-auth"))
    gate.start()
    check = {"User-Agent": GPTBOT, "X-Original-URI": "/premium/a",
             "X-Forwarded-Host": "www.example.com"}
    try:
        assert await _check_status(gate.url, check) == 403
        gate.policy_file.write_text(BYTE_LIMITED)
        if trigger == "sighup":
            assert gate.proc is not None
            gate.proc.send_signal(signal.SIGHUP)
        [failed] = await gate.wait_for(lambda found: len(found) >= 1,
                                       "policy_reload_failed", timeout=10)
        # Still the policy it had: GPTBot refused, not asked for a licence.
        assert await _check_status(gate.url, check) == 403
        assert failed["kept"] == "last good policy"
        [problem] = failed["problems"]
        assert problem.startswith(BYTE_LIMIT_REFUSED.format(policy=gate.policy_file))
        assert len(gate.events("policy_reloaded")) == 1  # the load at start only
    finally:
        assert gate.stop() == 0, gate.log_file.read_text()[-3000:]


async def _check_status(url: str, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as s, s.get(
            url + "/auth", headers=headers) as r:
        await r.read()
        return r.status
