"""Loads the crawler catalog data file into a `Catalog`.

The packaged `gatekeeper/data/catalog.json` is the default. Generic crawler
patterns come from the installed `crawler-user-agents` package, the maintained
source of that list, rather than from a copy of it.

Every problem in the file is reported, each naming the entry and the field.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from gatekeeper.core.catalog import Catalog, Crawler, Purpose, normalize
from gatekeeper.core.httpsig import JwkError, key_from_jwk
from gatekeeper.errors import CatalogError

PACKAGED_CATALOG = "gatekeeper/data/catalog.json"
CATALOG_VERSION = 1

_REQUIRED = ("name", "operator", "purpose", "ua_tokens", "robots_token")
# "source" and "note" document where an entry came from and why it is classified
# as it is; the classifier does not read them.
_OPTIONAL = ("url", "ip_ranges", "rdns_domains", "signature_agents", "signature_keys", "source",
             "note")
_FIELDS = frozenset(_REQUIRED + _OPTIONAL)
# Shorter literals are ordinary words or version fragments; three letters plus
# "/" ("yak/") is the floor, and such tokens carry the "/" to stay specific.
_MIN_TOKEN = 4


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The catalog in `path`, or the packaged one when `path` is None.

    Compiling a catalog (automaton plus the RE2 set of about 1,500 generic
    patterns) costs tens of milliseconds, and the CLI, the reloader and the
    tests ask for it repeatedly, so results are cached. The packaged catalog is
    built once per process: it cannot change while the process runs. A file
    given by path is re-read on every call, which is cheap, and the compiled
    catalog is reused only while the path and the text are unchanged: keying
    the cache on the content rather than on modification times means an edit
    is never missed, even within one timestamp tick.
    """
    if path is None:
        return _packaged()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the crawler catalog: {exc.strerror}") from None
    return _parse_cached(text, str(path))


@cache
def _packaged() -> Catalog:
    text = resources.files("gatekeeper.data").joinpath("catalog.json").read_text("utf-8")
    return parse_catalog(text, PACKAGED_CATALOG)


# A handful of files at most are in use at once (the configured one, its previous
# version during a reload, test fixtures); the bound keeps replaced ones from piling up.
# Failures are not cached: lru_cache does not memoise exceptions.
@lru_cache(maxsize=8)
def _parse_cached(text: str, where: str) -> Catalog:
    return parse_catalog(text, where)


