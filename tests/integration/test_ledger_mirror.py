"""The usage ledger copied into a real redis-server: in order, once, verifiable, and
caught up from the file after an outage, so nothing is lost."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio

from gatekeeper.ledger.file import FileLedger, read
from gatekeeper.ledger.mirror import LedgerMirror, read_store, stream_lines, verify_store
from gatekeeper.ledger.record import UsageRecord
from tests.support.redis_server import RedisTestServer


@pytest.fixture
def redis_server() -> Iterator[RedisTestServer]:
    with RedisTestServer() as server:
        yield server


@pytest.fixture
async def client(redis_server: RedisTestServer) -> AsyncIterator[redis.asyncio.Redis]:
    c = redis.asyncio.Redis.from_url(redis_server.url, socket_timeout=1.0,
                                     socket_connect_timeout=1.0, protocol=2)
    yield c
    await c.aclose()


def _record(n: int, licensee: str = "acme") -> UsageRecord:
    return UsageRecord(time=1_796_000_000.0 + n, licensee=licensee, license="train",
                       crawler="GPTBot", path=f"/articles/{n}", status=200, bytes=1000 + n,
                       price="0.002", currency="USD")


async def _ledger(path: Path, records: list[UsageRecord]) -> FileLedger:
    ledger = FileLedger(path, flush_interval=0.01)
    await ledger.start()
    for record in records:
        ledger.append(record)
    ledger.flush_now()
    return ledger


async def test_lines_are_copied_once_in_order_and_verify(
    client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = await _ledger(path, [_record(n) for n in range(5)])
    mirror = LedgerMirror(client, path, source="host-a/ledger.jsonl")
    assert await mirror.sync() == 5
    assert await mirror.sync() == 0  # nothing twice
    ledger.append(_record(5))
    ledger.flush_now()
    assert await mirror.sync() == 1
    await ledger.close()
    lines = await stream_lines(client, mirror.key)
    assert lines == path.read_bytes().splitlines(keepends=True)
    [result] = (await verify_store(client)).values()
    assert result.ok
    assert result.records == 6
    assert await read_store(client) == list(read(path))
    # A new mirror (a restarted process) continues after what the stream holds.
    assert await LedgerMirror(client, path, source="host-a/ledger.jsonl").sync() == 0


async def test_an_outage_loses_nothing_and_the_copy_catches_up(
    client: redis.asyncio.Redis, redis_server: RedisTestServer, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = await _ledger(path, [_record(n) for n in range(3)])
    mirror = LedgerMirror(client, path, source="host-a/ledger.jsonl", interval=0.05)
    mirror.start()
    await asyncio.sleep(0.3)
    redis_server.stop()
    for n in range(3, 8):
        ledger.append(_record(n))  # the file keeps every record meanwhile
    ledger.flush_now()
    await asyncio.sleep(0.3)
    assert mirror.failures > 0
    # Restarted without its data (the test server keeps none): copied again from the
    # start of the file, as one chain.
    redis_server.start()
    for _ in range(100):
        await asyncio.sleep(0.05)
        if len(await stream_lines(client, mirror.key)) == 8:
            break
    await mirror.close()
    await ledger.close()
    [result] = (await verify_store(client)).values()
    assert result.ok
    assert result.records == 8


async def test_every_replica_is_read_and_an_edited_copy_is_caught(
    client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    for host, count in (("host-a", 3), ("host-b", 2)):
        path = tmp_path / host / "ledger.jsonl"
        path.parent.mkdir()
        ledger = await _ledger(path, [_record(n, licensee=host) for n in range(count)])
        await LedgerMirror(client, path, source=f"{host}/ledger.jsonl").sync()
        await ledger.close()
    records = await read_store(client)
    assert sorted(r.licensee for r in records) == ["host-a"] * 3 + ["host-b"] * 2
    key = "gk:ledger:host-b/ledger.jsonl"
    lines = await stream_lines(client, key)
    # Someone with write access to Redis rewrites the first record's path.
    await client.delete(key)
    for line in [lines[0].replace(b"/articles/0", b"/articles/9"), *lines[1:]]:
        await client.xadd(key, {"line": line})
    results = await verify_store(client)
    assert results["gk:ledger:host-a/ledger.jsonl"].ok
    assert not results[key].ok
    assert results[key].reason == "edited"


async def test_export_from_store_aggregates_every_replica(
    client: redis.asyncio.Redis, redis_server: RedisTestServer, tmp_path: Path
) -> None:
    for host in ("host-a", "host-b"):
        path = tmp_path / host / "ledger.jsonl"
        path.parent.mkdir()
        ledger = await _ledger(path, [_record(n, licensee="acme") for n in range(2)])
        await LedgerMirror(client, path, source=f"{host}/ledger.jsonl").sync()
        await ledger.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    env.update({"GATEKEEPER_STORE": "redis", "GATEKEEPER_REDIS_URL": redis_server.url,
                "GATEKEEPER_STATE_DIR": str(tmp_path / "empty")})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatekeeper", "ledger", "export", "--from-store",
        "--format", "json", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert '"count": 4' in out.decode()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatekeeper", "ledger", "verify", "--from-store", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().count(": ok, 2 records") == 2
