"""C6 and C7 (reliability study §5 C): the Redis store down at start, stopped and
restarted under traffic, and frozen by `CLIENT PAUSE`, with a real redis-server.

The documented failure modes (docs/scaling-out.md "When Redis fails"): rate limits
fall back to this process's buckets (`rate_limit_fallback: local`), licence checks
that need the store answer 503 with Retry-After, block rules never depend on it;
every fallback is counted and reported in at most one warning per interval; the
store recovers on its own, without a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp
import redis

from gatekeeper.licensing.keys import Keyring
from gatekeeper.licensing.licensees import Licensees
from gatekeeper.licensing.tokens import LicenseClaims, issue_token
from gatekeeper.observe.record import STORE_WARNING_INTERVAL
from tests.adversarial.conftest import Origin, StartGate
from tests.integration.conftest import BROWSER_HEADERS, GPTBOT
from tests.support.gate_process import GateProcess
from tests.support.raw_http import IN_RANGE, exchange, request
from tests.support.redis_server import RedisTestServer

STORE_TIMEOUT = 0.1
RECOVERY = 5.0  # seconds the store may take to be used again once it is back
BURST = 10  # the harness policy's /limited/** bucket: 10/min, burst 10, per client address


def _token(state: Path) -> str:
    """A licence for GPTBot to the harness policy's `articles`, signed with a key in
    the gate's state directory."""
    Keyring.generate(state / "keys")
    Licensees(state / "licensees.json").add("acme", "Acme", "GPTBot", ["articles"])
    now = time.time()
    return issue_token(LicenseClaims(
        issuer="https://t", audience=("t",), subject="acme", crawler="GPTBot",
        crawler_key=None, license="articles", usages=("ai-train",), paths=(),
        not_before=now - 60, expires=now + 3600, token_id="c6-token",
    ), Keyring.load(state / "keys").active_signing_key())


def _gate(start_gate: StartGate, origin: Origin, store: RedisTestServer,
          tmp_path: Path) -> tuple[GateProcess, str]:
    state = tmp_path / "licensing"
    token = _token(state)
    gate = start_gate(origin.faults.url, env={
        "GATEKEEPER_STORE": "redis", "GATEKEEPER_REDIS_URL": store.url,
        "GATEKEEPER_STORE_TIMEOUT": str(STORE_TIMEOUT), "GATEKEEPER_STATE_DIR": str(state),
        "GATEKEEPER_ROBOTS_COMPLIANCE": "false",
    })
    return gate, token


async def _status(gate: GateProcess, target: str, headers: dict[str, str], source: str,
                  retry_after: list[str] | None = None) -> int:
    reply = await exchange(gate.port, request("GET", target, {**headers, "Connection": "close"}),
                           source=source, timeout=5)
    assert reply.closed  # answered in full, not cut by this client's timeout
    if retry_after is not None and reply.status == 503:
        retry_after.append(reply.responses[0].header("Retry-After") or "")
    return reply.status


def _licensed(token: str) -> dict[str, str]:
    return {"User-Agent": GPTBOT, "Authorization": f"License {token}"}


async def _fallbacks(gate: GateProcess) -> float:
    return await gate.value("gatekeeper_store_fallbacks_total", store="redis")


def _warnings(gate: GateProcess) -> list[dict[str, object]]:
    return [e for e in gate.events("store_unavailable") if e.get("level") == "warning"]


async def _recovers(gate: GateProcess, token: str) -> float:
    """Seconds until a licensed request is granted again (it needs the store)."""
    started = time.monotonic()
    while await _status(gate, "/articles/back", _licensed(token), IN_RANGE) != 200:
        assert time.monotonic() - started < RECOVERY, "the store was not used again in time"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def _gate_connections(store: RedisTestServer) -> int:
    client = redis.Redis.from_url(store.url)
    try:
        return len(client.client_list()) - 1  # not this one
    finally:
        client.close()


async def test_store_down_at_start_falls_back_as_documented_and_is_used_once_it_is_up(
    origin: Origin, start_gate: StartGate, tmp_path: Path
) -> None:
    store = RedisTestServer()  # a port, and no server on it yet
    try:
        started = time.monotonic()
        gate, token = _gate(start_gate, origin, store, tmp_path)
        # Rate limits: this process's own bucket, still a limit.
        limited = [await _status(gate, "/limited/a", {"User-Agent": "c6/1.0"}, "127.0.0.3")
                   for _ in range(BURST + 2)]
        assert limited == [200] * BURST + [429] * 2
        # A licence cannot be checked for revocation or metered: closed, and said so.
        retry: list[str] = []
        assert await _status(gate, "/articles/x", _licensed(token), IN_RANGE, retry) == 503
        assert retry == ["5"]
        # Blocks and allows never needed the store.
        assert await _status(gate, "/premium/x", {"User-Agent": GPTBOT}, IN_RANGE) == 403
        assert await _status(gate, "/public/x", BROWSER_HEADERS, "127.0.0.4") == 200
        assert await _fallbacks(gate) >= BURST + 2
        # Still ready: a load balancer must not pull every replica for a store outage.
        async with aiohttp.ClientSession() as session, \
                session.get(gate.admin_url + "/readyz") as resp:
            assert resp.status == 200
        await gate.wait_for(lambda found: len(found) >= 1, event="store_unavailable")
        outage = time.monotonic() - started
        assert 1 <= len(_warnings(gate)) <= 1 + outage // STORE_WARNING_INTERVAL

        await asyncio.to_thread(store.start)
        await _recovers(gate, token)
        # Shared counters again: no fallback, and the bucket lives in Redis.
        before = await _fallbacks(gate)
        assert await _status(gate, "/limited/b", {"User-Agent": "c6/1.0"}, "127.0.0.5") == 200
        assert await _fallbacks(gate) == before
        client = redis.Redis.from_url(store.url)
        try:
            assert client.keys("gk:rl:*")
        finally:
            client.close()
    finally:
        store.close()


