"""The declarations a policy implies, derived from what it enforces.

`plan(...)` evaluates the policy (`gatekeeper.core.stance`) for every catalog
crawler over the regions of the path space the policy distinguishes, and returns
a `Plan`: the robots.txt group of each crawler the policy refuses somewhere, the
usage preferences per region (aipref `Content-Usage`, Content Signals), the
TDMRep rules, and the response headers for a path. `gatekeeper.core.robots_txt`
writes the robots.txt text from it.

Regions. Every path glob of a rule that can apply to a crawler becomes RFC 9309
patterns (`gatekeeper.core.rsl.rfc9309_patterns`), with `/` as the catch-all. A
path belongs to the region of its most specific matching pattern (RFC 9309
longest match), and each region is decided by evaluating the policy once, on a
representative path that only that region's pattern matches: the pattern with
every `*` and an open end standing for one character no pattern contains.
When the globs use only literal text, `/**` and `{a,b}`, each glob is exactly
the union of its patterns, so every path of a region gets the policy's answer
for the representative and the declaration is exact. A glob with `*` or `?`
inside a segment has no exact RFC 9309 form (its `*` also crosses `/`): its
region is approximate and listed in `Plan.notes`.

What each declaration says, per region and per crawler:

| enforced | robots.txt | Content-Usage / Content-Signal | TDMRep |
|---|---|---|---|
| allow, monitor | Allow | y / yes | 0 unless another AI purpose is refused |
| rate_limit | Allow (a pace cannot be declared) | y / yes | as allow |
| require_license | Allow, with `License:` | n / no | 1, `tdm-policy`: the RSL document |
| block | Disallow | n / no | 1 |

A licence path stays crawlable in robots.txt so that a crawler which honours
robots.txt can still reach the licence offer (RSL's `License:` line never
changes Allow or Disallow). Usage words and TDM reservation are per purpose: a
word is "n" on a region where the policy refuses any crawler with one of its
purposes, so the site-wide statement never promises more than is enforced;
a crawler the policy treats better than its purpose gets its own group saying so.

The origin's robots.txt: in `merge` mode, its `*` rules are folded into every
generated group (a group of its own takes the crawler out of `*`), so a group
disallows where the origin or the policy does; a crawler the origin names
itself keeps the origin's group, and any disagreement with the policy is
reported in `Plan.conflicts`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from gatekeeper.core.catalog import Crawler, Purpose
from gatekeeper.core.model import Pattern, Policy, RobotsMode, UsageStatement
from gatekeeper.core.owners import AI_PURPOSES, NO_OWNERS, Owners
from gatekeeper.core.robots import PatternSet, RobotsRules
from gatekeeper.core.rsl import RSL_MEDIA_TYPE, rfc9309_patterns
from gatekeeper.core.stance import Stance, Verdict, applies_to, rules_for, stance_of
from gatekeeper.core.usage import Vocabularies, content_signal, content_usage

_V = TypeVar("_V")

ROOT = "/"
# Stands for "any text" in a representative path: no pattern or glob contains it,
# and the gate's canonical paths never do either (they escape it as %7F).
_ANY = "\x7f"
# Response headers are looked up per path; distinct paths beyond this start afresh.
_MAX_CACHED_PATHS = 4096


@dataclass(frozen=True, slots=True)
class Line:
    allow: bool
    pattern: str


@dataclass(frozen=True, slots=True)
class Group:
    """A generated robots.txt group for one crawler."""

    token: str
    crawler: str
    lines: tuple[Line, ...]  # most specific first
    license: bool  # a licence is offered to it somewhere: the group gets `License:`
    usage: tuple[tuple[str, str], ...]  # (pattern or "/", aipref statement)


@dataclass(frozen=True, slots=True)
class TdmRule:
    location: str
    reserved: bool
    policy: bool  # a licence is offered here: `tdm-policy` points at the RSL document


@dataclass(frozen=True, slots=True)
class Note:
    """A pair the declarations cannot state exactly, and why."""

    crawler: str
    pattern: str
    reason: str


@dataclass(slots=True)
class Plan:
    mode: RobotsMode
    groups: tuple[Group, ...]
    usage: tuple[tuple[str, str], ...]  # site-wide Content-Usage per pattern ("/" first)
    signal: str  # the Content-Signal statement; "" when content_usage is off
    tdm: tuple[TdmRule, ...]  # most specific first, as TDMRep's first match wants
    origin_named: tuple[str, ...]  # crawlers whose own group in the origin's file is kept
    conflicts: tuple[str, ...]
    notes: tuple[Note, ...]
    regions: PatternSet
    tdm_policy: bool  # tdm-policy headers are sent (TDMRep is on)
    # Per region: the headers, and whether a licence is offered there.
    headers_by_region: dict[str, tuple[tuple[tuple[str, str], ...], bool]]
    _cache: dict[tuple[str, str], tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def headers_for(self, path: str, rsl_url: str = "") -> tuple[tuple[str, str], ...]:
        """Declaration headers for a response on `path` (canonical path); `rsl_url`, the
        absolute URL of the RSL document, goes into `tdm-policy` and `Link`."""
        key = (path, rsl_url)
        cached = self._cache.get(key)
        if cached is None:
            region = self.regions.best(path) or ROOT
            headers, offers = self.headers_by_region.get(region, ((), False))
            if offers and rsl_url:
                headers = headers + _licence_headers(rsl_url, self.tdm_policy)
            cached = headers
            if len(self._cache) >= _MAX_CACHED_PATHS:
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def group_for(self, crawler: str) -> Group | None:
        return next((g for g in self.groups if g.crawler == crawler), None)


def representative(pattern: str) -> str:
    """A path only `pattern` matches among patterns without `_ANY`."""
    if pattern.endswith("$"):
        return pattern[:-1].replace("*", _ANY)
    return pattern.replace("*", _ANY) + _ANY


def glob_patterns(glob: str) -> tuple[tuple[str, ...], bool]:
    """RFC 9309 patterns for a policy glob, and whether they match exactly the same paths."""
    exact = "*" not in glob.replace("/**", "") and "?" not in glob
    return rfc9309_patterns(glob), exact


def plan(
    policy: Policy,
    crawlers: Iterable[Crawler],
    vocab: Vocabularies,
    *,
    host: str = "",
    origin: RobotsRules | None = None,
    owners: Owners = NO_OWNERS,
) -> Plan:
    """The declarations of `policy` for `host`; `origin` is the origin's robots.txt."""
    settings = policy.declarations
    mode = settings.robots_txt
    served_origin = origin if mode is RobotsMode.MERGE else None
    catalog = tuple(crawlers)
    notes: list[Note] = []
    regions: dict[str, dict[str, Stance]] = {}  # crawler name -> pattern -> stance
    all_patterns: dict[str, None] = {ROOT: None}
    for statement in settings.usage:
        for glob in statement.paths:
            all_patterns.update(dict.fromkeys(_patterns(glob, "", notes, "usage")))
    # The origin's patterns bound regions too: compliance with them is enforced.
    origin_patterns = origin.patterns() if origin is not None else ()
    for crawler in catalog:
        patterns = _crawler_patterns(policy, owners, crawler, host, notes)
        patterns.update(dict.fromkeys(origin_patterns))
        all_patterns.update(patterns)
        regions[crawler.name] = {}
    # Every crawler is judged on every region pattern: a region finer than its own is
    # still homogeneous for it, and site-wide statements need all crawlers per region.
    for crawler in catalog:
        judged = regions[crawler.name]
        for pattern in all_patterns:
            path = representative(pattern)
            stance = stance_of(policy, owners, crawler, path, host,
                               _origin_disallows(origin, crawler, path))
            judged[pattern] = stance
            if stance.conditional:
                notes.append(Note(crawler.name, pattern, f"rule {stance.conditional!r} "
                                  "depends on request headers"))
    stated = _stated(settings.usage, all_patterns)
    site_words = _site_words(catalog, regions, vocab, stated, all_patterns)
    groups, named, conflicts = _groups(catalog, regions, vocab, served_origin,
                                       settings.content_usage, stated, site_words)
    site_usage = {p: content_usage(words.items()) for p, words in site_words.items()}
    tdm = _tdm(catalog, regions, vocab, stated, all_patterns)
    signal = _signal(catalog, regions, vocab, stated) if settings.content_usage else ""
    headers = _headers(site_usage, tdm, settings.content_usage, settings.tdmrep)
    return Plan(
        mode=mode, groups=groups,
        usage=_per_pattern(site_usage) if settings.content_usage else (),
        signal=signal, tdm=_most_specific_first(tdm) if settings.tdmrep else (),
        origin_named=named, conflicts=conflicts, notes=tuple(dict.fromkeys(notes)),
        regions=PatternSet(all_patterns), tdm_policy=settings.tdmrep,
        headers_by_region=headers,
    )


