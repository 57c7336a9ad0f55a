"""A real nginx with the shipped deploy/nginx/gatekeeper-forward-auth.conf, in front
of a recording upstream, asking Gatekeeper's forward-auth endpoint (in-process) about
every request: allow, block, rate limit, licence, the 400 for a bad target, and
nginx's cache of the decisions that may be cached.

The configuration is the shipped file with only its addresses and cache directory
replaced (each replacement must match exactly, so the test fails if the file drifts),
included in a minimal nginx.conf in the test's directory. nginx runs in the
foreground, unprivileged paths only; `scripts/test.sh` installs Debian's `nginx`
package, and without it these tests fail rather than skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from prometheus_client import CollectorRegistry
from yarl import URL

from gatekeeper import wiring
from gatekeeper.edge.forward_auth import forward_auth_app
from gatekeeper.edge.server import Listeners
from gatekeeper.observe import logging as gk_logging
from gatekeeper.settings import Settings
from tests.integration.conftest import (
    AHREFS,
    ASSISTANT,
    BROWSER,
    BROWSER_HEADERS,
    GPTBOT,
    CountingObserver,
    Upstream,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "nginx" / "gatekeeper-forward-auth.conf"
POLICY = """
version: 1
default: allow
licenses:
  - name: ai-train-standard
    usages: [ai-train]
    description: Training on the premium articles, billed per request.
    price: {amount: 0.002, currency: USD, per: request}
rules:
  - name: never-gate-declarations
    match: {paths: ["/robots.txt", "/.well-known/**"]}
    action: allow
  - name: premium-needs-a-licence
    match: {paths: ["/premium/**"], kinds: [crawler]}
    action: {require_license: {any_of: [ai-train-standard]}}
  - name: gone-for-scrapers
    match: {crawlers: [Bytespider]}
    action:
      block: {status: 451, body: "unavailable for legal reasons", headers: {X-Reason: legal}}
  - name: block-ai-training
    match: {purposes: [ai-training]}
    action: block
  - name: rate-limit-ai-assistants
    match: {purposes: [ai-assistant]}
    action: {rate_limit: {rate: 1/h, burst: 3, key: crawler}}
"""
START_TIMEOUT = 15.0


def find_nginx() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.fail("nginx is not installed: these tests need Debian's nginx package "
                    "(scripts/test.sh installs it; or apt-get install nginx)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the shipped config changed: {old!r} is not there once"
    return text.replace(old, new)


def render(conf: str, *, listen: int, gatekeeper: int, origin: int, cache: Path) -> str:
    """The shipped configuration with the test's addresses and cache directory."""
    conf = replace_once(conf, "server 127.0.0.1:8080;", f"server 127.0.0.1:{gatekeeper};")
    conf = replace_once(conf, "server 127.0.0.1:8000;", f"server 127.0.0.1:{origin};")
    conf = replace_once(conf, "listen 80;", f"listen 127.0.0.1:{listen};")
    conf = replace_once(conf, "listen [::]:80;", "")
    return replace_once(conf, "/var/cache/nginx/gatekeeper-auth", str(cache))


def main_conf(workdir: Path, include: Path) -> str:
    temp = workdir / "temp"
    # Started as root, nginx would run its worker as nobody, who cannot enter pytest's
    # private temporary directories.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {include};
    # The shipped log format: what Gatekeeper decided, and whether nginx's cache did.
    access_log {workdir}/access.log gatekeeper;
}}
"""


@dataclass
class Front:
    url: str
    observer: CountingObserver
    workdir: Path
    gatekeeper: Listeners

    async def access_log(self, lines: int) -> list[str]:
        """The last `lines` lines of nginx's access log, once they are written."""
        path = self.workdir / "access.log"
        async with asyncio.timeout(5):
            while True:
                found = path.read_text().splitlines() if path.exists() else []
                if len(found) >= lines:
                    return found[-lines:]
                await asyncio.sleep(0.02)

    def decided(self) -> list[tuple[str, str, int]]:
        """(user agent, path, status) of each request Gatekeeper decided."""
        return [(o.facts.user_agent, o.facts.path, o.status) for o in self.observer.observed]