async def test_store_stopped_and_restarted_under_traffic_never_answers_500(
    origin: Origin, start_gate: StartGate, tmp_path: Path
) -> None:
    with RedisTestServer() as store:
        started = time.monotonic()
        gate, token = _gate(start_gate, origin, store, tmp_path)
        seen: list[tuple[str, int]] = []
        retry: list[str] = []
        stop = asyncio.Event()

        async def traffic(n: int) -> None:
            for i in range(200):  # bounded: stopped by the test long before
                if stop.is_set():
                    return
                kind = ("limited", "licensed", "blocked")[i % 3]
                if kind == "limited":
                    status = await _status(gate, "/limited/t", {"User-Agent": "c6/1.0"},
                                           f"127.0.2.{n}")
                elif kind == "licensed":
                    status = await _status(gate, f"/articles/{n}-{i}", _licensed(token),
                                           IN_RANGE, retry)
                else:
                    status = await _status(gate, "/premium/x", {"User-Agent": GPTBOT},
                                           IN_RANGE)
                seen.append((kind, status))

        clients = [asyncio.create_task(traffic(n)) for n in range(1, 4)]
        try:
            await _until(lambda: len(seen) >= 15)
            await asyncio.to_thread(store.stop)
            down = len(seen)
            await _until(lambda: len(seen) >= down + 30)
            await asyncio.to_thread(store.start)
            took = await _recovers(gate, token)
        finally:
            stop.set()
            await asyncio.gather(*clients)
        statuses = {kind: Counter(s for k, s in seen if k == kind) for kind in
                    ("limited", "licensed", "blocked")}
        assert set(statuses["limited"]) <= {200, 429}, statuses
        assert set(statuses["licensed"]) <= {200, 503}, statuses
        assert statuses["licensed"][503] >= 1  # the outage was seen...
        assert set(retry) == {"5"}  # ...and every 503 said when to come back
        assert set(statuses["blocked"]) == {403}, statuses
        assert took < RECOVERY
        # Reported, not once per request: at most one warning per interval.
        assert 1 <= len(_warnings(gate)) <= 1 + (time.monotonic() - started) \
            // STORE_WARNING_INTERVAL


async def test_paused_store_costs_a_request_its_store_timeout_not_the_pause(
    origin: Origin, start_gate: StartGate, tmp_path: Path
) -> None:
    pause_ms = 2000
    with RedisTestServer() as store:
        gate, token = _gate(start_gate, origin, store, tmp_path)
        assert await _status(gate, "/articles/x", _licensed(token), IN_RANGE) == 200
        before = await _fallbacks(gate)
        client = redis.Redis.from_url(store.url)
        try:
            client.execute_command("CLIENT", "PAUSE", str(pause_ms), "ALL")
        finally:
            client.close()
        paused_at = time.monotonic()
        retry: list[str] = []

        async def timed(target: str, headers: dict[str, str], source: str) -> tuple[int, float]:
            started = time.monotonic()
            status = await _status(gate, target, headers, source, retry)
            return status, time.monotonic() - started

        results = await asyncio.gather(*(
            timed(target, headers, source)
            for n in range(4)
            for target, headers, source in (
                ("/limited/p", {"User-Agent": "c7/1.0"}, f"127.0.3.{n + 1}"),
                (f"/articles/p{n}", _licensed(token), IN_RANGE),
                ("/premium/x", {"User-Agent": GPTBOT}, IN_RANGE),
            )))
        batch = time.monotonic() - paused_at
        # All answered while Redis was still frozen: nobody waited for it.
        assert batch < pause_ms / 1000
        assert sorted({status for status, _ in results}) == [200, 403, 503]
        # Every 503 (a licence that could not be checked) says when to come back.
        assert retry == ["5"] * sum(status == 503 for status, _ in results)
        # A request makes at most a few store calls, each cut off at the timeout, and
        # after the first failure the store is not asked for a while
        # (docs/redis-store.md); 1 s of slack for a busy machine.
        slowest = max(elapsed for _, elapsed in results)
        assert slowest < 4 * STORE_TIMEOUT + 1.0
        assert await _fallbacks(gate) > before
        took = await _recovers(gate, token)
        assert took < pause_ms / 1000 + RECOVERY
        # Timed-out calls leave no pile of connections behind.
        assert _gate_connections(store) <= 20


async def _until(predicate: object, timeout: float = 15.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