# -- regions ----------------------------------------------------------------------------


def _crawler_patterns(policy: Policy, owners: Owners, crawler: Crawler, host: str,
                      notes: list[Note]) -> dict[str, None]:
    patterns: dict[str, None] = {ROOT: None}
    for rule in rules_for(policy, host):
        if rule.match.paths is None or not applies_to(rule, crawler, host):
            continue
        for glob in rule.match.paths:
            patterns.update(dict.fromkeys(_patterns(glob, crawler.name, notes, rule.name)))
    if crawler.purpose in AI_PURPOSES:
        for owner in owners.owners:
            for glob in owner.paths:
                patterns.update(dict.fromkeys(
                    _patterns(glob, crawler.name, notes, f"owner:{owner.name}")))
    return patterns


def _patterns(glob: Pattern, crawler: str, notes: list[Note], where: str) -> tuple[str, ...]:
    patterns, exact = glob_patterns(glob.text)
    if not exact:
        notes.extend(Note(crawler or "*", p, f"{where}: glob {glob.text!r} has no exact "
                          "robots.txt form; declared with the nearest wider pattern")
                     for p in patterns)
    return patterns


def _origin_disallows(origin: RobotsRules | None, crawler: Crawler, path: str) -> bool:
    return origin is not None and not origin.verdict(crawler.robots_token, path).allowed


