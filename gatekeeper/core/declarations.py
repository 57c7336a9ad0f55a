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
| require_license | Allow, with `License:` | n / no | 1, `tdm-policy`: the terms page |
| block | Disallow | n / no | 1 |

Wherever the policy asks any crawler for a licence, whatever its purpose, forwarded
responses also carry `Link: <rsl>; rel="license"`, as that crawler's group carries
`License:`: RSL's Link names the licence of the response's content.

A licence path stays crawlable in robots.txt so that a crawler which honours
robots.txt can still reach the licence offer (RSL's `License:` line never
changes Allow or Disallow). Usage words and TDM reservation are per purpose: a
word is "n" on a region where the policy refuses any crawler with one of its
purposes, so the site-wide statement never promises more than is enforced;
a crawler the policy treats better than its purpose gets its own group saying so.

Groups. A crawler gets a group of its own when the policy blocks it somewhere,
asks it for a licence somewhere, or treats it better than its purpose. Every
group allows the public documents (`public_paths`), which the main listener
serves whatever the policy says: a crawler pointed at the licence must be able
to read it. The policy matches paths and robots.txt matches path and query, so
every `P$` pattern of a region has a twin `P?*` with the same value. Older
parsers (`urllib.robotparser`, `robotexclusionrulesparser`) take the first
group whose user agent is a substring of the crawler's name, so groups are
written longest token first, and a catalog crawler whose token contains the
token of a group (`Baiduspider` and `Spider`) gets an explicit group of its own.

The origin's robots.txt: in `merge` mode, its `*` rules are folded into every
generated group (a group of its own takes the crawler out of `*`), so a group
disallows where the origin or the policy does; a crawler the origin names
itself keeps the origin's group, and any disagreement with the policy is
reported in `Plan.conflicts`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Final, TypeVar

from gatekeeper.core.catalog import Crawler, Purpose
from gatekeeper.core.model import Pattern, Policy, RobotsMode, Rule, UsageStatement
from gatekeeper.core.owners import AI_PURPOSES, NO_OWNERS, Owners
from gatekeeper.core.robots import PatternSet, RobotsRules
from gatekeeper.core.rsl import RSL_MEDIA_TYPE, rfc9309_patterns
from gatekeeper.core.stance import Enforced, Stance, Verdict, applies_to, rules_for
from gatekeeper.core.usage import Vocabularies, content_signal, content_usage

_V = TypeVar("_V")

ROOT = "/"
ROBOTS_PATH: Final = "/robots.txt"
TDMREP_PATH: Final = "/.well-known/tdmrep.json"
JWKS_PATH: Final = "/.well-known/jwks.json"
# Stands for "any text" in a representative path: no pattern or glob contains it,
# and the gate's canonical paths never do either (they escape it as %7F).
_ANY = "\x7f"
# Origin `*` rules repeated in each generated group at most; more would crowd the
# origin's own file out of the 500 KiB a parser reads.
MAX_FOLDED = 200
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
    policy: bool  # a licence is offered here: `tdm-policy` points at the terms page


class Limit(StrEnum):
    """Why a pair is not declared exactly (docs/declarations.md, "What cannot be
    declared exactly")."""

    RATE = "rate limit"  # served at a pace: declared as allowed
    HEADERS = "request headers"  # decided as if the request carried no headers
    GLOB = "glob"  # a glob with no exact RFC 9309 form: a wider pattern
    ORIGIN_WILDCARD = "origin wildcard"  # an origin `*` rule placed by one path
    ORIGIN_CUT = "origin rules cut"  # more origin `*` rules than MAX_FOLDED


@dataclass(frozen=True, slots=True)
class Note:
    """A pair the declarations cannot state exactly, and why."""

    crawler: str
    pattern: str
    reason: str
    limit: Limit