def parse_catalog(text: str, where: str = "<catalog>") -> Catalog:
    """A `Catalog` from the JSON text of a catalog file; `where` names it in errors."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{where}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    crawlers = _crawlers(doc, where)
    try:
        return Catalog(crawlers, generic_bot_patterns())
    except CatalogError as exc:  # duplicates across entries: add the file
        raise CatalogError(f"{where}: {exc}") from None


def _crawlers(doc: Any, where: str) -> list[Crawler]:
    if not isinstance(doc, dict):
        raise CatalogError(f"{where}: expected an object with 'version' and 'crawlers'")
    problems: list[str] = []
    unknown = sorted(set(doc) - {"version", "crawlers"})
    if unknown:
        problems.append(f"{where}: {unknown[0]}: unknown field")
    if doc.get("version") != CATALOG_VERSION:
        problems.append(
            f"{where}: version: expected {CATALOG_VERSION}, found {doc.get('version')!r}"
        )
    entries = doc.get("crawlers")
    if not isinstance(entries, list):
        problems.append(f"{where}: crawlers: expected a list of crawler entries")
        entries = []
    crawlers: list[Crawler] = []
    for index, entry in enumerate(entries):
        checker = _EntryChecker(where, index, entry)
        crawler = checker.crawler()
        problems.extend(checker.problems)
        if crawler is not None:
            crawlers.append(crawler)
    if problems:
        raise CatalogError("\n".join(problems))
    return crawlers


class _EntryChecker:
    """Validates one entry, collecting every problem instead of stopping at the first."""

    def __init__(self, where: str, index: int, entry: Any) -> None:
        self.entry = entry
        name = entry.get("name") if isinstance(entry, dict) else None
        self.label = f"{where}: crawlers[{index}]" + (
            f" ({name})" if isinstance(name, str) and name else ""
        )
        self.problems: list[str] = []

    def error(self, field: str, message: str) -> None:
        self.problems.append(f"{self.label}: {field}: {message}")

    def crawler(self) -> Crawler | None:
        entry = self.entry
        if not isinstance(entry, dict):
            self.problems.append(f"{self.label}: expected an object")
            return None
        for field in sorted(set(entry) - _FIELDS):
            self.error(field, "unknown field")
        for field in _REQUIRED:
            if field not in entry:
                self.error(field, "missing")
        name = self.label_text("name")
        operator = self.label_text("operator")
        robots_token = self.robots_token()
        purpose = self.purpose()
        ua_tokens = self.ua_tokens()
        url = self.url()
        ip_ranges = self.string_list("ip_ranges")
        rdns_domains = self.domains()
        signature_agents = self.origins()
        signature_keys = self.pinned_keys(signature_agents)
        for field in ("source", "note"):
            if field in entry and not isinstance(entry[field], str):
                self.error(field, "expected a string")
        if self.problems or name is None or operator is None or robots_token is None:
            return None
        if purpose is None or ua_tokens is None or ip_ranges is None:
            return None
        if rdns_domains is None or signature_agents is None or signature_keys is None:
            return None
        return Crawler(
            name=name,
            operator=operator,
            purpose=purpose,
            ua_tokens=ua_tokens,
            robots_token=robots_token,
            url=url,
            ip_ranges=ip_ranges,
            rdns_domains=rdns_domains,
            signature_agents=signature_agents,
            signature_keys=signature_keys,
        )

    def label_text(self, field: str) -> str | None:
        """A name shown to operators and used as a metric label: one printable line."""
        value = self.entry.get(field)
        if field not in self.entry:
            return None
        if not isinstance(value, str) or not value.strip():
            self.error(field, "expected a non-empty string")
            return None
        if value != value.strip() or not value.isprintable() or not value.isascii():
            self.error(field, f"{value!r}: printable ASCII without surrounding spaces only")
            return None
        return value

    def robots_token(self) -> str | None:
        value = self.label_text("robots_token")
        if value is not None and any(c in value for c in "#:*"):
            # These would change the meaning of the robots.txt line it is written to.
            self.error("robots_token", f"{value!r}: must not contain '#', ':' or '*'")
            return None
        return value

    def purpose(self) -> Purpose | None:
        if "purpose" not in self.entry:
            return None
        value = self.entry["purpose"]
        try:
            return Purpose(value)
        except ValueError:
            choices = ", ".join(p.value for p in Purpose)
            self.error("purpose", f"{value!r} is not one of {choices}")
            return None

    def ua_tokens(self) -> tuple[str, ...] | None:
        tokens = self.string_list("ua_tokens")
        if tokens is None:
            return None
        for i, token in enumerate(tokens):
            if token != normalize(token):
                # The file shows exactly what is matched: lower case, single spaces.
                self.error(f"ua_tokens[{i}]", f"{token!r}: write it as {normalize(token)!r}")
            elif len(token) < _MIN_TOKEN:
                self.error(
                    f"ua_tokens[{i}]",
                    f"{token!r}: shorter than {_MIN_TOKEN} characters; "
                    "short tokens match ordinary words",
                )
        return tokens

    def url(self) -> str:
        value = self.entry.get("url", "")
        if not isinstance(value, str):
            self.error("url", "expected a string")
            return ""
        if value and not value.startswith(("https://", "http://")):
            self.error("url", f"{value!r}: expected an http(s) URL or an empty string")
        return value

    def domains(self) -> tuple[str, ...] | None:
        values = self.string_list("rdns_domains")
        for i, value in enumerate(values or ()):
            labels = value.split(".")
            if value != value.lower() or len(labels) < 2 or not all(
                label and all(c.isalnum() or c == "-" for c in label) for label in labels
            ):
                self.error(f"rdns_domains[{i}]", f"{value!r}: expected a lower-case domain "
                           "such as 'googlebot.com' (no leading dot or wildcard)")
                return None
        return values

    def origins(self) -> tuple[str, ...] | None:
        values = self.string_list("signature_agents")
        for i, value in enumerate(values or ()):
            scheme, sep, host = value.partition("://")
            if scheme != "https" or not sep or not host or "/" in host:
                self.error(f"signature_agents[{i}]", f"{value!r}: expected an https origin "
                           "such as 'https://chatgpt.com'")
                return None
        return values

    def pinned_keys(self, agents: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """Ed25519 JWKs pinned for the entry's signature agents, as their "x" values."""
        value = self.entry.get("signature_keys", [])
        if not isinstance(value, list):
            self.error("signature_keys", "expected a list of Ed25519 JWKs")
            return None
        if value and not agents:
            self.error("signature_keys", "pinned keys need signature_agents to sign for")
            return None
        out: list[str] = []
        for i, jwk in enumerate(value):
            try:
                key_from_jwk(jwk if isinstance(jwk, dict) else {})
            except JwkError as exc:
                self.error(f"signature_keys[{i}]", f"not a usable Ed25519 JWK: {exc}")
                return None
            out.append(str(jwk["x"]))
        return tuple(out)

    def string_list(self, field: str) -> tuple[str, ...] | None:
        value = self.entry.get(field, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.error(field, "expected a list of non-empty strings")
            return None
        if len(set(value)) != len(value):
            self.error(field, "lists a value twice")
            return None
        return tuple(value)


# crawler-user-agents patterns that also match clients people browse with.
GENERIC_PATTERN_EXCLUSIONS: dict[str, str] = {
    "Sonic": "Slack's desktop app says 'Sonic Slack_SSB/4.41'",
}


def generic_bot_patterns() -> list[str]:
    """The patterns of the installed `crawler-user-agents` package, less the exclusions."""
    return [
        item["pattern"]
        for item in generic_bot_entries()
        if item["pattern"] not in GENERIC_PATTERN_EXCLUSIONS
    ]


def generic_bot_entries() -> list[dict[str, Any]]:
    """The entries (pattern, instances, ...) of the installed `crawler-user-agents` package."""
    try:
        data = resources.files("crawleruseragents").joinpath("crawler-user-agents.json")
        items = json.loads(data.read_text("utf-8"))
    except ModuleNotFoundError:
        raise CatalogError(
            "the crawler-user-agents package is not installed; "
            "reinstall gatekeeper with its dependencies"
        ) from None
    except (OSError, ValueError) as exc:
        raise CatalogError(f"cannot read the crawler-user-agents data: {exc}") from None
    if not isinstance(items, list) or not all(
        isinstance(item, dict) and isinstance(item.get("pattern"), str) for item in items
    ):
        raise CatalogError("the crawler-user-agents data is not a list of patterns")
    return items
