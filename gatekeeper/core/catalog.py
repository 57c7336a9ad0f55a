"""Crawler catalog model and the user-agent classifier compiled from it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gatekeeper.errors import CatalogError


class Purpose(StrEnum):
    """Why a crawler fetches pages. Closed set: it is also a metric label."""

    AI_TRAINING = "ai-training"
    AI_SEARCH = "ai-search"
    AI_ASSISTANT = "ai-assistant"  # fetches on a user's request
    AI_AGENT = "ai-agent"  # browses and acts on a user's behalf
    SEARCH_ENGINE = "search-engine"
    ARCHIVER = "archiver"
    SEO = "seo"
    SOCIAL_PREVIEW = "social-preview"
    MONITOR = "monitor"
    OTHER_BOT = "other-bot"


class Kind(StrEnum):
    """What the user agent says about the client, before any verification."""

    CRAWLER = "crawler"  # names a catalog entry
    OTHER_BOT = "other-bot"  # an obvious automated client not in the catalog
    UNKNOWN = "unknown"  # browser-like, or nothing recognisable


@dataclass(frozen=True, slots=True)
class Crawler:
    name: str
    operator: str
    purpose: Purpose
    ua_tokens: tuple[str, ...]
    robots_token: str
    url: str = ""
    # Filled by the identity work: e.g. ("ip-ranges", "reverse-dns", "web-bot-auth").
    verification: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Classification:
    kind: Kind
    crawler: Crawler | None = None

    @property
    def name(self) -> str:
        """Bounded label: the catalog name, or the kind for everything else."""
        return self.crawler.name if self.crawler is not None else self.kind.value

    @property
    def purpose(self) -> Purpose | None:
        if self.crawler is not None:
            return self.crawler.purpose
        return Purpose.OTHER_BOT if self.kind is Kind.OTHER_BOT else None


UNKNOWN = Classification(Kind.UNKNOWN)
OTHER_BOT = Classification(Kind.OTHER_BOT)


# Bytes that end a product token in a user agent ("GPTBot/1.1", "GPTBot;", "GPTBot)").
# A letter, digit or "-"/"_" directly after a token means it is part of a longer word.
_WORD = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
# Obvious HTTP libraries and headless tools: automated, but not in the catalog.
_BOT_LIBRARIES = (
    "curl/", "wget/", "python-requests/", "python-urllib/", "python-httpx/", "go-http-client/",
    "okhttp/", "aiohttp/", "libwww-perl/", "java/", "axios/", "node-fetch/", "headlesschrome/",
    "phantomjs/", "apache-httpclient/", "guzzlehttp/", "httpclient/", "undici", "got (",
    "python/", "ruby", "php/", "postmanruntime/", "insomnia/", "httpie/", "powershell/",
)
_CACHE_SIZE = 4096


class Catalog:
    """The crawler catalog, compiled once into a one-pass user-agent classifier.

    Matching: the user agent is lower-cased and its whitespace collapsed, then one
    Aho-Corasick pass finds every catalog token in it. A hit counts only at word
    boundaries, so a token inside a longer word ("claude-user" in
    "claude-usernames") is not a match. When several tokens match, the longest
    wins, then the earliest. Without a catalog hit, obvious bot libraries and the
    generic crawler patterns (matched with RE2, linear time) make an `other-bot`;
    anything else is `unknown`.
    """

    def __init__(
        self, crawlers: Iterable[Crawler], generic_bot_patterns: Iterable[str] = ()
    ) -> None:
        import ahocorasick

        self._crawlers: tuple[Crawler, ...] = tuple(crawlers)
        self._by_name: dict[str, Crawler] = {}
        automaton = ahocorasick.Automaton()
        owners: dict[str, str] = {}
        for crawler in self._crawlers:
            key = crawler.name.casefold()
            if key in self._by_name:
                raise CatalogError(f"crawler {crawler.name!r} is listed twice")
            self._by_name[key] = crawler
            for token in crawler.ua_tokens:
                tok = " ".join(token.lower().split())
                if tok in owners:
                    raise CatalogError(
                        f"user-agent token {token!r} of {crawler.name!r} is already "
                        f"used by {owners[tok]!r}"
                    )
                owners[tok] = crawler.name
                automaton.add_word(tok, (len(tok), crawler))
        self._automaton = automaton
        self._has_tokens = bool(owners)
        if self._has_tokens:
            automaton.make_automaton()
        self._generic = _compile_generic(generic_bot_patterns)
        self._cache: dict[str, Classification] = {}
        self.names: frozenset[str] = frozenset(c.name for c in self._crawlers)
        self.operators: frozenset[str] = frozenset(c.operator.casefold() for c in self._crawlers)

    def __iter__(self) -> Iterator[Crawler]:
        return iter(self._crawlers)

    def __len__(self) -> int:
        return len(self._crawlers)

    def get(self, name: str) -> Crawler | None:
        return self._by_name.get(name.casefold())

    def classify(self, user_agent: str) -> Classification:
        hit = self._cache.get(user_agent)
        if hit is None:
            hit = self._classify(user_agent)
            if len(self._cache) >= _CACHE_SIZE:
                # Cheap bound: real traffic repeats a few hundred agents; a flood of
                # unique ones must not grow memory.
                self._cache.clear()
            self._cache[user_agent] = hit
        return hit

    def _classify(self, user_agent: str) -> Classification:
        ua = " ".join(user_agent.lower().split())
        if not ua:
            return OTHER_BOT
        best: tuple[int, int, Crawler] | None = None
        if self._has_tokens:
            for end, (length, crawler) in self._automaton.iter(ua):
                start = end - length + 1
                if not _bounded(ua, start, end):
                    continue
                if best is None or length > best[0] or (length == best[0] and start < best[1]):
                    best = (length, start, crawler)
        if best is not None:
            return Classification(Kind.CRAWLER, best[2])
        if any(lib in ua for lib in _BOT_LIBRARIES):
            return OTHER_BOT
        if self._generic is not None and self._generic.search(user_agent):
            return OTHER_BOT
        return UNKNOWN


def _bounded(ua: str, start: int, end: int) -> bool:
    if start > 0 and ua[start - 1] in _WORD:
        return False
    if ua[end] == "/" or end + 1 >= len(ua):
        return True
    after = ua[end + 1]
    if after in _WORD:
        return False
    # "claude-user" inside "claude-user-agent-x" is still a longer name.
    return not (after in "-_" and end + 2 < len(ua) and ua[end + 2] in _WORD)


def _compile_generic(patterns: Iterable[str]) -> Any:
    """One RE2 alternation over the generic crawler patterns (linear time), or None."""
    import re2

    options = re2.Options()
    options.case_sensitive = False
    options.max_mem = 64 << 20
    good: list[str] = []
    for pattern in patterns:
        try:
            re2.compile(pattern, options)
        except re2.error:
            continue  # a pattern RE2 cannot express is skipped, never run with `re`
        good.append(f"(?:{pattern})")
    if not good:
        return None
    return re2.compile("|".join(good), options)
