"""PolicyHolder and the file watcher: a good file replaces the policy, a bad one
is reported and the last good policy stays; only real content changes reload."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.model import Block, Policy
from gatekeeper.errors import Problem
from gatekeeper.policy import reload as reload_module
from gatekeeper.policy.loader import load_default_policy, load_policy_file, read_policy_file
from gatekeeper.policy.reload import PolicyHolder, ReloadResult, watch
from gatekeeper.policy.vocabulary import MAX_POLICY_FILE_BYTES

CATALOG = load_catalog()
GOOD = "version: 1\nrules:\n  - {name: one, action: block}\n"
INTERVAL = 0.02


def holder_for(tmp_path: Path, text: str = GOOD) -> tuple[PolicyHolder, Path]:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return PolicyHolder(load_policy_file(path, CATALOG), str(path), CATALOG), path


def names(holder: PolicyHolder) -> list[str]:
    return [r.name for r in holder.current.rules]


# -- reload -------------------------------------------------------------------------------


def test_good_reload_swaps_the_policy(tmp_path: Path) -> None:
    holder, path = holder_for(tmp_path)
    path.write_text("version: 1\nrules:\n  - {name: two, action: allow}\n")
    result = holder.reload()
    assert result == ReloadResult(True, str(path))
    assert names(holder) == ["two"]
    assert holder.get() is holder.current


def test_bad_reload_keeps_the_last_good_policy_and_reports_why(tmp_path: Path) -> None:
    holder, path = holder_for(tmp_path)
    before = holder.current
    path.write_text("version: 1\nrules:\n  - {name: two, action: alow}\n")
    result = holder.reload()
    assert not result.ok
    assert result.source == str(path)
    assert [(p.line, p.field) for p in result.problems] == [(3, "rules[0].action")]
    assert holder.current is before


def test_an_oversized_file_is_refused_without_being_loaded(tmp_path: Path) -> None:
    holder, path = holder_for(tmp_path)
    before = holder.current
    # Valid YAML all the way: only the size is wrong (a long comment).
    path.write_text(GOOD + "# " + "x" * MAX_POLICY_FILE_BYTES + "\n")
    started = time.perf_counter()
    result = holder.reload()
    assert time.perf_counter() - started < 1.0  # loading it all takes tens of seconds
    assert not result.ok
    assert [p.message for p in result.problems] == ["cannot read policy file: larger than 1024 KiB"]
    assert holder.current is before


def test_a_deleted_file_keeps_the_last_good_policy(tmp_path: Path) -> None:
    holder, path = holder_for(tmp_path)
    path.unlink()
    result = holder.reload()
    assert not result.ok
    assert "cannot read policy file" in result.problems[0].message
    assert names(holder) == ["one"]


def test_the_embedded_policy_reloads_as_a_no_op() -> None:
    policy = load_default_policy(CATALOG)
    holder = PolicyHolder(policy, None, CATALOG)
    assert holder.reload().ok
    assert holder.current is policy
    assert holder.watched_files() == ()


def test_a_loader_crash_is_a_failed_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    holder, _ = holder_for(tmp_path)

    def broken(*_: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(reload_module, "read_policy_file", broken)
    result = holder.reload()
    assert not result.ok
    assert "internal error" in result.problems[0].message
    assert names(holder) == ["one"]


def test_concurrent_reloads_leave_a_whole_policy(tmp_path: Path) -> None:
    holder, path = holder_for(tmp_path)
    path.write_text("version: 1\nrules:\n" + "".join(
        f"  - {{name: r{i}, action: allow}}\n" for i in range(50)))
    threads = [threading.Thread(target=holder.reload) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert names(holder) == [f"r{i}" for i in range(50)]


# -- watch --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def watcher(holder: PolicyHolder) -> AsyncIterator[list[ReloadResult]]:
    results: list[ReloadResult] = []
    task = asyncio.create_task(watch(holder, INTERVAL, results.append))
    await asyncio.sleep(INTERVAL * 3)  # let the watcher take its first look
    try:
        yield results
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def watching(
    tmp_path: Path,
) -> AsyncIterator[tuple[PolicyHolder, Path, list[ReloadResult]]]:
    holder, path = holder_for(tmp_path)
    async with watcher(holder) as results:
        yield holder, path, results


async def eventually(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    for _ in range(int(seconds / INTERVAL)):
        if condition():
            return
        await asyncio.sleep(INTERVAL)
    raise AssertionError("condition not reached")


async def test_watch_reloads_when_the_file_changes(
    watching: tuple[PolicyHolder, Path, list[ReloadResult]],
) -> None:
    holder, path, results = watching
    assert results == []  # no change, no reload
    path.write_text("version: 1\nrules:\n  - {name: changed, action: allow}\n")
    await eventually(lambda: bool(results))
    assert results[0].ok
    assert names(holder) == ["changed"]


async def test_watch_ignores_a_touch_and_a_rewrite_of_the_same_bytes(
    watching: tuple[PolicyHolder, Path, list[ReloadResult]],
) -> None:
    _, path, results = watching
    os.utime(path)
    path.write_text(GOOD)
    await asyncio.sleep(INTERVAL * 10)
    assert results == []


async def test_watch_sees_a_change_that_keeps_size_and_mtime(
    watching: tuple[PolicyHolder, Path, list[ReloadResult]],
) -> None:
    holder, path, results = watching
    before = path.stat()
    path.write_text(GOOD.replace("one", "two"))  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime: a racy write
    await eventually(lambda: bool(results))
    assert names(holder) == ["two"]


async def test_watch_reports_a_bad_file_then_recovers(
    watching: tuple[PolicyHolder, Path, list[ReloadResult]],
) -> None:
    holder, path, results = watching
    path.write_text("version: 1\nrules:\n  - {name: two, action: alow}\n")
    await eventually(lambda: len(results) == 1)
    assert not results[0].ok
    assert names(holder) == ["one"]
    path.write_text("version: 1\nrules:\n  - {name: three, action: allow}\n")
    await eventually(lambda: len(results) == 2)
    assert results[1].ok
    assert names(holder) == ["three"]


async def test_watch_reports_an_oversized_file_once(
    watching: tuple[PolicyHolder, Path, list[ReloadResult]],
) -> None:
    holder, path, results = watching
    path.write_text(GOOD + "# " + "x" * MAX_POLICY_FILE_BYTES + "\n")
    await eventually(lambda: len(results) == 1)
    await asyncio.sleep(INTERVAL * 10)
    assert [r.ok for r in results] == [False]  # not reloaded again on every poll
    assert names(holder) == ["one"]


async def test_watch_follows_included_files(tmp_path: Path) -> None:
    (tmp_path / "extra.yaml").write_text("rules:\n  - {name: extra, action: block}\n")
    holder, _ = holder_for(tmp_path, "version: 1\ninclude: [extra.yaml]\n")
    async with watcher(holder) as results:
        (tmp_path / "extra.yaml").write_text("rules:\n  - {name: extra-2, action: block}\n")
        await eventually(lambda: bool(results))
    assert names(holder) == ["extra-2"]


async def test_watch_notices_a_missing_include_appearing(tmp_path: Path) -> None:
    holder, path = holder_for(tmp_path)
    async with watcher(holder) as results:
        path.write_text("version: 1\ninclude: [later.yaml]\n")
        await eventually(lambda: len(results) == 1)
        assert not results[0].ok  # later.yaml does not exist yet
        (tmp_path / "later.yaml").write_text("rules:\n  - {name: later, action: allow}\n")
        await eventually(lambda: len(results) == 2)
    assert names(holder) == ["later"]


async def test_watch_does_nothing_for_the_embedded_policy_or_interval_zero(
    tmp_path: Path,
) -> None:
    embedded = PolicyHolder(load_default_policy(CATALOG), None, CATALOG)
    await asyncio.wait_for(watch(embedded, INTERVAL, lambda r: None), 1)
    holder, _ = holder_for(tmp_path)
    await asyncio.wait_for(watch(holder, 0, lambda r: None), 1)


def test_a_policy_the_acceptance_check_refuses_fails_the_reload_and_keeps_the_last(
    tmp_path: Path,
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\ndefault: allow\n")
    catalog = load_catalog()
    first = read_policy_file(str(path), catalog).policy
    assert first is not None

    def no_blocks(policy: Policy) -> list[Problem]:
        return [Problem(policy.source, 0, "", "no blocking here")] \
            if isinstance(policy.default, Block) else []

    holder = PolicyHolder(first, str(path), catalog, accept=no_blocks)
    path.write_text("version: 1\ndefault: block\n")
    result = holder.reload()
    assert not result.ok
    assert [p.message for p in result.problems] == ["no blocking here"]
    assert holder.current is first
    path.write_text("version: 1\ndefault: allow\nrules: []\n")
    assert holder.reload().ok
    assert holder.current is not first
