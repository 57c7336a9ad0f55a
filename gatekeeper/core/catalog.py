"""Crawler catalog model and the user-agent classifier compiled from it.

How a user agent is classified (`Catalog.classify`):

1. The string is lower-cased and every run of whitespace becomes one space, so
   tokens match regardless of case, tabs or doubled spaces.
2. One Aho-Corasick pass finds every catalog token and every bot-library token
   in it. A hit counts only where it stands as a name of its own:
   - after it, no letter, digit or "_": "claude-user" does not match
     "claude-usernames". A "-" may follow, because a suffix names a variant
     of the same crawler ("googlebot-mobile", "semrushbot-sa").
   - before it, no letter, digit, "_" or "-": a prefix makes another product
     ("landau-media-spider" is not "spider"). Nor "/", "." or "@", which put
     the hit inside a URL or an address ("serverhunter.com/spider/"), unless
     the token is itself a host name ("panscient.com").
   - not right after "like ", "with " or "following ", the way agents name whom they
     imitate ("Feedly/1.0 (...; like FeedFetcher-Google)").
   A side where the token itself ends in punctuation ("code/", "pingdom.com_bot_version_")
   needs no check: the token already says where it stops.
3. When several catalog tokens match, the longest token wins, then the one that
   starts first. Length first makes the specific entry beat the generic one
   ("googlebot-image" over "googlebot"); position only breaks ties, so the
   result never depends on the catalog's order.
4. Without a catalog token the agent is `other-bot` when it names an HTTP
   library or headless tool, or when one of the generic crawler patterns
   or one of our few self-declaration patterns (a URL, a "...Bot/" product)
   matches it: one RE2 set, linear time, run on the original string because
   those patterns are written case-sensitively. An empty agent is `other-bot`
   too. Anything else is `unknown`: browser-like, or nothing recognisable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache, partial
from typing import Any

import ahocorasick
import re2

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
    # No catalog entry has it: the gate gives it to a client whose user agent
    # claims nothing but whose behaviour is a bot's (see gatekeeper.core.behaviour).
    UNDECLARED_BOT = "undeclared-bot"


class Kind(StrEnum):
    """What the user agent says about the client, before any verification."""

    CRAWLER = "crawler"  # names a catalog entry
    OTHER_BOT = "other-bot"  # an obvious automated client not in the catalog
    UNDECLARED_BOT = "undeclared-bot"  # claims nothing, behaves like a bot
    UNKNOWN = "unknown"  # browser-like, or nothing recognisable


@dataclass(frozen=True, slots=True)
class Crawler:
    name: str
    operator: str
    purpose: Purpose
    # Lower-case literals searched for in the user agent. Empty for robots.txt-only
    # tokens such as Google-Extended, which no real request ever carries.
    ua_tokens: tuple[str, ...]
    robots_token: str
    url: str = ""
    # What the operator publishes to prove a request is really theirs. Range-list ids
    # name files in `gatekeeper/data/ip-ranges/sources.json`; domains are reverse-DNS
    # suffixes matched on label boundaries; signature agents are the origins whose
    # Web Bot Auth key directories may sign for this crawler.
    ip_ranges: tuple[str, ...] = ()
    rdns_domains: tuple[str, ...] = ()
    signature_agents: tuple[str, ...] = ()
    # Ed25519 public keys (the JWK "x", base64url) pinned for its signature agents:
    # they verify signatures even when the agent's key directory cannot be fetched.
    signature_keys: tuple[str, ...] = ()

    @property
    def verification(self) -> tuple[str, ...]:
        """The methods that can verify this crawler, strongest first."""
        methods = (
            ("web-bot-auth", self.signature_agents),
            ("ip-ranges", self.ip_ranges),
            ("reverse-dns", self.rdns_domains),
        )
        return tuple(name for name, data in methods if data)


@dataclass(frozen=True, slots=True)
class Classification:
    kind: Kind
    crawler: Crawler | None = None
    # Derived once here because every rule and every metric reads them.
    name: str = field(init=False)  # bounded label: catalog name, or the kind
    purpose: Purpose | None = field(init=False)

    def __post_init__(self) -> None:
        crawler = self.crawler
        if crawler is not None:
            object.__setattr__(self, "name", crawler.name)
            object.__setattr__(self, "purpose", crawler.purpose)
        else:
            object.__setattr__(self, "name", self.kind.value)
            object.__setattr__(self, "purpose", _KIND_PURPOSE.get(self.kind))


_KIND_PURPOSE = {Kind.OTHER_BOT: Purpose.OTHER_BOT, Kind.UNDECLARED_BOT: Purpose.UNDECLARED_BOT}


UNKNOWN = Classification(Kind.UNKNOWN)
OTHER_BOT = Classification(Kind.OTHER_BOT)
UNDECLARED_BOT = Classification(Kind.UNDECLARED_BOT)

# HTTP libraries and headless tools: automated, but nobody's crawler. Searched in
# the same pass as the catalog tokens, with the same boundary rule, and ranked
# below every catalog token ("Scrapy" is in the catalog; "python-requests" is not).
BOT_LIBRARY_TOKENS: tuple[str, ...] = (
    "curl/", "libcurl/", "wget/", "python-requests/", "python-urllib/", "python-httpx/",
    "python/", "aiohttp/", "httpx/", "urllib3/", "go-http-client/", "okhttp/", "java/",
    "apache-httpclient/", "jakarta commons-httpclient/", "libwww-perl/", "lwp::simple/",
    "axios/", "node-fetch/", "got (", "undici", "headlesschrome", "headlesschromium",
    "phantomjs", "guzzlehttp/", "php/", "ruby", "http.rb/", "faraday v", "reqwest/",
    "postmanruntime/", "insomnia/", "httpie/", "powershell/", "windowspowershell/",
    "dart:io", "winhttp", "mechanize/", "zgrab/", "masscan/",
)
# How bots outside both lists still give themselves away. Browsers never put a URL
# in their user agent, and a product named "...Bot/1.0" or "...Crawler;" is
# self-declared. Case-sensitive on purpose: "CUBOT" is a phone, "FooBot" is not.
SELF_DECLARED_BOT_PATTERNS: tuple[str, ...] = (
    r"https?://",
    r"(?:[Bb]ot|[Cc]rawler|[Ss]pider|[Ss]craper)(?:[/;)]|$)",
)
# Whole user agents that say nothing but are typical defaults of scripts.
_BOT_PLACEHOLDERS = frozenset({"-", "mozilla", "mozilla/4.0", "mozilla/5.0", "node", "null"})

CACHE_SIZE = 4096
# RE2 builds its DFA lazily inside this budget; the generic set needs a few MB.
_RE2_MAX_MEM = 64 << 20

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_WORD = _ALNUM | {"_"}
_IMITATION = ("like ", "with ", "following ")
_CATALOG_RANK = 1  # any catalog token beats any library token
_LIBRARY_RANK = 0


def normalize(user_agent: str) -> str:
    """The form tokens are matched in: lower case, whitespace runs collapsed."""
    return " ".join(user_agent.lower().split())


@dataclass(frozen=True, slots=True)
class _Tables:
    """Everything `_classify` reads: compiled once, never mutated afterwards."""

    automaton: Any  # ahocorasick.Automaton: token -> (rank, length, result)
    generic: Any  # re2.Set, or None when there are no generic patterns


class Catalog:
    """The crawler catalog, compiled once into a one-pass user-agent classifier.

    Immutable after construction; `classify` is safe to call from any thread.
    """

    def __init__(
        self, crawlers: Iterable[Crawler], generic_bot_patterns: Iterable[str] = ()
    ) -> None:
        self._crawlers: tuple[Crawler, ...] = tuple(crawlers)
        self._by_name: dict[str, Crawler] = {}
        for crawler in self._crawlers:
            key = crawler.name.casefold()
            if key in self._by_name:
                raise CatalogError(
                    f"crawler {crawler.name!r} is listed twice "
                    f"(also as {self._by_name[key].name!r})"
                )
            self._by_name[key] = crawler
        generic, self.skipped_patterns = _compile_generic(
            (*SELF_DECLARED_BOT_PATTERNS, *generic_bot_patterns)
        )
        tables = _Tables(_compile_tokens(self._crawlers), generic)
        # A per-instance cache around a function of the tables, not of `self`:
        # dropping the catalog drops its cache, and no reference cycle holds either.
        self._lookup: Callable[[str], Classification] = lru_cache(maxsize=CACHE_SIZE)(
            partial(_classify, tables)
        )
        self.names: frozenset[str] = frozenset(c.name for c in self._crawlers)
        self.operators: frozenset[str] = frozenset(c.operator.casefold() for c in self._crawlers)

    def __iter__(self) -> Iterator[Crawler]:
        return iter(self._crawlers)

    def __len__(self) -> int:
        return len(self._crawlers)

    def __repr__(self) -> str:
        return f"<Catalog of {len(self._crawlers)} crawlers>"

    def get(self, name: str) -> Crawler | None:
        """The entry called `name`, ignoring case; None when there is none."""
        return self._by_name.get(name.casefold())

    def classify(self, user_agent: str) -> Classification:
        """What the user agent claims to be; see the module docstring for the rules."""
        return self._lookup(user_agent)


def _compile_tokens(crawlers: tuple[Crawler, ...]) -> Any:
    automaton = ahocorasick.Automaton()
    for token in BOT_LIBRARY_TOKENS:
        automaton.add_word(token, (_LIBRARY_RANK, len(token), OTHER_BOT))
    owners: dict[str, str] = {}
    for crawler in crawlers:
        for raw in crawler.ua_tokens:
            token = normalize(raw)
            if not token:
                raise CatalogError(f"crawler {crawler.name!r} has an empty user-agent token")
            if token in owners:
                raise CatalogError(
                    f"user-agent token {raw!r} of {crawler.name!r} is already "
                    f"used by {owners[token]!r}"
                )
            owners[token] = crawler.name
            # Added after the library tokens so a catalog entry replaces an equal one.
            # The result is built here once, not on every classification.
            result = Classification(Kind.CRAWLER, crawler)
            automaton.add_word(token, (_CATALOG_RANK, len(token), result))
    automaton.make_automaton()
    return automaton


def _compile_generic(patterns: Iterable[str]) -> tuple[Any, int]:
    """One RE2 set over the generic crawler patterns, and how many it had to skip."""
    options = re2.Options()
    options.max_mem = _RE2_MAX_MEM
    regex_set = re2.Set.SearchSet(options)
    added = skipped = 0
    for pattern in patterns:
        try:
            regex_set.Add(pattern)
        except re2.error:
            # A pattern RE2 cannot express is left out rather than run with a
            # backtracking engine on attacker-controlled input.
            skipped += 1
        else:
            added += 1
    if not added:
        return None, skipped
    regex_set.Compile()
    return regex_set, skipped


def _classify(tables: _Tables, user_agent: str) -> Classification:
    ua = normalize(user_agent)
    if not ua or ua in _BOT_PLACEHOLDERS:
        return OTHER_BOT
    best_key: tuple[int, int, int] | None = None  # rank, length, -start: larger wins
    best = UNKNOWN
    for end, (rank, length, result) in tables.automaton.iter(ua):
        start = end - length + 1
        if not _on_boundaries(ua, start, end):
            continue
        key = (rank, length, -start)
        if best_key is None or key > best_key:
            best_key, best = key, result
    if best_key is not None:
        return best
    # aiohttp hands header bytes that are not UTF-8 over as surrogate escapes, which
    # RE2's str path refuses to encode: match the original bytes instead.
    if tables.generic is not None and tables.generic.Match(
            user_agent.encode("utf-8", "surrogateescape")):
        return OTHER_BOT
    return UNKNOWN


def _on_boundaries(ua: str, start: int, end: int) -> bool:
    """True when ua[start:end + 1] stands as a name of its own (module docstring, step 2)."""
    if start > 0 and ua[start] in _ALNUM:
        before = ua[start - 1]
        if before in _WORD or before == "-":
            return False
        if before in "/.@" and "." not in ua[start : end + 1]:
            return False
        if ua.endswith(_IMITATION, 0, start):
            return False
    return not (end + 1 < len(ua) and ua[end] in _ALNUM and ua[end + 1] in _WORD)