def _stated(statements: Sequence[UsageStatement],
            patterns: Iterable[str]) -> dict[str, dict[str, bool]]:
    """Per pattern, the words operators stated there (several statements: "n" wins)."""
    out: dict[str, dict[str, bool]] = {}
    for pattern in patterns:
        path = representative(pattern)
        words: dict[str, bool] = {}
        for statement in statements:
            if any(p.match(path) for p in statement.paths):
                for word, allowed in statement.words:
                    words[word] = words.get(word, True) and allowed
        out[pattern] = words
    return out


# -- robots.txt groups ------------------------------------------------------------------


def _groups(
    catalog: Sequence[Crawler], regions: dict[str, dict[str, Stance]], vocab: Vocabularies,
    origin: RobotsRules | None, with_usage: bool, stated: dict[str, dict[str, bool]],
    site_words: dict[str, dict[str, bool]],
) -> tuple[tuple[Group, ...], tuple[str, ...], tuple[str, ...]]:
    groups: list[Group] = []
    named: list[str] = []
    conflicts: list[str] = []
    for crawler in catalog:
        judged = regions[crawler.name]
        if origin is not None and origin.names(crawler.robots_token):
            named.append(crawler.name)
            conflicts.extend(_conflicts(crawler, judged, origin))
            continue
        declared = {p: _origin_allows(origin, crawler, p) and s.verdict is not Verdict.BLOCK
                    for p, s in judged.items()}
        offers = any(s.verdict is Verdict.LICENSE for s in judged.values())
        # A group of its own only where it says more than the origin's `*` rules do.
        adds = any(_origin_allows(origin, crawler, p) and not allowed
                   for p, allowed in declared.items())
        words = _crawler_words(crawler, judged, vocab, stated)
        # Served better than its purpose: the site-wide "n" is not what it gets.
        differs = with_usage and any(site_words[p][w] != v for p, ws in words.items()
                                     for w, v in ws.items())
        if not adds and not offers and not differs:
            continue
        lines = _lines(declared)
        usage: tuple[tuple[str, str], ...] = ()
        if with_usage and vocab.aipref.words_for(crawler.purpose):
            usage = _per_pattern({p: content_usage(ws.items()) for p, ws in words.items()})
        groups.append(Group(crawler.robots_token, crawler.name, lines, offers, usage))
    return tuple(groups), tuple(named), tuple(conflicts)


def _origin_allows(origin: RobotsRules | None, crawler: Crawler, pattern: str) -> bool:
    return origin is None or origin.verdict(crawler.robots_token, representative(pattern)).allowed


def _lines(declared: dict[str, bool]) -> tuple[Line, ...]:
    # Longest first: parsers that take the first match (Python's robotparser, the
    # classic ones) then agree with RFC 9309's longest match on plain prefixes.
    ordered = sorted(_pruned(declared).items(), key=lambda item: (-len(item[0]), item[0]))
    return tuple(Line(allowed, pattern) for pattern, allowed in ordered)


def _pruned(values: dict[str, _V]) -> dict[str, _V]:
    """The patterns whose value differs from the pattern that decides when they are gone.

    Without a pattern, its region falls to the longest shorter pattern that is a prefix
    of it (its parent); with the same value there, the pattern says nothing. Exact
    when no pattern has a `*` (a wildcard could match in between), so then nothing
    is pruned.
    """
    if any("*" in pattern for pattern in values):
        return values
    prefixes = sorted((p for p in values if not p.endswith("$")), key=len, reverse=True)
    out = {}
    for pattern, value in values.items():
        literal = pattern.rstrip("$")
        parent = next((p for p in prefixes if len(p) < len(pattern) and literal.startswith(p)
                       and p != pattern), None)
        if parent is None or values[parent] != value:
            out[pattern] = value
    return out


