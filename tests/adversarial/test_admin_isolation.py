"""C12 (reliability study §5 C): the admin listener stays apart, and its metrics stay
bounded whatever the traffic.

The public listener never serves the gate's own metrics, health or debug pages:
those paths go to the origin like any other. The admin listener serves nothing that
dumps the process or its configuration. After thousands of requests with random user
agents, paths, hosts and client addresses, the number of series stays under a fixed
budget and no label value carries any of them.
"""

from __future__ import annotations

import asyncio
import random
import re

import aiohttp

from tests.adversarial.conftest import Origin
from tests.integration.conftest import BROWSER, GPTBOT
from tests.support.gate_process import GateProcess
from tests.support.raw_http import PUBLIC, TRUSTED_PROXY, exchange, request

CLIENTS, REQUESTS = 8, 500  # 4000 requests
# Measured: 254 series before the traffic below, 279 after it; the
# budget leaves room for new metrics, not for series that grow with traffic.
SERIES_BUDGET = 1000
MARK = "zq"  # in every random user agent, path and host: never in a label value
ADMIN_ONLY = ["/metrics", "/healthz", "/readyz", "/status", "/status.json"]
DEBUG = ["/debug/pprof/", "/debug/pprof/heap", "/debug/vars", "/config", "/env", "/settings",
         "/server-status", "/actuator/env", "/.env", "/admin"]


async def test_public_metrics_health_and_debug_paths_go_to_the_origin(
    gate: GateProcess, origin: Origin
) -> None:
    for path in ADMIN_ONLY + DEBUG:
        reply = await exchange(gate.port, request("GET", path, {
            "User-Agent": BROWSER, "Accept": "text/html", "Accept-Language": "en",
            "Connection": "close"}))
        assert reply.status == 200, path
        body = reply.responses[0].body
        assert b"gatekeeper_" not in body, path
        assert b"# HELP" not in body, path
        assert b'"target": "%s"' % path.encode() in body, path  # the origin's answer
    received = sorted(origin.upstream.requests(), key=lambda r: r.at)
    assert [r.target for r in received] == ADMIN_ONLY + DEBUG


async def test_admin_listener_serves_no_debug_or_configuration_dump(gate: GateProcess) -> None:
    async with aiohttp.ClientSession() as session:
        for path in DEBUG:
            async with session.get(gate.admin_url + path) as resp:
                assert resp.status in (404, 405), path


def _random_request(rng: random.Random, n: int) -> bytes:
    token = f"{MARK}{rng.getrandbits(48):012x}"
    ua = rng.choice([
        f"Mozilla/5.0 ({token}) Gecko/20100101 Firefox/{rng.randint(1, 999)}.0",
        f"{token}Bot/{rng.randint(1, 9)}.{rng.randint(0, 9)} (+https://{token}.example/bot)",
        f"{GPTBOT} {token}",  # a catalog crawler name, from addresses it does not own
        f"python-requests/2.{rng.randint(0, 40)} {token}",
        f"curl/8.{rng.randint(0, 9)}.0",
        "",
    ])
    path = rng.choice([
        f"/p/{token}/{rng.randint(0, 10**6)}",
        f"/premium/{token}",
        f"/articles/{token}.html",
        f"/limited/{token}",
        f"/public/{token}?q={token}",
        f"/{token}%2F{token}",  # refused before a decision (encoded slash)
        f"/a/../{token}/./x",
    ])
    headers = [("Host", f"{token}.example" if n % 5 == 0 else "t")]
    if ua:
        headers.append(("User-Agent", ua))
    if n % 3 == 0:  # through the trusted proxy, from anywhere in 198.18.0.0/15
        headers.append(("X-Forwarded-For",
                        f"198.{rng.randint(18, 19)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"))
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _keep_alive_client(gate: GateProcess, source: str, requests: list[bytes]) -> int:
    """Send `requests` one after another on keep-alive connections (a new one when
    the gate closes one); the number answered."""
    answered = 0
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.port,
                                                   local_addr=(source, 0))
    try:
        for data in requests:
            writer.write(data)
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                fields = {k.strip().lower(): v.strip() for k, _, v in
                          (line.partition(":") for line in head.decode("latin-1").split(
                              "\r\n")[1:] if line)}
                if fields.get("transfer-encoding") == "chunked":
                    while (size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)):
                        await reader.readexactly(size + 2)
                    await reader.readuntil(b"\r\n")
                else:
                    await reader.readexactly(int(fields.get("content-length", "0")))
            answered += 1
            if fields.get("connection") == "close":
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", gate.port,
                                                               local_addr=(source, 0))
    finally:
        writer.close()
    return answered


def _series(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


_LABEL_VALUE = re.compile(r'="((?:[^"\\]|\\.)*)"')


async def test_random_agents_paths_and_addresses_never_grow_the_metrics(
    gate: GateProcess, origin: Origin
) -> None:
    rng = random.Random(12)
    sources = [TRUSTED_PROXY, PUBLIC] + [f"127.0.9.{n}" for n in range(1, CLIENTS - 1)]
    batches = [[_random_request(rng, c * REQUESTS + i) for i in range(REQUESTS)]
               for c in range(CLIENTS)]
    answered = await asyncio.gather(*(_keep_alive_client(gate, sources[c], batches[c])
                                      for c in range(CLIENTS)))
    assert sum(answered) == CLIENTS * REQUESTS
    async with aiohttp.ClientSession() as session, \
            session.get(gate.admin_url + "/metrics") as resp:
        text = await resp.text()
    series = _series(text)
    assert len(series) < SERIES_BUDGET, len(series)
    values = {m for line in series for m in _LABEL_VALUE.findall(line)}
    assert not [v for v in values if MARK in v]  # no user agent, path or host
    assert not [v for v in values if re.search(r"\b(198\.1[89]|127\.0)\.\d+\.\d+", v)]  # no IP
    # The traffic was decided, not refused wholesale: the counters moved.
    assert await gate.value("gatekeeper_requests_total") >= CLIENTS * REQUESTS // 2
