"""Merging the workers' answers into one, for the supervisor's admin listener.

`merge_metrics`: Prometheus text expositions merged family by family. Counters,
histograms and summaries are summed per label set; gauges take the largest value
(Gatekeeper's gauges describe shared state, such as a range list's age, which every
worker sees the same way, or a ledger position, where the furthest is the answer).
prometheus_client's own multiprocess mode is not used: it cannot carry gauges
computed at scrape time, which Gatekeeper's are, and it wants every process to agree
on a shared directory before the first metric exists.

`merge_status`: the workers' `/status.json` documents added up: rows of the same
crawler, path, licence or minute are summed (numbers summed, breakdowns summed per
key, lists of names joined) and ranked again; the policy part is the workers', with
`workers_agree` false and the fields that differ when they do not serve the same
policy. Fields are merged by kind, not by name, so a field a worker adds is carried
without a change here. Pure functions: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

_SUMMED: Final = frozenset({"counter", "histogram", "summary"})
# /status.json: the lists of rows, and the field that identifies a row in each.
_ROWS: Final = {"crawlers": "crawler", "top_paths": "path", "licences": "license",
                "per_minute": "minute"}
_TOP_PATHS: Final = 20  # as many as one worker lists
# Policy fields saying when a worker did something (loaded, reloaded).
_WHEN: Final = frozenset({"serving_since", "since", "at"})


def merge_metrics(texts: Iterable[str]) -> str:
    """Prometheus text expositions merged into one (see the module docstring)."""
    families: dict[str, tuple[str, str]] = {}  # name -> (type, help)
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name.endswith("_created"):
                continue  # when each worker's series began: no sum of them means anything
            families.setdefault(family.name, (family.type, family.documentation))
            into = values.setdefault(family.name, {})
            summed = family.type in _SUMMED
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                known = into.get(key)
                if known is None:
                    into[key] = sample.value
                else:
                    into[key] = known + sample.value if summed else max(known, sample.value)
    lines: list[str] = []
    for name, (kind, doc) in families.items():
        if not values[name]:
            continue
        # The text format names a counter by its sample (`x_total`); the parser strips it.
        shown = f"{name}_total" if kind == "counter" else name
        lines.append(f"# HELP {shown} {_escape_help(doc)}")
        lines.append(f"# TYPE {shown} {kind}")
        for (series, labels), value in values[name].items():
            rendered = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
            lines.append(f"{series}{{{rendered}}} {_number(value)}" if rendered
                         else f"{series} {_number(value)}")
    return "\n".join(lines) + "\n"


def merge_status(docs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Workers' `/status.json` documents, keyed by worker, merged into one (see the
    module docstring)."""
    found = list(docs.values())
    merged: dict[str, Any] = {}
    for name in dict.fromkeys(k for doc in found for k in doc):
        values = [doc[name] for doc in found if name in doc]
        if name == "policy":
            merged[name] = _merge_policy({w: d[name] for w, d in docs.items() if name in d})
        elif name == "generated_at":
            merged[name] = max(values)
        elif name == "window_minutes":
            merged[name] = values[0]
        elif name in _ROWS:
            merged[name] = _merge_rows(values, _ROWS[name])
        else:
            merged[name] = _sum(values)
    if isinstance(merged.get("top_paths"), list):
        del merged["top_paths"][_TOP_PATHS:]
    window = merged.get("window_minutes")
    if isinstance(merged.get("per_minute"), list) and isinstance(window, int) and window > 0:
        # Workers that answered either side of a minute's start disagree on the window's
        # first minute: the newest `window` minutes are kept.
        merged["per_minute"] = merged["per_minute"][-window:]
    return merged


def _merge_rows(lists: list[Any], key: str) -> list[Any]:
    """Rows with the same `key` summed; ranked by requests, then key."""
    rows: dict[Any, list[Mapping[str, Any]]] = {}
    for items in lists:
        for row in items if isinstance(items, list) else ():
            if isinstance(row, Mapping) and key in row:
                rows.setdefault(row[key], []).append(row)
    out = [{**_sum(group), key: name} for name, group in rows.items()]
    if all("requests" in row for row in out):
        out.sort(key=lambda row: (-row["requests"], row[key]))
    else:
        out.sort(key=lambda row: row[key])
    return out


def _sum(values: list[Any]) -> Any:
    """Numbers added, mappings merged key by key, lists of names joined; anything else
    (a crawler's operator, purpose) is the first worker's."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return sum(values)
    if all(isinstance(v, Mapping) for v in values):
        keys = dict.fromkeys(k for v in values for k in v)
        return {k: _sum([v[k] for v in values if k in v]) for k in keys}
    if all(isinstance(v, list) for v in values):
        items = [item for v in values for item in v]
        if all(isinstance(item, str) for item in items):
            return sorted(set(items))
    return next((v for v in values if v not in ("", None)), values[0])


def _merge_policy(policies: Mapping[str, Any]) -> Any:
    """The workers' policy state, which should be one and the same. Where it is not
    (a reload that reached one worker and not yet another, a restarted worker that read
    a newer file), the first worker's value is shown and `differences` names each
    field with every worker's value. Times (when each worker loaded or reloaded) are
    each worker's own moment: not compared, the latest is shown."""
    differences: dict[str, dict[str, Any]] = {}

    def agree(values: dict[str, Any], path: str) -> Any:
        if all(isinstance(v, Mapping) for v in values.values()):
            keys = dict.fromkeys(k for v in values.values() for k in v)
            return {k: agree({w: v.get(k) for w, v in values.items()}, f"{path}{k}.")
                    for k in keys}
        first = next(iter(values.values()))
        if path.rstrip(".").rpartition(".")[2] in _WHEN:
            times = [v for v in values.values() if isinstance(v, int | float)]
            return max(times) if times else first
        if any(v != first for v in values.values()):
            differences[path.rstrip(".")] = dict(values)
        return first

    merged = agree(dict(policies), "")
    if isinstance(merged, dict):
        merged["workers_agree"] = not differences
        merged["differences"] = differences
    return merged


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value != value:  # NaN
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