def _conflicts(crawler: Crawler, judged: dict[str, Stance], origin: RobotsRules) -> list[str]:
    out = []
    for pattern, stance in judged.items():
        verdict = origin.verdict(crawler.robots_token, representative(pattern))
        if stance.verdict is Verdict.BLOCK and verdict.allowed:
            out.append(f"{crawler.robots_token}: the origin's robots.txt allows {pattern} "
                       f"({verdict.rule or 'no rule'}) but the policy blocks it (rule "
                       f"{stance.rule!r}); the origin's group is served")
        elif not verdict.allowed and stance.verdict is not Verdict.BLOCK and \
                stance.rule != "enforce-robots-txt" and not stance.rule.startswith("owner:"):
            out.append(f"{crawler.robots_token}: the origin's robots.txt disallows {pattern} "
                       f"({verdict.rule}) but the policy serves it (rule {stance.rule!r})")
    return out


def _crawler_words(crawler: Crawler, judged: dict[str, Stance], vocab: Vocabularies,
                   stated: dict[str, dict[str, bool]]) -> dict[str, dict[str, bool]]:
    words = vocab.aipref.words_for(crawler.purpose)
    return {p: {w: not s.verdict.refused and stated[p].get(w, True) for w in words}
            for p, s in judged.items()}


def _per_pattern(values: dict[str, str]) -> tuple[tuple[str, str], ...]:
    ordered = sorted(_pruned(values).items(),
                     key=lambda item: (item[0] != ROOT, -len(item[0]), item[0]))
    return tuple(ordered)


# -- site-wide statements ---------------------------------------------------------------


def _refused(catalog: Sequence[Crawler], regions: dict[str, dict[str, Stance]],
             purposes: frozenset[Purpose], pattern: str) -> list[Stance]:
    return [regions[c.name][pattern] for c in catalog if c.purpose in purposes
            and regions[c.name][pattern].verdict.refused]


def _site_words(catalog: Sequence[Crawler], regions: dict[str, dict[str, Stance]],
                vocab: Vocabularies, stated: dict[str, dict[str, bool]],
                patterns: Iterable[str]) -> dict[str, dict[str, bool]]:
    return {pattern: {word: not _refused(catalog, regions, purposes, pattern)
                      and stated[pattern].get(word, True)
                      for word, purposes in vocab.aipref.words}
            for pattern in patterns}


def _signal(catalog: Sequence[Crawler], regions: dict[str, dict[str, Stance]],
            vocab: Vocabularies, stated: dict[str, dict[str, bool]]) -> str:
    """Content Signals have no path scope: a word is "no" if any region refuses it."""
    words = []
    for word, purposes in vocab.content_signals.words:
        allowed = not any(_refused(catalog, regions, purposes, p) for p in stated)
        for pattern_words in stated.values():
            for stated_word, ok in pattern_words.items():
                if not ok and vocab.purposes_of(stated_word) & purposes:
                    allowed = False
        words.append((word, allowed))
    return content_signal(words)


def _tdm(catalog: Sequence[Crawler], regions: dict[str, dict[str, Stance]],
         vocab: Vocabularies, stated: dict[str, dict[str, bool]],
         patterns: Iterable[str]) -> list[TdmRule]:
    out = []
    for pattern in patterns:
        refused = _refused(catalog, regions, vocab.tdm_reserved_by, pattern)
        reserved = bool(refused) or not all(stated[pattern].values())
        offers = any(s.verdict is Verdict.LICENSE for s in refused)
        out.append(TdmRule(pattern, reserved, offers))
    return out


def _most_specific_first(rules: list[TdmRule]) -> tuple[TdmRule, ...]:
    # TDMRep takes the first rule that matches; sorted by length, the first match is the
    # longest, which is how the regions were decided.
    kept = _pruned({r.location: (r.reserved, r.policy) for r in rules})
    return tuple(TdmRule(location, *kept[location])
                 for location in sorted(kept, key=lambda loc: (-len(loc), loc)))


def _headers(usage: dict[str, str], tdm: list[TdmRule], with_usage: bool, with_tdm: bool,
             ) -> dict[str, tuple[tuple[tuple[str, str], ...], bool]]:
    out: dict[str, tuple[tuple[tuple[str, str], ...], bool]] = {}
    for rule in tdm:
        headers: list[tuple[str, str]] = []
        if with_usage:
            headers.append(("Content-Usage", usage[rule.location]))
        if with_tdm:
            headers.append(("tdm-reservation", "1" if rule.reserved else "0"))
        out[rule.location] = (tuple(headers), rule.policy)
    return out


def _licence_headers(rsl_url: str, tdm_policy: bool) -> tuple[tuple[str, str], ...]:
    link = ("Link", f'<{rsl_url}>; rel="license"; type="{RSL_MEDIA_TYPE}"')
    return (("tdm-policy", rsl_url), link) if tdm_policy else (link,)