@dataclass(frozen=True, slots=True)
class RegionHeaders:
    """The declaration headers of one region, before the site's URLs are known."""

    headers: tuple[tuple[str, str], ...]  # Content-Usage, tdm-reservation
    tdm_policy: bool  # a licence is offered to a purpose TDMRep reserves: `tdm-policy`
    licence: bool  # a licence is asked of some crawler here: `Link` to the RSL document

    def with_licence(self, rsl_url: str, terms_url: str) -> tuple[tuple[str, str], ...]:
        return self.headers + _licence_headers(rsl_url if self.licence else "",
                                               terms_url if self.tdm_policy else "")


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
    headers_by_region: dict[str, RegionHeaders]
    _cache: dict[tuple[str, str, str], tuple[tuple[str, str], ...]] = field(
        default_factory=dict)

    def headers_for(self, path: str, rsl_url: str = "",
                    terms_url: str = "") -> tuple[tuple[str, str], ...]:
        """Declaration headers for a response on `path` (canonical path). Where the
        policy asks any crawler for a licence, `Link` names `rsl_url`, the absolute
        URL of the RSL document: the licence of the response's content. Where that
        crawler's purpose is one TDMRep reserves, `tdm-policy` names `terms_url`, the
        absolute URL of the terms page: TDMRep wants a policy a person (HTML) or an
        ODRL reader can act on."""
        key = (path, rsl_url, terms_url)
        cached = self._cache.get(key)
        if cached is None:
            region = self.headers_by_region.get(self.regions.best(path) or ROOT)
            cached = region.with_licence(rsl_url, terms_url if self.tdm_policy else "") \
                if region is not None else ()
            if len(self._cache) >= _MAX_CACHED_PATHS:
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def group_for(self, crawler: str) -> Group | None:
        return next((g for g in self.groups if g.crawler == crawler), None)


def public_document(policy: Policy, method: str, path: str) -> str | None:
    """Which public document `path` is, never gated whatever the policy says about
    the client: "robots.txt", "tdmrep.json", "license.xml", "terms", "jwks.json",
    or None for a path the gate decides. Gatekeeper answers them itself, except
    where `from_origin` says the origin serves the document: the request is then
    forwarded unchanged, still without a decision. A blocked crawler can always
    read robots.txt: a 403 there would read as "no restrictions" (RFC 9309).
    The keys are served only once a signing key exists; the caller knows whether
    one does."""
    if method not in ("GET", "HEAD"):
        return None
    if path == ROBOTS_PATH:
        return "robots.txt"
    if path == TDMREP_PATH:
        return "tdmrep.json"
    if path == policy.rsl_url:
        return "license.xml"
    if path == policy.license_terms_url:
        return "terms"
    if path == JWKS_PATH:
        return "jwks.json"
    return None


def from_origin(policy: Policy, document: str, *, generated: bool = True) -> bool:
    """Whether the public `document` (`public_document`) is the origin's, forwarded
    to it ungated rather than answered by Gatekeeper: robots.txt with
    `declarations.robots_txt: off`, tdmrep.json with `declarations.tdmrep: false`,
    and both when Gatekeeper derives no declarations (`generated` false: no usage
    vocabulary is loaded)."""
    settings = policy.declarations
    if document == "robots.txt":
        return not generated or settings.robots_txt is RobotsMode.OFF
    if document == "tdmrep.json":
        return not generated or not settings.tdmrep
    return False


