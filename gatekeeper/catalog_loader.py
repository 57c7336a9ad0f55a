"""Loads the crawler catalog data file into a `Catalog`.

The packaged `gatekeeper/data/catalog.json` is the default. Generic crawler
patterns come from the `crawler-user-agents` package (the maintained source of
that list) rather than a copy of it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from gatekeeper.core.catalog import Catalog, Crawler, Purpose
from gatekeeper.errors import CatalogError

_FIELDS = {"name", "operator", "purpose", "ua_tokens", "robots_token", "url", "verification",
           "source"}
_REQUIRED = ("name", "operator", "purpose", "ua_tokens", "robots_token")


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The catalog from `path`, or the packaged one; cached, since it never changes at run time."""
    return _load(str(path) if path is not None else None)


@lru_cache(maxsize=8)
def _load(path: str | None) -> Catalog:
    if path is None:
        text = resources.files("gatekeeper.data").joinpath("catalog.json").read_text("utf-8")
        where = "gatekeeper/data/catalog.json"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CatalogError(f"{path}: cannot read catalog: {exc.strerror}") from exc
        where = path
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{where}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("crawlers"), list):
        raise CatalogError(f"{where}: expected an object with a 'crawlers' list")
    crawlers = [_crawler(where, i, entry) for i, entry in enumerate(doc["crawlers"])]
    return Catalog(crawlers, generic_bot_patterns())


def _crawler(where: str, index: int, entry: Any) -> Crawler:
    label = f"{where}: crawlers[{index}]"
    if not isinstance(entry, dict):
        raise CatalogError(f"{label}: expected an object")
    label = f"{label} ({entry.get('name', '?')})"
    unknown = set(entry) - _FIELDS
    if unknown:
        raise CatalogError(f"{label}: unknown field {sorted(unknown)[0]!r}")
    for field in _REQUIRED:
        if field not in entry:
            raise CatalogError(f"{label}: missing field {field!r}")
    for field in ("name", "operator", "robots_token"):
        if not isinstance(entry[field], str) or not entry[field].strip():
            raise CatalogError(f"{label}: {field}: expected a non-empty string")
    try:
        purpose = Purpose(entry["purpose"])
    except ValueError:
        choices = ", ".join(p.value for p in Purpose)
        raise CatalogError(
            f"{label}: purpose: {entry['purpose']!r} is not one of {choices}"
        ) from None
    for field in ("ua_tokens", "verification"):
        value = entry.get(field, [])
        if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
            raise CatalogError(f"{label}: {field}: expected a list of non-empty strings")
    return Crawler(
        name=entry["name"],
        operator=entry["operator"],
        purpose=purpose,
        ua_tokens=tuple(entry["ua_tokens"]),
        robots_token=entry["robots_token"],
        url=entry.get("url", ""),
        verification=tuple(entry.get("verification", [])),
    )


def generic_bot_patterns() -> list[str]:
    """Patterns of the `crawler-user-agents` package; empty if it is not installed."""
    try:
        data = resources.files("crawleruseragents").joinpath("crawler-user-agents.json")
        items = json.loads(data.read_text("utf-8"))
    except (ModuleNotFoundError, FileNotFoundError):
        return []
    return [item["pattern"] for item in items if isinstance(item.get("pattern"), str)]
