"""The admin listener over real sockets: /metrics scraped and parsed as Prometheus
would, /healthz, and /readyz against an upstream that listens and one that does not."""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gatekeeper.core.catalog import UNKNOWN, Classification, Crawler, Kind, Purpose
from gatekeeper.core.decision import Decision, Reason
from gatekeeper.core.facts import Identity, RequestFacts
from gatekeeper.edge.admin import ReadyResult, UpstreamProbe, build_admin_app, upstream_reachable
from gatekeeper.gate import Outcome
from gatekeeper.observe import logging as gk_logging
from gatekeeper.observe.metrics import Metrics
from gatekeeper.observe.record import Observation, Recorder

GPTBOT = Crawler("GPTBot", "OpenAI", Purpose.AI_TRAINING, ("gptbot",), "GPTBot")
Serve = Callable[..., Awaitable[str]]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    gk_logging.configure("json", "warning", io.StringIO(), cache_loggers=False)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def serve(registry: CollectorRegistry) -> AsyncIterator[Serve]:
    """Start the admin app on 127.0.0.1, on a port the kernel picks; yield its URL."""
    runners: list[web.AppRunner] = []

    async def start(ready: Callable[[], Awaitable[ReadyResult]],
                    flush: Callable[[], None] | None = None) -> str:
        runner = web.AppRunner(build_admin_app(registry, ready, flush), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


class CountingServer:
    """A TCP server that accepts, counts and closes connections: a live upstream."""

    def __init__(self) -> None:
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def live_upstream() -> AsyncIterator[CountingServer]:
    server = CountingServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port that is bound but not listening: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def observation(cls: Classification, decision: Decision, status: int) -> Observation:
    headers = CIMultiDictProxy(CIMultiDict({"User-Agent": "x"}))
    facts = RequestFacts("GET", "example.com", "/a", "", headers, "192.0.2.1", 0.0)
    identity = Identity.UNKNOWN if cls.crawler is None else Identity.UNVERIFIED
    return Observation(facts, Outcome(cls, identity, decision), status, 100, 0.004, 0.002)


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def scrape(url: str) -> Samples:
    status, content_type, text = await get(url + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


async def always_ready() -> tuple[bool, dict[str, bool]]:
    return True, {"policy_loaded": True}


async def test_metrics_scrape_shows_observed_requests(
    serve: Serve, registry: CollectorRegistry
) -> None:
    recorder = Recorder(Metrics(registry, ["GPTBot"]))
    block = Decision("block", "no-training", Reason.BLOCKED, forward=False, status=403)
    allow = Decision("allow", "default", Reason.ALLOWED, forward=True)
    for _ in range(2):
        recorder.observe(observation(Classification(Kind.CRAWLER, GPTBOT), block, 403))
    recorder.observe(observation(UNKNOWN, allow, 200))
    recorder.observe(observation(Classification(Kind.CRAWLER, Crawler(
        "Unlisted", "?", Purpose.AI_TRAINING, ("unlisted",), "Unlisted")), allow, 200))
    recorder.bad_request("encoded_slash", "192.0.2.9", "GET", 400)

    # The scrape renders in a worker thread; the app flushes the batched request
    # numbers on the event loop first.
    samples = await scrape(await serve(always_ready, recorder.metrics.flush))

    assert samples[key("gatekeeper_requests_total", crawler="GPTBot", purpose="ai-training",
                       identity="unverified", action="block", reason="blocked")] == 2
    assert samples[key("gatekeeper_requests_total", crawler="unknown", purpose="none",
                       identity="unknown", action="allow", reason="allowed")] == 1
    # A crawler name the catalog does not have never becomes a label value.
    assert samples[key("gatekeeper_requests_total", crawler="other", purpose="ai-training",
                       identity="unverified", action="allow", reason="allowed")] == 1
    assert not any("Unlisted" in str(labels) for _, labels in samples)
    assert samples[key("gatekeeper_rule_matches_total", rule="no-training", action="block")] == 2
    assert samples[key("gatekeeper_request_duration_seconds_count", action="allow")] == 2
    assert samples[key("gatekeeper_request_duration_seconds_bucket", action="block",
                       le="0.005")] == 2
    assert samples[key("gatekeeper_upstream_duration_seconds_count")] == 4
    assert sum(v for (name, labels), v in samples.items()
               if name == "gatekeeper_responses_total" and ("code", "4xx") in labels) == 2
    assert samples[key("gatekeeper_bad_requests_total", reason="encoded_slash")] == 1
    assert samples[key("gatekeeper_policy_reloads_total", result="failure")] == 0
    # The standard process and runtime collectors are in the injected registry too.
    assert any(name == "python_info" for name, _ in samples)


async def test_healthz_answers_ok_while_the_process_runs(serve: Serve) -> None:
    async def never_ready() -> tuple[bool, dict[str, bool]]:
        return False, {"policy_loaded": False}

    status, _, body = await get(await serve(never_ready) + "/healthz")
    assert (status, body) == (200, "ok\n")


async def test_readyz_is_503_naming_the_check_when_the_upstream_port_is_closed(
    serve: Serve, closed_port: int
) -> None:
    probe = UpstreamProbe("127.0.0.1", closed_port, timeout=1.0)

    async def ready() -> tuple[bool, dict[str, bool]]:
        checks = {"policy_loaded": True, "upstream_reachable": await probe()}
        return all(checks.values()), checks

    url = await serve(ready)
    async with aiohttp.ClientSession() as session, session.get(url + "/readyz") as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body == {"ready": False, "failed": ["upstream_reachable"],
                    "checks": {"policy_loaded": True, "upstream_reachable": False}}


async def test_readyz_is_200_when_a_real_upstream_listens(
    serve: Serve, live_upstream: CountingServer
) -> None:
    probe = UpstreamProbe("127.0.0.1", live_upstream.port)

    async def ready() -> tuple[bool, dict[str, bool]]:
        checks = {"policy_loaded": True, "upstream_reachable": await probe()}
        return all(checks.values()), checks

    url = await serve(ready)
    async with aiohttp.ClientSession() as session, session.get(url + "/readyz") as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        assert await resp.json() == {
            "ready": True, "checks": {"policy_loaded": True, "upstream_reachable": True}}
    assert live_upstream.accepted == 1


async def test_readyz_accepts_a_plain_mapping_of_checks(serve: Serve) -> None:
    async def ready() -> Mapping[str, bool]:
        return {"policy_loaded": True, "upstream_reachable": False}

    status, _, _ = await get(await serve(ready) + "/readyz")
    assert status == 503


async def test_a_readiness_check_that_raises_is_not_ready_rather_than_an_error(
    serve: Serve,
) -> None:
    async def broken() -> tuple[bool, dict[str, bool]]:
        raise RuntimeError("store client not started")

    status, content_type, body = await get(await serve(broken) + "/readyz")
    assert status == 503
    assert content_type.startswith("application/json")
    assert "RuntimeError" in body


async def test_the_probe_result_is_cached_and_shared_by_concurrent_callers(
    live_upstream: CountingServer,
) -> None:
    probe = UpstreamProbe("127.0.0.1", live_upstream.port, ttl=60)
    results = await asyncio.gather(*(probe() for _ in range(10)))
    assert results == [True] * 10
    assert await probe() is True
    assert live_upstream.accepted == 1


async def test_the_probe_checks_again_once_the_cache_expires(
    live_upstream: CountingServer,
) -> None:
    probe = UpstreamProbe("127.0.0.1", live_upstream.port, ttl=0.05)
    assert await probe() is True
    await asyncio.sleep(0.1)
    assert await probe() is True
    assert live_upstream.accepted == 2


async def test_upstream_reachable_reports_refused_and_unroutable_as_false(
    closed_port: int, live_upstream: CountingServer
) -> None:
    assert await upstream_reachable("127.0.0.1", live_upstream.port, 1.0) is True
    assert await upstream_reachable("127.0.0.1", closed_port, 1.0) is False
    # TEST-NET-1 is never routed: the connect can only time out (or fail fast offline).
    assert await upstream_reachable("192.0.2.1", 80, 0.2) is False