def public_paths(policy: Policy, *, jwks: bool = True) -> tuple[str, ...]:
    """The paths every generated group allows: the public documents (`jwks`: the
    keys are served) and `/robots.txt`, which RFC 9309 always allows."""
    found = [ROBOTS_PATH]
    for path in (TDMREP_PATH, policy.rsl_url, policy.license_terms_url,
                 *((JWKS_PATH,) if jwks else ())):
        # An absolute URL (the RSL document hosted elsewhere) is no path of this site.
        if path.startswith("/") and public_document(policy, "GET", path) is not None:
            found.append(path)
    return tuple(dict.fromkeys(found))


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
    jwks: bool = True,
    robots_compliance: bool = True,
) -> Plan:
    """The declarations of `policy` for `host`; `origin` is the origin's robots.txt,
    `jwks` whether the token keys are served (a signing key exists),
    `robots_compliance` whether the gate reads the origin's robots.txt at all
    (`Settings.robots_compliance`): without it the gate has no verdict to match
    `robots:` conditions on, and neither has the plan."""
    settings = policy.declarations
    mode = settings.robots_txt
    catalog = tuple(crawlers)
    notes: list[Note] = []
    patterns: dict[str, None] = {ROOT: None}
    for statement in settings.usage:
        for glob in statement.paths:
            patterns.update(dict.fromkeys(_patterns(glob, "", notes, "usage")))
    for crawler in catalog:
        patterns.update(_crawler_patterns(policy, owners, crawler, host, notes))
    regions = PatternSet(patterns)
    # Per crawler and region: the stance where the origin's robots.txt allows the path,
    # and where it disallows it (they differ only under a `robots:` rule). With
    # compliance off the gate passes no verdict, so neither does the plan: a `robots:`
    # rule then never matches, whatever the origin's file says.
    uses_robots = robots_compliance and any(r.match.robots_disallowed is not None
                                            for r in _all_rules(policy))
    allowed, disallowed = (False, True) if robots_compliance else (None, None)
    enforced = Enforced(policy, owners)
    judged: dict[str, dict[str, tuple[Stance, Stance]]] = {}
    for crawler in catalog:
        judged[crawler.name] = by_region = {}
        for pattern in patterns:
            path = representative(pattern)
            free = enforced.stance(crawler, path, host, allowed)
            barred = enforced.stance(crawler, path, host, disallowed) if uses_robots \
                else free
            by_region[pattern] = (free, barred)
            if free.conditional:
                notes.append(Note(crawler.name, pattern, f"rule {free.conditional!r} "
                                  "depends on request headers", Limit.HEADERS))
            if free.verdict is Verdict.LIMIT:
                notes.append(Note(crawler.name, pattern, f"rule {free.rule!r} sets a rate "
                                  "limit, which no declaration can state: declared as "
                                  "allowed", Limit.RATE))
    # Usage and TDM state the policy's own stance: the origin's Disallow lines are
    # declared by the origin's robots.txt itself.
    policy_stance = {name: {p: s[0] for p, s in by_region.items()}
                     for name, by_region in judged.items()}
    stated = _stated(settings.usage, patterns)
    site_words = _site_words(catalog, policy_stance, vocab, stated, patterns)
    folding = _Folding(origin, regions, mode, uses_robots, notes)
    groups, named, conflicts = _groups(catalog, judged, vocab, folding,
                                       settings.content_usage, stated, site_words,
                                       public_paths(policy, jwks=jwks), notes)
    site_usage = {p: content_usage(words.items()) for p, words in site_words.items()}
    tdm = _tdm(catalog, policy_stance, vocab, stated, patterns)
    signal = _signal(catalog, policy_stance, vocab, stated) if settings.content_usage else ""
    headers = _headers(site_usage, tdm, _licensed(policy_stance, patterns),
                       settings.content_usage, settings.tdmrep)
    return Plan(
        mode=mode, groups=groups,
        usage=_per_pattern(site_usage) if settings.content_usage else (),
        signal=signal, tdm=_most_specific_first(tdm) if settings.tdmrep else (),
        origin_named=named, conflicts=conflicts, notes=tuple(dict.fromkeys(notes)),
        regions=regions, tdm_policy=settings.tdmrep, headers_by_region=headers,
    )


