"""The usage ledger copied into a real redis-server: in order, once, verifiable,
caught up from the file after an outage, so nothing is lost, and trimmed only by an
export that was written, with the chain still verifiable across the trim; the
streams of replicas that are gone removed once exported, and a replica that comes
back after that copying neither too much nor too little."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio
from prometheus_client import CollectorRegistry

from gatekeeper import wiring
from gatekeeper.ledger.file import FileLedger, read
from gatekeeper.ledger.mirror import (
    LedgerMirror,
    TrimRefused,
    live_key,
    read_anchor,
    read_copies,
    read_store,
    remove_gone,
    stream_lines,
    trim,
    trim_exported,
    verify_store,
)
from gatekeeper.ledger.record import UsageRecord
from gatekeeper.settings import Settings
from gatekeeper.store.redis import RedisStore
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


def _env(redis_server: RedisTestServer, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    env.update({"GATEKEEPER_STORE": "redis", "GATEKEEPER_REDIS_URL": redis_server.url,
                "GATEKEEPER_STATE_DIR": str(tmp_path / "empty")})
    return env


async def _cli(env: dict[str, str], *args: str,
               stdout: int = asyncio.subprocess.PIPE) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatekeeper", "ledger", *args, env=env, stdout=stdout,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, (out or b"").decode(), err.decode()


async def _mirrored(client: redis.asyncio.Redis, tmp_path: Path, host: str,
                    records: list[UsageRecord],
                    live_for: float | None = None) -> tuple[FileLedger, LedgerMirror]:
    path = tmp_path / host / "ledger.jsonl"
    path.parent.mkdir(exist_ok=True)
    ledger = await _ledger(path, records)
    mirror = LedgerMirror(client, path, source=f"{host}/ledger.jsonl", live_for=live_for)
    await mirror.sync()
    return ledger, mirror


async def test_export_with_trim_empties_the_streams_and_later_records_still_verify(
    client: redis.asyncio.Redis, redis_server: RedisTestServer, tmp_path: Path
) -> None:
    a, mirror_a = await _mirrored(client, tmp_path, "host-a", [_record(n) for n in range(3)])
    b, mirror_b = await _mirrored(client, tmp_path, "host-b", [_record(n) for n in range(2)])
    env = _env(redis_server, tmp_path)
    out = tmp_path / "november.json"
    code, stdout, err = await _cli(env, "export", "--from-store", "--trim", "--format", "json",
                                   "--output", str(out))
    assert code == 0, err
    assert stdout == ""
    assert '"count": 5' in out.read_text()
    assert f"{mirror_a.key}: trimmed 3 exported records, kept 0" in err
    assert (await client.xlen(mirror_a.key), await client.xlen(mirror_b.key)) == (0, 0)
    assert await read_anchor(client, "gk:ledger-anchor:host-a/ledger.jsonl") == (
        a.last_seq, a.last_hash)
    # The replica goes on; so does a restarted one, after the anchor rather than from
    # the file's first record.
    for n in range(3, 5):
        a.append(_record(n))
    a.flush_now()
    assert await mirror_a.sync() == 2
    a.append(_record(5))
    a.flush_now()
    assert await LedgerMirror(client, a.path, source="host-a/ledger.jsonl").sync() == 1
    await a.close()
    await b.close()
    assert await client.xlen(mirror_a.key) == 3
    code, stdout, err = await _cli(env, "verify", "--from-store")
    assert code == 0, stdout + err
    assert f"{mirror_a.key}: ok, 3 records (after record 3, where it was trimmed)" in stdout
    assert f"{mirror_b.key}: ok, 0 records (after record 2, where it was trimmed)" in stdout
    # The next export holds only what came after the first: nothing is billed twice.
    code, stdout, err = await _cli(env, "export", "--from-store", "--format", "json")
    assert code == 0, err
    assert '"count": 3' in stdout


async def test_trim_after_an_export_with_until_keeps_the_later_records(
    client: redis.asyncio.Redis, redis_server: RedisTestServer, tmp_path: Path
) -> None:
    _, mirror = await _mirrored(client, tmp_path, "host-a", [_record(n) for n in range(5)])
    until = "2026-11-30T00:53:23Z"  # records 0, 1 and 2 come before it; 3 and 4 do not
    code, stdout, err = await _cli(_env(redis_server, tmp_path), "export", "--from-store",
                                   "--until", until, "--trim")
    assert code == 0, err
    assert stdout.splitlines()[1].startswith("acme,3,")
    assert await client.xlen(mirror.key) == 2
    [result] = (await verify_store(client)).values()
    assert (result.ok, result.start_seq, result.records) == (True, 3, 2)


async def test_a_failed_export_trims_nothing(
    client: redis.asyncio.Redis, redis_server: RedisTestServer, tmp_path: Path
) -> None:
    _, mirror = await _mirrored(client, tmp_path, "host-a", [_record(n) for n in range(4)])
    env = _env(redis_server, tmp_path)
    unwritable = tmp_path / "no-such-directory" / "export.csv"
    code, _, err = await _cli(env, "export", "--from-store", "--trim", "--output",
                              str(unwritable))
    assert code == 2
    assert "cannot write" in err
    # Standard output that cannot take it: a full disk.
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        code, _, err = await _cli(env, "export", "--from-store", "--trim", stdout=full)
    finally:
        os.close(full)
    assert code == 2
    assert "No space left on device" in err
    assert await client.xlen(mirror.key) == 4
    assert await read_anchor(client, "gk:ledger-anchor:host-a/ledger.jsonl") is None


async def test_a_broken_copy_is_neither_exported_nor_trimmed(
    client: redis.asyncio.Redis, redis_server: RedisTestServer, tmp_path: Path
) -> None:
    _, mirror = await _mirrored(client, tmp_path, "host-a", [_record(n) for n in range(3)])
    lines = await stream_lines(client, mirror.key)
    await client.delete(mirror.key)
    for line in [lines[0], lines[2]]:  # record 2 removed from the copy
        await client.xadd(mirror.key, {"line": line})
    out = tmp_path / "export.csv"
    code, _, err = await _cli(_env(redis_server, tmp_path), "export", "--from-store",
                              "--trim", "--output", str(out))
    assert code == 2
    assert "broken at record 2 (removed" in err
    assert not out.exists()
    assert await client.xlen(mirror.key) == 2


async def test_a_stream_rebuilt_after_its_export_is_not_trimmed(
    client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    ledger, mirror = await _mirrored(client, tmp_path, "host-a", [_record(n) for n in range(3)])
    [copy] = await read_copies(client)
    # Redis lost its data between the export and the trim; the mirror copied again.
    await client.flushdb()
    assert await LedgerMirror(client, ledger.path, source="host-a/ledger.jsonl").sync() == 3
    with pytest.raises(TrimRefused, match="changed after it was exported"):
        await trim(client, copy, 3)
    assert await client.xlen(mirror.key) == 3
    await ledger.close()


async def test_a_kept_name_with_a_new_ledger_file_gets_a_stream_of_its_own(
    client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    old, mirror = await _mirrored(client, tmp_path, "web-0", [_record(n) for n in range(3)])
    await old.close()
    # The pod comes back with the same name and an empty state directory.
    old.path.unlink()
    new = await _ledger(old.path, [_record(n, licensee="zeta") for n in range(2)])
    again = LedgerMirror(client, old.path, source="web-0/ledger.jsonl")
    assert await again.sync() == 2
    assert again.key.startswith(mirror.key + "~")
    assert await LedgerMirror(client, old.path, source="web-0/ledger.jsonl").sync() == 0
    await new.close()
    results = await verify_store(client)
    assert {key: r.records for key, r in results.items()} == {mirror.key: 3, again.key: 2}
    assert all(r.ok for r in results.values())


async def test_replica_name_names_the_ledger_stream(
    redis_server: RedisTestServer, tmp_path: Path
) -> None:
    settings = dataclasses.replace(
        Settings(), upstream="http://127.0.0.1:9", store="redis", redis_url=redis_server.url,
        state_dir=str(tmp_path),
        replica_name="gatekeeper-0", ranges_refresh_interval=0)
    c = wiring.build(settings, CollectorRegistry())
    ledger = FileLedger(tmp_path / "ledger.jsonl")
    mirror = wiring.ledger_mirror(c, ledger)
    assert mirror is not None
    try:
        # (tmp_path is a resolved path already)
        assert mirror.key == f"gk:ledger:gatekeeper-0:{tmp_path}/ledger.jsonl"
        assert isinstance(c.store, RedisStore)
        default = LedgerMirror(c.store.client, ledger.path)
        assert default.key == f"gk:ledger:{socket.gethostname()}:{tmp_path}/ledger.jsonl"
    finally:
        await mirror.close()
        await ledger.close()
        await c.store.close()


async def _gone(client: redis.asyncio.Redis, mirror: LedgerMirror) -> None:
    """Wait until the mirror's liveness key has expired, as a stopped replica's does."""
    for _ in range(100):
        if not await client.exists(live_key(mirror.key)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{live_key(mirror.key)} did not expire")


async def test_a_running_mirror_keeps_a_liveness_key_that_expires_once_it_stops(
    client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = await _ledger(path, [_record(0)])
    mirror = LedgerMirror(client, path, source="host-a/ledger.jsonl", interval=0.05,
                          live_for=0.5)
    mirror.start()
    await asyncio.sleep(1.0)  # twice its lifetime: kept alive by the running mirror
    assert live_key(mirror.key) == "gk:ledger-live:host-a/ledger.jsonl"
    assert 0 < await client.pttl(live_key(mirror.key)) <= 500
    # The one ledger key other than the streams and anchors that never expires: the
    # store's epoch, a single key however many replicas come and go.
    assert await client.pttl("gk:ledger-epoch") == -1
    await mirror.close()
    await ledger.close()
    await _gone(client, mirror)


async def test_export_with_trim_removes_a_gone_replicas_stream_and_keeps_a_running_ones(
    client: redis.asyncio.Redis, redis_server: RedisTestServer, tmp_path: Path
) -> None:
    gone, mirror_gone = await _mirrored(client, tmp_path, "web-7f9c",
                                        [_record(n) for n in range(3)], live_for=0.2)
    await gone.close()
    running, mirror_running = await _mirrored(client, tmp_path, "web-2b41",
                                              [_record(n) for n in range(2)])
    await _gone(client, mirror_gone)
    env = _env(redis_server, tmp_path)
    out = tmp_path / "export.json"
    code, _, err = await _cli(env, "export", "--from-store", "--trim", "--format", "json",
                              "--output", str(out))
    assert code == 0, err
    assert '"count": 5' in out.read_text()
    assert f"{mirror_gone.key}: removed with its anchor" in err
    assert f"{mirror_running.key}: removed" not in err
    assert not await client.exists(mirror_gone.key, "gk:ledger-anchor:web-7f9c/ledger.jsonl")
    # The running replica's emptied stream and anchor stay, and it continues after them.
    assert await client.exists(mirror_running.key) == 1
    assert await read_anchor(client, "gk:ledger-anchor:web-2b41/ledger.jsonl") == (
        running.last_seq, running.last_hash)
    running.append(_record(2))
    running.flush_now()
    assert await mirror_running.sync() == 1
    await running.close()
    code, stdout, err = await _cli(env, "verify", "--from-store")
    assert code == 0, stdout + err
    assert stdout == f"{mirror_running.key}: ok, 1 records (after record 2, where it was " \
        "trimmed)\n"


async def test_a_gone_replicas_stream_with_records_not_yet_exported_is_kept(
    client: redis.asyncio.Redis, redis_server: RedisTestServer, tmp_path: Path
) -> None:
    ledger, mirror = await _mirrored(client, tmp_path, "web-7f9c",
                                     [_record(n) for n in range(5)], live_for=0.2)
    await ledger.close()
    await _gone(client, mirror)
    until = "2026-11-30T00:53:23Z"  # records 0, 1 and 2 come before it; 3 and 4 do not
    code, _, err = await _cli(_env(redis_server, tmp_path), "export", "--from-store",
                              "--until", until, "--trim")
    assert code == 0, err
    assert "removed" not in err
    assert await client.xlen(mirror.key) == 2
    [result] = (await verify_store(client)).values()
    assert (result.ok, result.start_seq, result.records) == (True, 3, 2)


async def test_a_replica_back_under_its_name_after_its_stream_was_removed_copies_the_rest(
    client: redis.asyncio.Redis, redis_server: RedisTestServer, tmp_path: Path
) -> None:
    ledger, mirror = await _mirrored(client, tmp_path, "web-0", [_record(n) for n in range(3)],
                                     live_for=0.2)
    for n in range(3, 5):
        ledger.append(_record(n))  # in the file, but the pod stopped before copying them
    await ledger.close()
    await _gone(client, mirror)
    env = _env(redis_server, tmp_path)
    code, stdout, err = await _cli(env, "export", "--from-store", "--trim", "--format", "json")
    assert code == 0, err
    assert '"count": 3' in stdout
    assert f"{mirror.key}: removed with its anchor" in err
    assert await client.exists(mirror.key) == 0
    # Back with its name and its file (a StatefulSet pod on its volume), and one more.
    again = await _ledger(ledger.path, [_record(5)])
    back = LedgerMirror(client, ledger.path, source="web-0/ledger.jsonl")
    assert await back.sync() == 3  # records 4, 5 and 6: none exported twice, none skipped
    assert back.key == mirror.key
    await again.close()
    [result] = (await verify_store(client)).values()
    assert (result.ok, result.start_seq, result.records) == (True, 3, 3)
    code, stdout, err = await _cli(env, "export", "--from-store", "--format", "json")
    assert code == 0, err
    assert '"count": 3' in stdout


async def test_a_mirror_whose_stream_was_removed_while_it_ran_continues_after_the_export(
    client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    # Its liveness lapsed (a long pause, a partition) while an export removed the
    # stream: the next copy notices, anchors the stream again and goes on.
    ledger, mirror = await _mirrored(client, tmp_path, "web-0", [_record(n) for n in range(3)],
                                     live_for=0.2)
    await _gone(client, mirror)
    await trim_exported(client, await read_copies(client), None, None)
    assert await remove_gone(client) == [mirror.key]
    ledger.append(_record(3))
    ledger.flush_now()
    assert await mirror.sync() == 1
    await ledger.close()
    [result] = (await verify_store(client)).values()
    assert (result.ok, result.start_seq, result.records) == (True, 3, 1)
    assert await client.exists(live_key(mirror.key)) == 1


async def test_a_new_ledger_file_under_a_removed_name_is_copied_from_its_first_record(
    client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    old, mirror = await _mirrored(client, tmp_path, "web-0", [_record(n) for n in range(3)],
                                  live_for=0.2)
    await old.close()
    await _gone(client, mirror)
    await trim_exported(client, await read_copies(client), None, None)
    assert await remove_gone(client) == [mirror.key]
    # The pod comes back with the same name and an empty state directory.
    shutil.rmtree(old.path.parent)
    old.path.parent.mkdir()
    new = await _ledger(old.path, [_record(n, licensee="zeta") for n in range(2)])
    again = LedgerMirror(client, old.path, source="web-0/ledger.jsonl")
    assert await again.sync() == 2
    assert again.key == mirror.key  # nothing of the old chain is left to keep apart
    await new.close()
    [result] = (await verify_store(client)).values()
    assert (result.ok, result.start_seq, result.records) == (True, 0, 2)


async def test_a_new_chain_stays_in_its_own_stream_once_the_old_chains_stream_is_removed(
    client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    old, mirror = await _mirrored(client, tmp_path, "web-0", [_record(n) for n in range(3)])
    await old.close()
    # Back with the same name and an empty state directory: a chain of its own.
    shutil.rmtree(old.path.parent)
    old.path.parent.mkdir()
    new = await _ledger(old.path, [_record(n, licensee="zeta") for n in range(2)])
    again = LedgerMirror(client, old.path, source="web-0/ledger.jsonl")
    assert await again.sync() == 2
    assert again.key.startswith(mirror.key + "~")
    # Everything is exported; the old chain's stream is nobody's any more and goes.
    await trim_exported(client, await read_copies(client), None, None)
    assert await remove_gone(client) == [mirror.key]
    # Restarted, it goes on in its own stream, not from its first record under the name.
    new.append(_record(2, licensee="zeta"))
    new.flush_now()
    restarted = LedgerMirror(client, old.path, source="web-0/ledger.jsonl")
    assert await restarted.sync() == 1
    assert restarted.key == again.key
    await new.close()
    results = await verify_store(client)
    assert {key: (r.ok, r.start_seq, r.records) for key, r in results.items()} == {
        again.key: (True, 2, 1)}
