"""The last hour of traffic, by minute, for the status page (`/status.json`).

Metrics answer "how much, over time" for Prometheus; this answers the operator's
first question on opening the admin page, "who is crawling me right now", without a
Prometheus: requests per crawler over the last hour with the actions taken, identity
states, robots.txt violations, the paths AI crawlers take, and the licences in use.

One bucket per minute in a ring of `minutes`; a bucket is reset when its minute comes
round again. Browsers (clients that claim no crawler) are one counter: the page is
about crawlers, and a browser request costs one increment here. Every key is bounded:
crawler names come from the catalog (anything else is its kind), licences are the
policy's, and paths are bounded in number and in length:

- a bucket keeps at most `max_paths` distinct paths (later new ones are not counted);
- a path is kept as at most `MAX_PATH_CHARS` characters: a longer one is cut and ends
  in "…" (a request path may be 8 KB, and the hour would otherwise hold 60 x 2,000 of
  them, about 1 GB);
- a path lists at most `MAX_PATH_CRAWLERS` crawlers per bucket (the catalog names
  over a hundred AI crawlers: all of them on every path would again be about 1 GB).

So the paths of the hour are at most `minutes x max_paths` entries, each a string of
at most `MAX_PATH_CHARS` characters (canonical paths are ASCII: a byte a character)
and a tuple of at most `MAX_PATH_CRAWLERS` shared names: `path_bytes_bound`, with
the defaults 60 x 2,000 x `PATH_ENTRY_BYTES` (640) bytes, about 73 MiB, Python's
bookkeeping included (tests/unit/observe/test_activity.py measures it).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from gatekeeper.core.owners import AI_PURPOSES

BROWSERS: Final = "unknown"
MAX_PATH_CHARS: Final = 256
MAX_PATH_CRAWLERS: Final = 8
# The most one kept path costs: its characters and Python's bookkeeping (the string's
# header, its entries in two dicts, its tuple of names) come to 400 to 510 bytes.
PATH_ENTRY_BYTES: Final = 640
TRUNCATED: Final = "…"  # ends a path that was cut, in the snapshot
# What a cut path ends in while kept: ASCII, because one "…" would make Python store
# the whole string at two bytes a character, and never in a request path, where it
# would start the fragment (the edge refuses it).
_CUT: Final = "#"


@dataclass(slots=True)
class _CrawlerMinute:
    requests: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    identities: Counter[str] = field(default_factory=Counter)
    violations: int = 0
    licensed: int = 0
    refused: int = 0


@dataclass(slots=True)
class _Minute:
    minute: int = -1
    browsers: int = 0
    browsers_refused: int = 0
    crawlers: dict[str, _CrawlerMinute] = field(default_factory=dict)
    purposes: dict[str, str] = field(default_factory=dict)
    paths: Counter[str] = field(default_factory=Counter)
    # Tuples, not sets: most paths have one crawler, and a set costs four times more.
    path_crawlers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    licences: Counter[str] = field(default_factory=Counter)
    licensees: dict[str, set[str]] = field(default_factory=dict)


class Activity:
    def __init__(self, minutes: int = 60, max_paths: int = 2000,
                 clock: Callable[[], float] = time.time) -> None:
        self._ring = [_Minute() for _ in range(minutes)]
        self._minutes = minutes
        self._max_paths = max_paths
        self._clock = clock

    def record(self, crawler: str, purpose: str | None, reason: str, forwarded: bool,
               identity: str, path: str, violation: bool, licence: str = "",
               licensee: str = "") -> None:
        """One decided request; `reason` is the decision's (`allowed`, `blocked`,
        `rate_limited`, `license_required`, `licensed`, ...)."""
        bucket = self._bucket(self._clock())
        if crawler == BROWSERS:
            bucket.browsers += 1
            if not forwarded:
                bucket.browsers_refused += 1
            return
        entry = bucket.crawlers.get(crawler)
        if entry is None:
            entry = bucket.crawlers[crawler] = _CrawlerMinute()
            bucket.purposes[crawler] = purpose or ""
        entry.requests += 1
        entry.actions[reason] += 1
        if not forwarded:
            entry.refused += 1
        entry.identities[identity] += 1
        if violation:
            entry.violations += 1
        if licence:
            entry.licensed += 1
            bucket.licences[licence] += 1
            bucket.licensees.setdefault(licence, set()).add(licensee)
        if purpose in _AI:
            self._path(bucket, bounded_path(path), crawler)

    @property
    def path_bytes_bound(self) -> int:
        """The most the hour's paths may take in memory (see the module docstring)."""
        return self._minutes * self._max_paths * PATH_ENTRY_BYTES

    def _path(self, bucket: _Minute, path: str, crawler: str) -> None:
        if path not in bucket.paths and len(bucket.paths) >= self._max_paths:
            return
        bucket.paths[path] += 1
        names = bucket.path_crawlers.get(path, ())
        if crawler not in names and len(names) < MAX_PATH_CRAWLERS:
            bucket.path_crawlers[path] = (*names, crawler)

    def snapshot(self, operators: Callable[[str], str] | None = None,
                 top_paths: int = 20) -> dict[str, Any]:
        """The last `minutes` minutes, summed, newest minute last in `per_minute`."""
        now = self._clock()
        current = int(now // 60)
        crawlers: dict[str, _CrawlerMinute] = {}
        purposes: dict[str, str] = {}
        paths: Counter[str] = Counter()
        licences: Counter[str] = Counter()
        licensees: dict[str, set[str]] = {}
        browsers = refused = 0
        per_minute = []
        for minute, bucket in self._window(current):
            if bucket is None:
                per_minute.append({"minute": minute * 60, "browsers": 0, "crawlers": 0,
                                   "refused": 0})
                continue
            browsers += bucket.browsers
            refused += bucket.browsers_refused
            crawled = refused_crawlers = 0
            for name, entry in bucket.crawlers.items():
                total = crawlers.setdefault(name, _CrawlerMinute())
                total.requests += entry.requests
                total.actions.update(entry.actions)
                total.identities.update(entry.identities)
                total.violations += entry.violations
                total.licensed += entry.licensed
                total.refused += entry.refused
                purposes[name] = bucket.purposes[name]
                crawled += entry.requests
                refused_crawlers += entry.refused
            paths.update(bucket.paths)
            licences.update(bucket.licences)
            for name, holders in bucket.licensees.items():
                licensees.setdefault(name, set()).update(holders)
            per_minute.append({"minute": minute * 60, "browsers": bucket.browsers,
                               "crawlers": crawled,
                               "refused": bucket.browsers_refused + refused_crawlers})
        rows: list[dict[str, Any]] = [{
            "crawler": name,
            "operator": operators(name) if operators is not None else "",
            "purpose": purposes.get(name, ""),
            "requests": entry.requests,
            "reasons": dict(entry.actions),
            "refused": entry.refused,
            "identities": dict(entry.identities),
            "robots_violations": entry.violations,
            "licensed": entry.licensed,
        } for name, entry in crawlers.items()]
        rows.sort(key=lambda row: (-row["requests"], row["crawler"]))
        return {
            "generated_at": now,
            "window_minutes": self._minutes,
            "browsers": {"requests": browsers, "refused": refused},
            "crawlers": rows,
            "top_paths": [{"path": shown_path(path), "requests": count,
                           "crawlers": self._path_crawlers(path, current)}
                          for path, count in paths.most_common(top_paths)],
            "licences": [{"license": name, "requests": count,
                          "licensees": sorted(licensees.get(name, ()))}
                         for name, count in licences.most_common()],
            "per_minute": per_minute,
        }

    def _path_crawlers(self, path: str, current: int) -> list[str]:
        """Who took `path` in the window; asked for the top paths only, so a snapshot
        never builds a set of names for every path of the hour."""
        names: set[str] = set()
        for _, bucket in self._window(current):
            if bucket is not None:
                names.update(bucket.path_crawlers.get(path, ()))
        return sorted(names)

    def _window(self, current: int) -> Iterator[tuple[int, _Minute | None]]:
        """Each minute of the window ending at `current`, oldest first, with its
        bucket, or None when the bucket holds an older minute (nothing was seen)."""
        for minute in range(current - self._minutes + 1, current + 1):
            bucket = self._ring[minute % self._minutes]
            yield minute, bucket if bucket.minute == minute else None

    def _bucket(self, now: float) -> _Minute:
        minute = int(now // 60)
        bucket = self._ring[minute % self._minutes]
        if bucket.minute != minute:
            bucket = self._ring[minute % self._minutes] = _Minute(minute)
        return bucket


def bounded_path(path: str) -> str:
    """`path` as the status page keeps it: at most MAX_PATH_CHARS characters, a longer
    one cut and marked (`_CUT`, shown as TRUNCATED). The cut never leaves half a
    "%XX" escape."""
    if len(path) <= MAX_PATH_CHARS:
        return path
    head = path[:MAX_PATH_CHARS - 1]
    partial = head.rfind("%", len(head) - 2)
    if partial != -1:
        head = head[:partial]
    return head + _CUT


def shown_path(kept: str) -> str:
    """A kept path as the snapshot shows it: a cut one ends in TRUNCATED."""
    return kept[:-1] + TRUNCATED if kept.endswith(_CUT) else kept


_AI: Final = frozenset(p.value for p in AI_PURPOSES)