class _Folding:
    """The origin's `*` rules, as they enter the generated groups.

    A generated group takes its crawler out of the origin's `*` group, so in merge
    mode the group repeats those rules, each with the value "the origin allows it
    and the policy does not block it". Under a `robots: disallowed` rule the origin's
    patterns bound what the policy enforces too, so they are folded in replace mode
    as well. Each rule is placed once in the policy's regions; a rule with `*` has
    no exact representative path and is noted. In replace mode a crawler the
    origin names in a group of its own is bound by that group, not by `*`
    (`for_token`).
    """

    def __init__(self, origin: RobotsRules | None, regions: PatternSet, mode: RobotsMode,
                 uses_robots: bool, notes: list[Note], token: str = "*",
                 who: str = "*") -> None:
        self.served = origin if mode is RobotsMode.MERGE else None
        self.origin = origin
        self.token = token
        self.regions = regions
        self._settings = (regions, mode, uses_robots)
        fold = origin is not None and (self.served is not None or uses_robots)
        star = list(origin.patterns_for(token)) if origin is not None and fold else []
        if len(star) > MAX_FOLDED:
            notes.append(Note(who, ROOT, f"the origin's {token!r} group has {len(star)} "
                              f"rules; only the first {MAX_FOLDED} are repeated in generated "
                              "groups", Limit.ORIGIN_CUT))
            star = star[:MAX_FOLDED]
        notes.extend(Note(who, p, "the origin's pattern has a wildcard: folded into "
                          "generated groups by a representative path", Limit.ORIGIN_WILDCARD)
                     for p in star if "*" in p)
        # pattern -> (its policy region, the origin's group disallows it)
        self.rules: dict[str, tuple[str, bool]] = {}
        for pattern in star:
            path = representative(pattern)
            assert origin is not None
            self.rules[pattern] = (regions.best(path) or ROOT,
                                   not origin.verdict(token, path).allowed)

    def for_token(self, crawler: Crawler, notes: list[Note]) -> _Folding:
        """The folding for a crawler the origin names itself (replace mode only)."""
        if self.origin is None or not self.origin.names(crawler.robots_token):
            return self
        regions, mode, uses_robots = self._settings
        return _Folding(self.origin, regions, mode, uses_robots, notes,
                        token=crawler.robots_token, who=crawler.name)

    def origin_disallows(self, pattern: str) -> bool:
        """The origin's verdict at a policy region's representative path."""
        found = self.rules.get(pattern)
        if found is not None:
            return found[1]
        return self.origin is not None and not self.origin.verdict(
            self.token, representative(pattern)).allowed


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
                          "robots.txt form; declared with the nearest wider pattern",
                          Limit.GLOB)
                     for p in patterns)
    return patterns


def _all_rules(policy: Policy) -> Iterable[Rule]:
    yield from policy.rules
    for section in policy.host_sections:
        yield from section.rules


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
    catalog: Sequence[Crawler], judged: dict[str, dict[str, tuple[Stance, Stance]]],
    vocab: Vocabularies, folding: _Folding, with_usage: bool,
    stated: dict[str, dict[str, bool]], site_words: dict[str, dict[str, bool]],
    public: Sequence[str], notes: list[Note],
) -> tuple[tuple[Group, ...], tuple[str, ...], tuple[str, ...]]:
    # Each crawler's group, written out only if kept, and whether it says more.
    candidates: list[tuple[str, Callable[[], Group], bool]] = []
    named: list[str] = []
    conflicts: list[str] = []
    served = folding.served
    star = folding
    for crawler in catalog:
        by_region = judged[crawler.name]
        if served is not None and served.names(crawler.robots_token):
            named.append(crawler.name)
            conflicts.extend(_conflicts(crawler, by_region, served, folding.regions))
            continue
        folding = star.for_token(crawler, notes)
        declared = _declared(by_region, folding, served is not None)
        # A group of its own where it says more than the origin's `*` rules do: a
        # Disallow of the policy's, a licence offered (its group names the licence),
        # or usage words other than the site-wide ones.
        adds = any(not allowed and not (served is not None and folding.origin_disallows(p))
                   for p, allowed in declared.items())
        offers = any(s[0].verdict is Verdict.LICENSE for s in by_region.values())
        words = _crawler_words(crawler, by_region, vocab, stated)
        # Served better than its purpose: the site-wide "n" is not what it gets.
        differs = with_usage and any(site_words[p][w] != v for p, ws in words.items()
                                     for w, v in ws.items())
        for path in public:
            # Served whatever the policy says: a crawler told where the licence is
            # must be allowed to read it, with or without a query.
            declared[path + "$"] = declared[_query_twin(path + "$")] = True
        usage = with_usage and bool(vocab.aipref.words_for(crawler.purpose))
        candidates.append((crawler.robots_token, partial(
            _group, crawler, declared, offers, words if usage else None),
            adds or offers or differs))
    agents = served.agents() if served is not None else ()
    groups = [write() for write in _for_substring_parsers(candidates, agents)]
    # Longest token first: a parser that takes the first group whose user agent is a
    # substring of the crawler's name then finds the crawler's own group first.
    ordered = sorted(groups, key=lambda g: (-len(g.token), g.token.lower()))
    return tuple(ordered), tuple(named), tuple(conflicts)