@pytest.fixture
async def front(upstream: Upstream, tmp_path: Path) -> AsyncIterator[Front]:
    nginx = find_nginx()
    gk_logging.configure("json", "warning", cache_loggers=False)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = dataclasses.replace(
        Settings(), upstream=upstream.url, policy=str(policy), listen="127.0.0.1:0",
        trusted_proxies=("127.0.0.1/32",), state_dir=str(tmp_path / "state"),
        ranges_refresh_interval=0,
    )
    c = wiring.build(settings, CollectorRegistry())
    observer = CountingObserver(c.recorder)
    listeners = Listeners()
    gk_port = await listeners.start(forward_auth_app(c, observer, cache_ttl=30), "127.0.0.1:0",
                                    settings)
    workdir = tmp_path / "nginx"
    (workdir / "temp").mkdir(parents=True)
    port = free_port()
    include = workdir / "gatekeeper-forward-auth.conf"
    include.write_text(render(SHIPPED.read_text(), listen=port, gatekeeper=gk_port,
                              origin=upstream.port, cache=workdir / "cache"))
    conf = workdir / "nginx.conf"
    conf.write_text(main_conf(workdir, include))
    cmd = [nginx, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf),
           "-g", "daemon off;"]
    check = await asyncio.create_subprocess_exec(
        *cmd[:-2], "-t", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = await check.communicate()
    assert check.returncode == 0, f"nginx -t refused the shipped config:\n{err.decode()}"
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_for_port(port, proc, workdir)
        yield Front(f"http://127.0.0.1:{port}", observer, workdir, listeners)
    finally:
        await stop(proc)
        await listeners.stop()


async def stop(proc: asyncio.subprocess.Process) -> None:
    """Stop nginx (SIGTERM, then SIGKILL after 10 s)."""
    if proc.returncode is None:
        proc.terminate()
    try:
        async with asyncio.timeout(10):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def wait_for_port(port: int, proc: asyncio.subprocess.Process, workdir: Path) -> None:
    async with asyncio.timeout(START_TIMEOUT):
        while True:
            if proc.returncode is not None:
                log = (workdir / "error.log").read_text(errors="replace")
                pytest.fail(f"nginx exited with {proc.returncode}:\n{log}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            await asyncio.sleep(0.05)


async def get(session: aiohttp.ClientSession, url: str, ua: str,
              **headers: str) -> tuple[int, CIMultiDictProxy[str], bytes]:
    sent = dict(BROWSER_HEADERS) if ua == BROWSER else {"User-Agent": ua}
    sent.update({k.replace("_", "-"): v for k, v in headers.items()})
    async with session.get(url, headers=sent, allow_redirects=False) as r:
        return r.status, r.headers, await r.read()


async def test_browser_is_forwarded_with_the_decision_for_the_origin(
    front: Front, upstream: Upstream
) -> None:
    async with aiohttp.ClientSession() as s:
        # A client's own X-Gatekeeper-* headers never reach the origin.
        status, headers, body = await get(s, front.url + "/article?id=7", BROWSER,
                                          X_Gatekeeper_Action="forged")
    assert status == 200
    assert json.loads(body)["raw_path"] == "/article?id=7"
    assert upstream.paths() == ["/article?id=7"]
    seen = {k.lower(): v for k, v in upstream.seen[0].headers}
    assert seen["x-gatekeeper-action"] == "allow"
    assert seen["x-gatekeeper-rule"] == "default"
    assert seen["x-gatekeeper-reason"] == "allowed"
    assert seen["x-gatekeeper-identity"] == "unknown"
    assert "x-gatekeeper-crawler" in seen
    assert "x-gatekeeper-status" not in seen
    assert "x-gatekeeper-body" not in seen
    # The declarations the proxy adds to forwarded responses, added by nginx.
    assert "Content-Usage" in headers
    assert front.decided() == [(BROWSER, "/article", 200)]


async def test_gptbot_is_refused_with_the_proxys_json_and_the_origin_sees_nothing(
    front: Front, upstream: Upstream
) -> None:
    async with aiohttp.ClientSession() as s:
        status, headers, body = await get(s, front.url + "/article", GPTBOT)
        head = await s.head(front.url + "/article", headers={"User-Agent": GPTBOT})
    assert status == 403
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Gatekeeper-Status"] == "403"
    assert json.loads(body) == {"error": "blocked", "rule": "block-ai-training", "status": 403}
    assert body == front.observer.observed[0].outcome.decision.body
    assert head.status == 403
    assert await head.read() == b""
    assert upstream.paths() == []


async def test_custom_block_status_headers_and_body(front: Front, upstream: Upstream) -> None:
    ua = "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) " \
         "Mobile Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)"
    async with aiohttp.ClientSession() as s:
        status, headers, body = await get(s, front.url + "/article", ua)
    decision = front.observer.observed[0].outcome.decision
    assert decision.rule == "gone-for-scrapers", front.decided()
    assert status == 451
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    # nginx relays the headers it is configured for; a policy's own (X-Reason) is not
    # among them (deploy/nginx/README.md).
    assert "X-Reason" not in headers
    assert body == b"unavailable for legal reasons\n"
    assert upstream.paths() == []


async def test_rate_limited_assistant_gets_429_with_retry_after_and_is_never_cached(
    front: Front, upstream: Upstream
) -> None:
    async with aiohttp.ClientSession() as s:
        answers = [await get(s, front.url + "/news", ASSISTANT) for _ in range(5)]
    assert [a[0] for a in answers] == [200, 200, 200, 429, 429]
    _, headers, body = answers[3]
    assert int(headers["Retry-After"]) > 0
    assert headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert (doc["error"], doc["status"]) == ("rate_limited", 429)
    assert doc["rule"] == "rate-limit-ai-assistants"
    # Every request was decided by Gatekeeper: counted, never answered from the cache.
    assert [d[2] for d in front.decided()] == [200, 200, 200, 429, 429]
    assert upstream.paths() == ["/news"] * 3


async def test_licence_path_answers_402_with_the_rsl_body_and_headers(
    front: Front, upstream: Upstream
) -> None:
    async with aiohttp.ClientSession() as s:
        # A client-supplied X-Original-URI does not move the check elsewhere: nginx
        # sets it from the request line.
        status, headers, body = await get(s, front.url + "/premium/report", GPTBOT,
                                          X_Original_URI="/robots.txt")
        again, _, _ = await get(s, front.url + "/premium/report", GPTBOT)
    assert (status, again) == (402, 402)
    decision = front.observer.observed[0].outcome.decision
    assert body == decision.body
    doc = json.loads(body)
    assert (doc["error"], doc["status"]) == ("license_required", 402)
    assert [lic["name"] for lic in doc["licenses"]] == ["ai-train-standard"]
    assert headers["WWW-Authenticate"].startswith('License error="invalid_request"')
    assert 'rel="license"' in headers["Link"]
    assert headers["crawler-price"] == dict(decision.headers)["crawler-price"]
    # A licence decision counts: both requests reached Gatekeeper.
    assert len(front.decided()) == 2
    assert upstream.paths() == []


async def test_bad_target_gets_the_proxys_400(front: Front, upstream: Upstream) -> None:
    async with aiohttp.ClientSession() as s:
        url = URL(front.url + "/a%2Fb", encoded=True)
        async with s.get(url, headers={"User-Agent": BROWSER}) as r:
            status, body = r.status, await r.json()
    assert status == 400
    assert body == {"error": "encoded_slash", "status": 400}
    assert upstream.paths() == []


async def test_cacheable_decisions_are_answered_by_nginx_on_repeat(
    front: Front, upstream: Upstream
) -> None:
    async with aiohttp.ClientSession() as s:
        allowed = [await get(s, front.url + "/page", AHREFS) for _ in range(3)]
        blocked = [await get(s, front.url + "/page", GPTBOT) for _ in range(3)]
        other_path = await get(s, front.url + "/other", AHREFS)
    assert [a[0] for a in allowed] == [200] * 3
    assert [b[0] for b in blocked] == [403] * 3
    assert all(b[2] == blocked[0][2] for b in blocked)
    assert other_path[0] == 200
    # The origin got every allowed request; Gatekeeper decided each (UA, path) once.
    assert upstream.paths() == ["/page"] * 3 + ["/other"]
    assert front.decided() == [(AHREFS, "/page", 200), (GPTBOT, "/page", 403),
                               (AHREFS, "/other", 200)]
    # Each allowed request carried the decision, from the cache too.
    for seen in upstream.seen:
        assert ("X-Gatekeeper-Crawler", "AhrefsBot") in seen.headers
    # nginx's log counts what Gatekeeper did not see.
    log = await front.access_log(7)
    assert [line.rsplit("gk_cache=", 1)[1] for line in log] == [
        "MISS", "HIT", "HIT", "MISS", "HIT", "HIT", "MISS"]
    assert "gk=block/block-ai-training gk_status=403" in log[3]


async def test_browsers_are_decided_every_time_while_behaviour_is_scored(
    front: Front, upstream: Upstream
) -> None:
    async with aiohttp.ClientSession() as s:
        statuses = [(await get(s, front.url + "/page", BROWSER))[0] for _ in range(3)]
    assert statuses == [200] * 3
    assert len(front.decided()) == 3


async def test_signed_or_licensed_requests_bypass_the_cache(
    front: Front, upstream: Upstream
) -> None:
    async with aiohttp.ClientSession() as s:
        await get(s, front.url + "/page", AHREFS)
        await get(s, front.url + "/page", AHREFS, Authorization="License abc")
        await get(s, front.url + "/page", AHREFS, Signature_Input='sig1=("@authority")')
        await get(s, front.url + "/page", AHREFS)
    # The first is cached; the two with credentials were decided again and stored
    # nothing, and the last came from the cache.
    assert len(front.decided()) == 3
    assert len(upstream.paths()) == 4


async def test_gatekeeper_unreachable_fails_closed(front: Front, upstream: Upstream) -> None:
    await front.gatekeeper.stop()
    async with aiohttp.ClientSession() as s:
        status, _, _ = await get(s, front.url + "/fresh", AHREFS)
    assert status == 500
    assert upstream.paths() == []
