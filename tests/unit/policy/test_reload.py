import asyncio
from pathlib import Path

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.policy.loader import load_policy_file
from gatekeeper.policy.reload import PolicyHolder, ReloadResult, watch

CATALOG = load_catalog()
GOOD = "version: 1\nrules:\n  - {name: one, action: block}\n"


def holder_for(tmp_path: Path, text: str = GOOD) -> tuple[PolicyHolder, Path]:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return PolicyHolder(load_policy_file(path, CATALOG), str(path), CATALOG), path


def test_good_reload_swaps_the_policy(tmp_path: Path) -> None:
    holder, path = holder_for(tmp_path)
    path.write_text("version: 1\nrules:\n  - {name: two, action: allow}\n")
    assert holder.reload().ok
    assert holder.current.rules[0].name == "two"


def test_bad_reload_keeps_the_last_good_policy_and_reports_why(tmp_path: Path) -> None:
    holder, path = holder_for(tmp_path)
    before = holder.current
    path.write_text("version: 1\nrules:\n  - {name: two, action: alow}\n")
    result = holder.reload()
    assert not result.ok
    assert result.problems[0].line == 3
    assert holder.current is before


async def test_watch_reloads_when_the_file_changes(tmp_path: Path) -> None:
    holder, path = holder_for(tmp_path)
    results: list[ReloadResult] = []
    task = asyncio.create_task(watch(holder, 0.05, results.append))
    await asyncio.sleep(0.15)
    assert results == []  # no change, no reload
    path.write_text("version: 1\nrules:\n  - {name: changed, action: allow}\n")
    for _ in range(60):
        if results:
            break
        await asyncio.sleep(0.05)
    task.cancel()
    assert results[0].ok
    assert holder.current.rules[0].name == "changed"