def _group(crawler: Crawler, declared: dict[str, bool], offers: bool,
           words: dict[str, dict[str, bool]] | None) -> Group:
    usage = _per_pattern({p: content_usage(ws.items()) for p, ws in words.items()}) \
        if words is not None else ()
    return Group(crawler.robots_token, crawler.name, _lines(declared), offers, usage)


def _declared(by_region: dict[str, tuple[Stance, Stance]], folding: _Folding,
              merged: bool) -> dict[str, bool]:
    """What a group says for every policy region and every folded origin rule: allowed
    where the origin allows it (merge mode) and the policy does not block."""
    def says(region: str, pattern: str) -> bool:
        barred = folding.origin_disallows(pattern)
        return not (merged and barred) and by_region[region][barred].verdict is not \
            Verdict.BLOCK

    declared: dict[str, bool] = {}
    for pattern in by_region:
        declared[pattern] = says(pattern, pattern)
    for pattern in by_region:
        # The policy ignores the query and robots.txt does not: `/a$` does not match
        # `/a?x`, `/a?*` does, with the origin's verdict for the path with a query.
        if pattern.endswith("$"):
            declared.setdefault(_query_twin(pattern), says(pattern, _query_twin(pattern)))
    for pattern, (region, barred) in folding.rules.items():
        stance = by_region[region][barred]
        declared.setdefault(pattern, not (merged and barred)
                            and stance.verdict is not Verdict.BLOCK)
    return declared


def _query_twin(pattern: str) -> str:
    # `P?*`, not `P?`: the same paths in RFC 9309, and `urllib.robotparser`, which
    # drops a final `?` and would read `P?` as the prefix `P`, never matches it.
    return pattern[:-1] + "?*"


def _for_substring_parsers(candidates: Sequence[tuple[str, _V, bool]],
                           origin_agents: Iterable[str]) -> list[_V]:
    """Of (token, group, says more than `*`), the groups to write: those that say more,
    and those of crawlers whose token contains the user agent of a written group
    (`Baiduspider`, `Spider`).

    RFC 9309 gives a crawler without a group of its own the `*` group, but
    `urllib.robotparser` and `robotexclusionrulesparser` take the first group whose
    user agent is a substring of the crawler's name: without a group of its own,
    Baiduspider would read Spider's. An explicit group repeats what `*` says for it.
    """
    written = set(origin_agents)
    keep = [needed for _, _, needed in candidates]
    written.update(token.lower() for (token, _, _), kept in zip(candidates, keep, strict=True)
                   if kept)
    changed = True
    while changed:  # a group added for one crawler can shadow another's name
        changed = False
        for index, (name, _, _) in enumerate(candidates):
            token = name.lower()
            if not keep[index] and any(agent != token and agent in token for agent in written):
                keep[index] = changed = True
                written.add(token)
    return [group for (_, group, _), kept in zip(candidates, keep, strict=True) if kept]


def _lines(declared: dict[str, bool]) -> tuple[Line, ...]:
    # Longest first: parsers that take the first match (Python's robotparser, the
    # classic ones) then agree with RFC 9309's longest match on plain prefixes.
    # Allow first among patterns of one length, as RFC 9309 settles a tie.
    ordered = sorted(_pruned(declared).items(),
                     key=lambda item: (-len(item[0]), not item[1], item[0]))
    return tuple(Line(allowed, pattern) for pattern, allowed in ordered)


def _pruned(values: dict[str, _V]) -> dict[str, _V]:
    """The patterns whose value differs from the pattern that decides when they are gone.

    Without a pattern, its region falls to the longest shorter pattern that is a prefix
    of it (its parent); with the same value there, the pattern says nothing. Exact
    when no pattern has a `*` before its end (a wildcard could match in between), so
    then nothing is pruned; a final `*` adds nothing to a prefix.
    """
    if any("*" in _literal(pattern) for pattern in values):
        return values
    prefixes: dict[str, list[str]] = {}  # the prefix patterns by their text
    for pattern in values:
        if not pattern.endswith("$"):
            prefixes.setdefault(_literal(pattern), []).append(pattern)
    # Only lengths some prefix has: long exact paths would otherwise cost a slice and
    # a lookup per character of each.
    lengths = sorted({len(text) for text in prefixes}, reverse=True)
    out = {}
    for pattern, value in values.items():
        literal = _literal(pattern)
        parent = None
        # The prefixes of its text, longest first: one lookup each, not one per pattern.
        for end in lengths:
            if end > len(literal):
                continue
            found = [p for p in prefixes.get(literal[:end], ())
                     if p != pattern and len(p) < len(pattern)]
            if found:
                parent = max(found, key=len)
                break
        if parent is None or values[parent] != value:
            out[pattern] = value
    return out


