"""The metrics reference of docs/metrics.md, generated from the metrics' own definitions.

`metrics_reference()` builds every metric the way the proxy does (`Metrics` on a
fresh `CollectorRegistry`), collects the `gatekeeper_*` families and renders one
Markdown table row per metric: the name as exposed (`_total` for counters), the
type, the label names and the HELP text. docs/metrics.md holds exactly that table
between `START` and `END`; tests/unit/observe/test_metrics_reference.py fails when
the two differ, so a metric added, renamed, relabelled or removed in the code
cannot be missing from the reference, nor stay in it after it is gone.

    python -m gatekeeper.observe.reference            # rewrite the block in docs/metrics.md
    python -m gatekeeper.observe.reference --check    # exit 1 when the block is stale
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from gatekeeper.observe.metrics import Metrics

START: Final = "<!-- metrics-reference:start -->"
END: Final = "<!-- metrics-reference:end -->"
PREFIX: Final = "gatekeeper_"
DEFAULT_DOC: Final = Path("docs") / "metrics.md"
COMMAND: Final = "python -m gatekeeper.observe.reference"


def metrics_reference() -> str:
    """The Markdown table of every gatekeeper_* metric, one row each, in definition order."""
    registry = CollectorRegistry()
    # No catalog names: they only bound label values, never which metrics exist.
    # created_series=True leaves prometheus_client's process-wide `_created` switch
    # alone (the rows never read samples), and no process collectors are needed.
    metrics = Metrics(registry, (), store="memory", process_metrics=False,
                      created_series=True)
    labels = _label_names(metrics)
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for family in registry.collect():
        if not family.name.startswith(PREFIX):
            continue
        if family.name not in labels:
            raise LookupError(f"{family.name}: not an attribute of Metrics, its labels are unknown")
        exposed = family.name + "_total" if family.type == "counter" else family.name
        names = ", ".join(f"`{n}`" for n in labels[family.name])
        rows.append(f"| `{exposed}` | {family.type} | {names} | {_cell(family.documentation)} |")
    return "\n".join(rows) + "\n"


def _label_names(metrics: Metrics) -> dict[str, tuple[str, ...]]:
    """Each metric's label names, by family name (a counter's without `_total`).

    prometheus_client exposes label names only through samples, and a labelled
    metric has none until a child exists; the declared names are in `_labelnames`.
    """
    return {
        m._name: tuple(m._labelnames)
        for m in vars(metrics).values()
        if isinstance(m, MetricWrapperBase)
    }


def _cell(text: str) -> str:
    """Text safe inside one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def current_block(doc: str) -> str:
    """What docs/metrics.md holds between the markers (the text after START's line)."""
    if doc.count(START) != 1 or doc.count(END) != 1 or doc.index(END) < doc.index(START):
        raise ValueError(f"expected one {START} line, then one {END} line")
    _, _, rest = doc.partition(START + "\n")
    if not rest:
        raise ValueError(f"{START} must end its line")
    block, _, _ = rest.partition(END)
    return block


def with_reference(doc: str, reference: str) -> str:
    """`doc` with the block between the markers replaced by `reference`."""
    current_block(doc)  # the markers are there, once each
    head, _, rest = doc.partition(START + "\n")
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{reference}{END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=COMMAND, description="Rewrite the generated metrics table in docs/metrics.md.")
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC,
                        help="the Markdown file holding the markers (default: docs/metrics.md)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when the block is out of date")
    args = parser.parse_args(argv)
    doc_path: Path = args.doc
    doc = doc_path.read_text(encoding="utf-8")
    updated = with_reference(doc, metrics_reference())
    if updated == doc:
        print(f"{doc_path}: metrics reference up to date")
        return 0
    if args.check:
        print(f"{doc_path}: metrics reference out of date; run `{COMMAND}`", file=sys.stderr)
        return 1
    doc_path.write_text(updated, encoding="utf-8")
    print(f"{doc_path}: metrics reference rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
