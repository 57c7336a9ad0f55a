"""docs/metrics.md's metrics table is exactly what the metric definitions generate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gatekeeper.observe.metrics import Metrics
from gatekeeper.observe.reference import (
    COMMAND,
    END,
    START,
    current_block,
    main,
    metrics_reference,
    with_reference,
)

DOCS = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(gatekeeper_[a-z_]+)` \|", re.M)


def _exposed_in_code() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry, [], process_metrics=False)
    text = generate_latest(registry).decode()
    return {
        f.name + "_total" if f.type == "counter" else f.name
        for f in text_string_to_metric_families(text)
        if f.name.startswith("gatekeeper_")
    }


def test_the_reference_in_docs_is_the_generated_one() -> None:
    documented = current_block(DOCS.read_text(encoding="utf-8"))
    generated = metrics_reference()
    if documented != generated:
        in_docs = set(ROW.findall(documented))
        in_code = set(ROW.findall(generated))
        pytest.fail(
            "docs/metrics.md's metrics reference differs from gatekeeper/observe/metrics.py; "
            f"run `.venv/bin/{COMMAND}` and commit docs/metrics.md.\n"
            f"  in the code, not in the reference: {sorted(in_code - in_docs) or 'none'}\n"
            f"  in the reference, not in the code: {sorted(in_docs - in_code) or 'none'}\n"
            "  (otherwise a type, label or HELP text changed)"
        )


def test_the_reference_has_one_row_per_exported_metric() -> None:
    rows = ROW.findall(metrics_reference())
    assert len(rows) == len(set(rows))
    assert set(rows) == _exposed_in_code()


def test_a_row_holds_the_name_type_labels_and_help() -> None:
    rows = metrics_reference().splitlines()
    assert rows[:2] == ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    assert "| `gatekeeper_rule_matches_total` | counter | `rule`, `action` | Requests decided " \
        "by each policy rule (default: no rule matched). |" in rows
    assert any(r.startswith("| `gatekeeper_upstream_duration_seconds` | histogram |  | ")
               for r in rows)
    assert any(r.startswith("| `gatekeeper_ledger_records` | gauge |  | ") for r in rows)


def test_a_metric_missing_from_the_docs_or_left_in_them_is_caught() -> None:
    generated = metrics_reference()
    lines = generated.splitlines(keepends=True)
    dropped = "".join(line for line in lines if "gatekeeper_ledger_records" not in line)
    extra = generated + "| `gatekeeper_gone_total` | counter |  | Removed long ago. |\n"
    for block in (dropped, extra):
        doc = f"# Metrics\n\n{START}\n{block}{END}\n\nMore prose.\n"
        assert current_block(doc) != generated


def test_rewriting_replaces_only_the_block(tmp_path: Path) -> None:
    doc = tmp_path / "metrics.md"
    doc.write_text(f"# Metrics\n\nBefore.\n\n{START}\n| stale |\n{END}\n\nAfter.\n")
    assert main(["--doc", str(doc), "--check"]) == 1
    assert main(["--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text == f"# Metrics\n\nBefore.\n\n{START}\n{metrics_reference()}{END}\n\nAfter.\n"
    assert main(["--doc", str(doc), "--check"]) == 0
    assert with_reference(text, metrics_reference()) == text


@pytest.mark.parametrize("doc", [
    "no markers at all\n",
    f"{START}\n{END}\n{START}\n{END}\n",
    f"{END}\n",
    f"{END}\n{START}\n",
    f"text {START} on the same line\n{END}\n",
])
def test_markers_must_be_there_once_each(doc: str) -> None:
    with pytest.raises(ValueError):
        current_block(doc)