def _literal(pattern: str) -> str:
    """A pattern's text without its final `$` or final `*`."""
    return pattern[:-1] if pattern.endswith(("$", "*")) else pattern


def _conflicts(crawler: Crawler, by_region: dict[str, tuple[Stance, Stance]],
               origin: RobotsRules, regions: PatternSet) -> list[str]:
    """Where the origin's group for the crawler and the policy disagree: at each policy
    region, and at each of the group's own patterns, placed in its region."""
    token = crawler.robots_token
    places = {pattern: pattern for pattern in by_region}
    for pattern in origin.patterns_for(token)[:MAX_FOLDED]:
        places.setdefault(pattern, regions.best(representative(pattern)) or ROOT)
    out = []
    for pattern, region in places.items():
        verdict = origin.verdict(token, representative(pattern))
        stance = by_region[region][not verdict.allowed]
        if stance.verdict is Verdict.BLOCK and verdict.allowed:
            out.append(f"{crawler.robots_token}: the origin's robots.txt allows {pattern} "
                       f"({verdict.rule or 'no rule'}) but the policy blocks it (rule "
                       f"{stance.rule!r}); the origin's group is served")
        elif not verdict.allowed and stance.verdict is not Verdict.BLOCK and \
                stance.rule != "enforce-robots-txt" and not stance.rule.startswith("owner:"):
            out.append(f"{crawler.robots_token}: the origin's robots.txt disallows {pattern} "
                       f"({verdict.rule}) but the policy serves it (rule {stance.rule!r})")
    return out


def _crawler_words(crawler: Crawler, by_region: dict[str, tuple[Stance, Stance]],
                   vocab: Vocabularies,
                   stated: dict[str, dict[str, bool]]) -> dict[str, dict[str, bool]]:
    words = vocab.aipref.words_for(crawler.purpose)
    return {p: {w: not s[0].verdict.refused and stated[p].get(w, True) for w in words}
            for p, s in by_region.items()}


def _per_pattern(values: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Usage statements per pattern, each `P$` with its twin `P?*` (see `_declared`)."""
    values = values | {_query_twin(p): v for p, v in values.items()
                       if p.endswith("$") and _query_twin(p) not in values}
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


def _licensed(regions: dict[str, dict[str, Stance]], patterns: Iterable[str]) -> set[str]:
    """The regions where the policy asks some crawler, of whatever purpose, for a
    licence: the RSL document offers one for what is served there, which is what
    `Link: rel="license"` says, as the crawler's robots.txt group says `License:`."""
    return {pattern for pattern in patterns
            if any(by_region[pattern].verdict is Verdict.LICENSE
                   for by_region in regions.values())}


def _headers(usage: dict[str, str], tdm: list[TdmRule], licensed: set[str], with_usage: bool,
             with_tdm: bool) -> dict[str, RegionHeaders]:
    out: dict[str, RegionHeaders] = {}
    for rule in tdm:
        headers: list[tuple[str, str]] = []
        if with_usage:
            headers.append(("Content-Usage", usage[rule.location]))
        if with_tdm:
            headers.append(("tdm-reservation", "1" if rule.reserved else "0"))
        out[rule.location] = RegionHeaders(tuple(headers), rule.policy,
                                           rule.location in licensed)
    return out


def _licence_headers(rsl_url: str, terms_url: str) -> tuple[tuple[str, str], ...]:
    out = []
    if terms_url:
        out.append(("tdm-policy", terms_url))
    if rsl_url:
        out.append(("Link", f'<{rsl_url}>; rel="license"; type="{RSL_MEDIA_TYPE}"'))
    return tuple(out)
