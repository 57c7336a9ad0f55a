"""An origin's robots.txt, parsed once and asked per request (RFC 9309).

`RobotsRules.parse(body)` reads the file; `rules.verdict(token, path)` says
whether a crawler with that product token may fetch the path, and which line
decided. The semantics, all from RFC 9309:

- Only the first 500 KiB are parsed (§2.5). When the file is cut, the
  partial last line is dropped: half a `Disallow` line would forbid more than
  the whole one does. A UTF-8 byte order mark, or the start of one, is skipped.
- Lines end at CR, LF or CRLF; `#` starts a comment; directive names are
  case-insensitive. Only `user-agent`, `allow` and `disallow` are read; any
  other line (Sitemap, Crawl-delay, typos, garbage) is skipped and does not
  end a group (§2.2.4). Rules before the first `user-agent` line belong to no
  group and are ignored.
- Consecutive `user-agent` lines share the rules that follow them (§2.1).
  Every group naming the crawler's token is merged; the `*` groups apply only
  when none does; with neither, everything is allowed (§2.2.1). A line names a
  token when, case-insensitively, its whole value is the token or the value's
  leading product-token characters (`[A-Za-z_-]`) are: `GPTBot/1.0` and
  `GPTBot` both name `GPTBot`. The whole-value comparison is for catalog
  tokens that are not RFC product tokens (`MJ12bot`, `archive.org_bot`).
- The rule with the longest pattern that matches wins, and an `allow` wins a
  tie (§2.2.2). `*` matches any sequence and a final `$` ends the pattern
  (§2.2.3). An empty pattern matches nothing. `/robots.txt` is always allowed.
- Patterns and paths are compared in one normal form (§2.2.2): escapes of
  unreserved characters decoded, other escapes upper-cased, and non-ASCII
  and characters outside RFC 3986 pchar percent-encoded. A literal `$` or `*`
  in a path equals `%24` or `%2A` in a pattern. The gate's canonical paths are
  nearly in this form already; most pass one regex check and are used as is.

Cost: `parse` is linear in the file. The first verdict for a token selects and
merges its groups and indexes their rules (O(r log r) for r rules); the index
is cached per token. A verdict then normalises the path (one regex scan),
looks the path's prefixes up in a dict of the plain patterns (one lookup per
distinct pattern length, longest first), and tries only the wildcard patterns
that could still beat that match, longest first, with one `str.find` per `*`
segment. A few microseconds for a typical file; O(r x len(path)) at worst.
No regular expression is built from the file, so no pattern can make
matching backtrack.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

PARSE_LIMIT: Final = 500 * 1024  # RFC 9309 §2.5: a parsing limit of at least 500 KiB

_BOM: Final = b"\xef\xbb\xbf"
_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
# RFC 9309 §2.2.1: a product token is made of these characters.
_TOKEN_PREFIX: Final = re.compile(r"[A-Za-z_-]*")
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters kept as they are: pchar, "/" and "?", minus "$" and "*", which patterns
# use as operators and which a path therefore holds only in escaped form.
_PLAIN: Final = re.compile(r"[A-Za-z0-9\-._~!&'()+,;=:@/?]*")
_TO_NORMALISE: Final = re.compile(r"%[0-9A-Fa-f]{2}|[^A-Za-z0-9\-._~!&'()+,;=:@/?]")
# Verdict caches hold one entry per product token; catalogs have a few hundred.
_MAX_CACHED_TOKENS: Final = 1024


@dataclass(frozen=True, slots=True)
class RobotsVerdict:
    """What robots.txt says about one path for one crawler."""

    allowed: bool
    # The deciding line, "Disallow: /private/", or "" when no rule matched.
    rule: str
    # The user-agent value of the group that applied, "*", or "" when none did.
    group: str


@dataclass(frozen=True, slots=True)
class _Rule:
    allow: bool
    text: str  # the line as an operator reads it in a log
    segments: tuple[str, ...]  # normalised pattern split at "*"
    anchored: bool  # the pattern ends with "$"
    priority: int  # octets of the normalised pattern, operators included

    @property
    def plain(self) -> bool:
        """A prefix without operators: matched by dict lookup, not by `matches`."""
        return len(self.segments) == 1 and not self.anchored

    @property
    def rank(self) -> tuple[int, bool]:
        # RFC 9309 §2.2.2: the longest match wins, and allow wins a tie.
        return (self.priority, self.allow)

    def matches(self, path: str) -> bool:
        segments = self.segments
        first = segments[0]
        if not path.startswith(first):
            return False
        if len(segments) == 1:  # anchored, no "*"
            return len(path) == len(first)
        pos = len(first)
        # Leftmost placement of each middle segment leaves the most room for the rest,
        # so a greedy scan decides "*" patterns without backtracking.
        for segment in segments[1:-1]:
            found = path.find(segment, pos)
            if found < 0:
                return False
            pos = found + len(segment)
        last = segments[-1]
        if self.anchored:
            return path.endswith(last) and len(path) - len(last) >= pos
        return path.find(last, pos) >= 0


@dataclass(frozen=True, slots=True)
class _Group:
    agents: tuple[str, ...]  # user-agent values as written
    rules: tuple[_Rule, ...]


@dataclass(frozen=True, slots=True)
class _Choice:
    group: str
    plain: dict[str, _Rule]  # normalised pattern -> rule (allow kept on a tie)
    lengths: tuple[int, ...]  # distinct lengths of the plain patterns, longest first
    wildcards: tuple[_Rule, ...]  # longest first, allow before disallow on a tie

    def best(self, path: str) -> _Rule | None:
        best = None
        size = len(path)
        for length in self.lengths:
            if length <= size:
                best = self.plain.get(path[:length])
                if best is not None:
                    break
        for rule in self.wildcards:
            if best is not None and rule.rank <= best.rank:
                break  # sorted: no later wildcard can win either
            if rule.matches(path):
                return rule
        return best


class RobotsRules:
    """The rules of one robots.txt file; build it with `parse`, `allow_all` or
    `disallow_all`. Immutable apart from its per-token cache."""

    __slots__ = ("_by_token", "_cache", "_global", "_groups", "source", "text", "truncated")

    def __init__(self, groups: tuple[_Group, ...], *, source: str, truncated: bool,
                 text: str = "") -> None:
        self._groups = groups
        # The file as parsed (decoded, cut at the parsing limit), for serving it again.
        self.text = text
        # "parsed", or "allow-all" / "disallow-all" for the RFC 9309 §2.3.1 fallbacks.
        self.source = source
        self.truncated = truncated  # the body was longer than PARSE_LIMIT
        self._by_token: dict[str, list[int]] = {}
        self._global: list[int] = []
        for index, group in enumerate(groups):
            for agent in group.agents:
                if _is_global(agent):
                    self._global.append(index)
                    continue
                names = {agent.lower()}
                prefix = _TOKEN_PREFIX.match(agent)
                if prefix and prefix.group():
                    names.add(prefix.group().lower())
                for name in names:
                    self._by_token.setdefault(name, []).append(index)
        self._cache: dict[str, _Choice] = {}

    @classmethod
    def parse(cls, body: bytes) -> RobotsRules:
        """Parse a robots.txt body; never fails, as RFC 9309 §2.2 asks."""
        truncated = len(body) > PARSE_LIMIT
        if truncated:
            body = body[:PARSE_LIMIT]
            if body[-1:] not in (b"\n", b"\r"):
                body = body[: max(body.rfind(b"\n"), body.rfind(b"\r")) + 1]
        for size in (3, 2, 1):
            if body[:size] == _BOM[:size]:
                body = body[size:]
                break
        text = body.decode("utf-8", errors="replace")
        return cls(_parse_groups(text), source="parsed", truncated=truncated, text=text)

    @classmethod
    def allow_all(cls) -> RobotsRules:
        """No rules: robots.txt answered 4xx ("unavailable", RFC 9309 §2.3.1.3)."""
        return cls((), source="allow-all", truncated=False)

    @classmethod
    def disallow_all(cls) -> RobotsRules:
        """`Disallow: /` for everyone: robots.txt was unreachable (§2.3.1.4)."""
        rule = _compile_rule(False, "/")
        assert rule is not None
        return cls((_Group(("*",), (rule,)),), source="disallow-all", truncated=False)

    def verdict(self, robots_token: str, path: str) -> RobotsVerdict:
        """May the crawler with this product token fetch `path` (canonical path + query)?"""
        choice = self._choose(robots_token)
        if path == "/robots.txt" or path.startswith("/robots.txt?"):
            return RobotsVerdict(True, "", choice.group)
        if choice.lengths or choice.wildcards:
            normal = path if _PLAIN.fullmatch(path) else _normalise(path)
            rule = choice.best(normal)
            if rule is not None:
                return RobotsVerdict(rule.allow, rule.text, choice.group)
        return RobotsVerdict(True, "", choice.group)

    def names(self, robots_token: str) -> bool:
        """Whether a group names this product token itself (not only `*`)."""
        key = robots_token.lower()
        return bool(key) and key != "*" and key in self._by_token

    def agents(self) -> tuple[str, ...]:
        """The user agents the groups name, lower case, in file order; `*` left out."""
        return tuple(dict.fromkeys(agent.lower() for group in self._groups
                                   for agent in group.agents if agent and not _is_global(agent)))

    def global_patterns(self) -> tuple[str, ...]:
        """The Allow and Disallow patterns of the `*` groups, in file order."""
        return self.patterns_for("*")

    def patterns_for(self, robots_token: str) -> tuple[str, ...]:
        """The Allow and Disallow patterns of the groups that apply to `robots_token`."""
        key = robots_token.lower()
        indexes = self._by_token.get(key) if key and key != "*" else None
        return tuple(dict.fromkeys(rule.text.partition(": ")[2]
                                   for index in (indexes or self._global)
                                   for rule in self._groups[index].rules))

    def _choose(self, robots_token: str) -> _Choice:
        key = robots_token.lower()
        choice = self._cache.get(key)
        if choice is not None:
            return choice
        indexes = self._by_token.get(key) if key and key != "*" else None
        if indexes:
            group = _agent_naming(self._groups[indexes[0]], key)
        elif self._global:
            indexes, group = self._global, "*"
        else:
            indexes, group = [], ""
        rules = [rule for index in dict.fromkeys(indexes) for rule in self._groups[index].rules]
        choice = _index(group, rules)
        if len(self._cache) >= _MAX_CACHED_TOKENS:
            self._cache.clear()
        self._cache[key] = choice
        return choice


class PatternSet:
    """Which of some RFC 9309 path patterns is the most specific match for a path.

    The same longest-match rule as `RobotsRules.verdict`, over bare patterns: the
    declarations use it to find the region of the policy a path falls in.
    """

    __slots__ = ("_choice", "_names")

    def __init__(self, patterns: Iterable[str]) -> None:
        rules: list[_Rule] = []
        self._names: dict[int, str] = {}
        for pattern in dict.fromkeys(patterns):
            rule = _compile_rule(True, pattern)
            if rule is not None:
                rules.append(rule)
                self._names[id(rule)] = pattern
        self._choice = _index("", rules)

    def best(self, path: str) -> str | None:
        """The matching pattern with the most octets, or None when none matches."""
        normal = path if _PLAIN.fullmatch(path) else _normalise(path)
        rule = self._choice.best(normal)
        return None if rule is None else self._names[id(rule)]


def _index(group: str, rules: Iterable[_Rule]) -> _Choice:
    plain: dict[str, _Rule] = {}
    wild: list[_Rule] = []
    for rule in rules:
        if rule.plain:
            known = plain.get(rule.segments[0])
            if known is None or (rule.allow and not known.allow):
                plain[rule.segments[0]] = rule
        else:
            wild.append(rule)
    wildcards = sorted(wild, key=lambda rule: rule.rank, reverse=True)
    lengths = tuple(sorted({len(pattern) for pattern in plain}, reverse=True))
    return _Choice(group, plain, lengths, tuple(wildcards))


def _is_global(agent: str) -> bool:
    """`*`, alone or followed by other text after a space (read as `*`)."""
    return agent == "*" or (agent.startswith("*") and agent[1:2].isspace())


def _agent_naming(group: _Group, key: str) -> str:
    for agent in group.agents:
        prefix = _TOKEN_PREFIX.match(agent)
        if agent.lower() == key or (prefix is not None and prefix.group().lower() == key):
            return agent
    return group.agents[0]


def _parse_groups(text: str) -> tuple[_Group, ...]:
    groups: list[_Group] = []
    agents: list[str] = []
    rules: list[_Rule] = []
    in_rules = False  # a rule line has followed the current user-agent lines
    for line in _LINE_BREAK.split(text):
        line = line.split("#", 1)[0]
        name, colon, value = line.partition(":")
        if not colon:
            continue
        name = name.strip().lower()
        value = value.strip()
        if name == "user-agent":
            if in_rules:
                groups.append(_Group(tuple(agents), tuple(rules)))
                agents, rules, in_rules = [], [], False
            agents.append(value)
        elif name in ("allow", "disallow") and agents:
            in_rules = True
            rule = _compile_rule(name == "allow", value)
            if rule is not None:
                rules.append(rule)
    if agents:
        groups.append(_Group(tuple(agents), tuple(rules)))
    return tuple(groups)


def _compile_rule(allow: bool, value: str) -> _Rule | None:
    if not value:
        return None  # RFC 9309 §2.2.2: an empty pattern matches nothing
    anchored = value.endswith("$")
    body = value[:-1] if anchored else value
    segments = tuple(_normalise(part) for part in body.split("*"))
    priority = sum(len(segment) for segment in segments) + len(segments) - 1 + anchored
    text = f"{'Allow' if allow else 'Disallow'}: {value}"
    return _Rule(allow, text, segments, anchored, priority)


def _normalise(text: str) -> str:
    return _TO_NORMALISE.sub(_normal_form, text)


def _normal_form(match: re.Match[str]) -> str:
    found = match.group()
    if len(found) == 3:  # "%XX"
        char = chr(int(found[1:], 16))
        return char if char in _UNRESERVED else found.upper()
    return "".join(f"%{byte:02X}" for byte in found.encode("utf-8", "surrogatepass"))
