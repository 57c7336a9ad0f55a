"""D2: a bounded soak with a mixed workload; memory and open files stay flat and the
ledger loses nothing.

The mix per hundred requests follows the reference: 60 browsers on allowed pages,
20 AI crawlers refused, 10 licensed crawler requests, 10 requests over a rate limit.
The load is a fixed count of requests on loopback, not a duration, so the test does
the same work on a fast or a slow machine. Figures are written to
test-artifacts/soak.json for the release notes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import signal
from collections import Counter
from pathlib import Path

import aiohttp

from gatekeeper.ledger.file import read, verify
from gatekeeper.licensing.keys import Keyring
from gatekeeper.licensing.licensees import Licensees
from tests.adversarial.conftest import POLICY, Origin
from tests.integration.conftest import BROWSER_HEADERS, GPTBOT
from tests.support.gate_process import GateProcess
from tests.support.raw_http import IN_RANGE

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WARM_UP = 1000
SOAK = 15000
CONCURRENCY = 16
# After warm-up the allocator has its working set; what grows past this is a leak.
RSS_GROWTH_BUDGET = 0.10
FD_SLACK = 5


def _mix(n: int) -> list[str]:
    kinds = ["browser"] * 60 + ["refused"] * 20 + ["licensed"] * 10 + ["limited"] * 10
    rng = random.Random(n)
    out: list[str] = []
    while len(out) < n:
        block = kinds[:]
        rng.shuffle(block)
        out += block
    return out[:n]


class Load:
    """Clients of each kind, each on its own loopback source address."""

    def __init__(self, gate: GateProcess, token: str, statuses: dict[str, Counter[int]],
                 errors: list[str]) -> None:
        self.gate = gate
        self.token = token
        self.statuses = statuses
        self.errors = errors
        self.sessions: dict[str, aiohttp.ClientSession] = {}

    async def __aenter__(self) -> Load:
        sources = {"browser": "127.0.0.2", "refused": "127.0.0.3", "licensed": IN_RANGE,
                   "limited": "127.0.0.5"}
        for kind, source in sources.items():
            connector = aiohttp.TCPConnector(local_addr=(source, 0), limit=CONCURRENCY)
            self.sessions[kind] = aiohttp.ClientSession(connector=connector,
                                                        auto_decompress=False)
        return self

    async def __aexit__(self, *_: object) -> None:
        for session in self.sessions.values():
            await session.close()

    async def one(self, kind: str, i: int) -> None:
        url = self.gate.url
        if kind == "browser":
            url, headers = f"{url}/public/page-{i % 50}", BROWSER_HEADERS
        elif kind == "refused":
            url, headers = f"{url}/premium/{i}", {"User-Agent": GPTBOT}
        elif kind == "licensed":
            url = f"{url}/articles/{i % 20}"
            headers = {"User-Agent": GPTBOT, "Authorization": f"License {self.token}"}
        else:
            url, headers = f"{url}/limited/{i}", {"User-Agent": "soak-limited/1.0"}
        try:
            async with self.sessions[kind].get(url, headers=headers) as r:
                await r.read()
                self.statuses.setdefault(kind, Counter())[r.status] += 1
        except aiohttp.ClientError as exc:
            self.errors.append(f"{kind}: {exc!r}")

    async def run(self, kinds: list[str], offset: int) -> None:
        queue = iter(enumerate(kinds, offset))

        async def worker() -> None:
            for i, kind in queue:
                await self.one(kind, i)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def _token(gate: GateProcess, secret: str) -> str:
    basic = base64.b64encode(f"acme:{secret}".encode()).decode()
    async with aiohttp.ClientSession() as s, s.post(
        gate.url + "/.well-known/gatekeeper/token",
        data={"grant_type": "rsl", "license": "articles", "resource": gate.url + "/articles/1"},
        headers={"Authorization": f"Basic {basic}", "User-Agent": GPTBOT},
    ) as r:
        body = await r.json()
        assert r.status == 200, body
        return str(body["access_token"])


async def test_mixed_soak_keeps_memory_and_files_flat_and_the_ledger_whole(
    own_origin: Origin, tmp_path: Path
) -> None:
    gate = GateProcess(tmp_path / "gate", own_origin.faults.url, POLICY,
                       env={"GATEKEEPER_SITE_HOSTS": "127.0.0.1",
                            "GATEKEEPER_LOG_LEVEL": "warning"})
    state = gate.workdir / "state"
    Keyring.generate(state / "keys")
    secret = Licensees(state / "licensees.json").add("acme", "Acme AI", "GPTBot", ["articles"])
    gate.start()
    try:
        token = await _token(gate, secret)
        statuses: dict[str, Counter[int]] = {}
        errors: list[str] = []
        async with Load(gate, token, statuses, errors) as load:
            await load.run(_mix(WARM_UP), 0)
        # Measured with no client connected, once after warm-up (the upstream pool and
        # the allocator have their working set) and once after the soak.
        await asyncio.sleep(0.5)
        rss_before, fds_before = gate.rss_kib(), gate.open_fds()
        async with Load(gate, token, statuses, errors) as load:
            await load.run(_mix(SOAK), WARM_UP)
            rss_during = gate.rss_kib()
        await asyncio.sleep(0.5)
        rss_after, fds_after = gate.rss_kib(), gate.open_fds()
    finally:
        code = gate.stop(signal.SIGTERM)
    figures = {
        "requests": WARM_UP + SOAK, "rss_kib_after_warm_up": rss_before,
        "rss_kib_end_of_load": rss_during, "rss_kib_after": rss_after,
        "fds_after_warm_up": fds_before, "fds_after": fds_after,
        "statuses": {k: dict(v) for k, v in statuses.items()},
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "soak.json").write_text(json.dumps(figures, indent=2))

    assert errors == []
    assert code == 0
    assert set(statuses["browser"]) == {200}
    assert set(statuses["refused"]) == {403}
    assert set(statuses["licensed"]) == {200}
    # 10 tokens in the bucket, then one every 6 s: most of these are refused.
    assert set(statuses["limited"]) <= {200, 429}
    assert statuses["limited"][429] > statuses["limited"][200]
    assert rss_during <= rss_before * (1 + RSS_GROWTH_BUDGET), figures
    assert rss_after <= rss_before * (1 + RSS_GROWTH_BUDGET), figures
    assert fds_after <= fds_before + FD_SLACK, figures
    # Every licensed response is in the ledger, and the chain verifies.
    ledger = state / "ledger.jsonl"
    assert verify(ledger).ok
    assert len(list(read(ledger))) == statuses["licensed"][200]
