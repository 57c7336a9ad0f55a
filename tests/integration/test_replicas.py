"""Three `gatekeeper run` processes sharing one real redis-server: one global rate
limit across them, and a revocation made on one host refused by every replica within
a second. Each process has its own state directory (ledger), with the same signing
keys and licensees, as replicas deployed from one configuration would."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gatekeeper.licensing.keys import Keyring
from gatekeeper.licensing.licensees import Licensees
from tests.integration.conftest import GPTBOT, Upstream
from tests.integration.test_process import run_gatekeeper  # noqa: F401  (the fixture)
from tests.support.redis_server import RedisTestServer

POLICY = """
version: 1
licenses:
  - {name: train, usages: [ai-train], paths: ["/articles/**"]}
rules:
  - name: assistants-share-one-limit
    match: {crawlers: [ChatGPT-User]}
    action: {rate_limit: {rate: 100/min, burst: 100, key: crawler}}
  - name: training-needs-a-licence
    match: {purposes: [ai-training]}
    action: {require_license: {any_of: [train]}}
"""
ASSISTANT = "Mozilla/5.0 (compatible; ChatGPT-User/1.0; +https://openai.com/bot)"
OPENAI_IP = "20.171.206.7"  # in OpenAI's published GPTBot range


@pytest.fixture
def redis_server() -> Iterator[RedisTestServer]:
    with RedisTestServer() as server:
        yield server


def _replicas(tmp_path: Path, redis_url: str, upstream: Upstream, start, count: int):  # type: ignore[no-untyped-def]
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    config = tmp_path / "settings.yaml"
    config.write_text(json.dumps({
        "store": "redis", "redis_url": redis_url, "trusted_proxies": ["127.0.0.0/8"],
        "site_hosts": ["127.0.0.1"], "policy": str(policy), "robots_compliance": False,
    }))
    shared = tmp_path / "shared"
    Keyring.generate(shared / "keys")
    Licensees(shared / "licensees.json").add("acme", "Acme AI", "GPTBot", ["train"])
    for i in range(count):
        # run_gatekeeper gives process i the state directory state-<i>.
        state = tmp_path / f"state-{i}"
        shutil.copytree(shared / "keys", state / "keys")
        shutil.copy(shared / "licensees.json", state / "licensees.json")
    return [start(upstream.url, "--config", str(config)) for _ in range(count)], config


async def _token_command(env: dict[str, str], *args: str) -> tuple[int, str]:
    return await _gatekeeper(env, "token", *args)


async def _gatekeeper(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatekeeper", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def _get(s: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> int:
    async with s.get(url, headers=headers) as r:
        await r.read()
        return r.status


async def test_three_replicas_enforce_one_global_rate_limit(
    upstream: Upstream, run_gatekeeper, redis_server: RedisTestServer, tmp_path: Path  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    replicas, _ = _replicas(tmp_path, redis_server.url, upstream, run_gatekeeper, 3)
    started = time.monotonic()
    async with aiohttp.ClientSession() as s:
        statuses = await asyncio.gather(*(
            _get(s, replicas[n % 3].url + f"/page/{n}", {"User-Agent": ASSISTANT})
            for n in range(300)))
    elapsed = time.monotonic() - started
    allowed = statuses.count(200)
    # 100 in the bucket, plus what refills at 100/min while the requests ran.
    assert 100 <= allowed <= 100 + int(elapsed * 100 / 60) + 2, (allowed, elapsed)
    assert statuses.count(429) == 300 - allowed
    # Every replica refused some: the limit is global, not 100 per process.
    for i in range(len(replicas)):
        assert 429 in statuses[i::3], i


async def test_a_revocation_reaches_every_replica_within_a_second(
    upstream: Upstream, run_gatekeeper, redis_server: RedisTestServer, tmp_path: Path  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    replicas, config = _replicas(tmp_path, redis_server.url, upstream, run_gatekeeper, 3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    env["GATEKEEPER_STATE_DIR"] = str(tmp_path / "state-0")
    code, out = await _token_command(env, "issue", "acme", "--license", "train",
                                     "--config", str(config))
    assert code == 0, out
    token = out.strip().splitlines()[-1]
    payload = token.split(".")[1]
    jti = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]
    headers = {"User-Agent": GPTBOT, "X-Forwarded-For": OPENAI_IP,
               "Authorization": f"License {token}"}
    async with aiohttp.ClientSession() as s:
        for replica in replicas:
            assert await _get(s, replica.url + "/articles/1", headers) == 200
        code, out = await _token_command(env, "revoke", jti, "--config", str(config))
        assert code == 0, out
        assert "also in the redis store" in out
        done = time.monotonic()
        # The other replicas never saw the revocation file: only the shared store.
        for replica in replicas[1:]:
            assert await _get(s, replica.url + "/articles/1", headers) == 401
        assert time.monotonic() - done < 1.0
    # Each replica's ledger (one licensed request each) is copied into the store, where
    # one command verifies them all.
    for _ in range(60):
        code, out = await _gatekeeper(env, "ledger", "verify", "--from-store", "--config",
                                      str(config))
        if code == 0 and out.count(": ok, 1 records") == 3:
            break
        await asyncio.sleep(0.1)
    assert out.count(": ok, 1 records") == 3, out
