"""The robots.txt Gatekeeper serves, written from a declarations `Plan`.

Layout, chosen so that every RFC 9309 parser (and the older first-match ones)
reads the origin's rules as the origin wrote them:

1. A comment saying what the file is, and a global `License:` line (RSL) when
   the policy offers licences.
2. The generated groups (`gatekeeper.core.declarations`). Crawlers whose lines
   are identical share one group, one `User-agent:` line each (RFC 9309 §2.1):
   written once per crawler, a policy with many exact paths would repeat them in
   a hundred groups and outgrow what parsers read. They come first so that a
   parser's size limit (RFC 9309 §2.5: at least 500 KiB) can only cut the
   origin's part, never a refusal; `RobotsDocument.over_limit` says when the
   generated part alone is longer.
3. The origin's file as it was (merge mode), with the site-wide `Content-Usage:`
   and `Content-Signal:` lines inserted right after the user-agent lines of its
   first `*` group. Non-rule lines do not end a group (RFC 9309 §2.2.4), so the
   insertion changes no Allow or Disallow. The origin's own site-wide usage lines
   (in a `*` group or before any group) give way to a comment: two statements
   there would contradict each other, and the policy's says what is enforced.
   Where the origin's said otherwise, `RobotsDocument.usage_conflicts` says so.
   Usage lines of groups naming particular crawlers stay with those groups.
4. Without an origin `*` group, a `*` group of its own carries those lines, with
   an empty `Disallow:` (a rule that matches nothing) so that it is a complete
   group and no later user-agent line can join it.

The order of the generated groups: `urllib.robotparser` and
`robotexclusionrulesparser` take the first group in the file with a user agent
that is a substring of the crawler's name. So a group is written before every
group holding a token contained in the token of one of its crawlers (a
topological order, ties kept in the plan's longest-token-first order). Where
merged groups would each have to come first (one holds `Spider` and
`Bytespider`, the other `Baiduspider` and `Spider-X`), their crawlers keep
groups of their own: alone, a group need only precede groups of shorter tokens.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from gatekeeper.core.catalog import OTHER_BOT, UNDECLARED_BOT, UNKNOWN, Classification
from gatekeeper.core.declarations import ROOT, Group, Plan, representative
from gatekeeper.core.evaluate import can_match, on_any_request
from gatekeeper.core.facts import Identity
from gatekeeper.core.model import Policy, Rule
from gatekeeper.core.robots import PARSE_LIMIT, PatternSet
from gatekeeper.core.stance import verdict_of

_LINE: Final = re.compile(r"[^\r\n]*(?:\r\n|\r|\n|$)")
_ORIGIN_HEAD: Final = "# The site's own robots.txt:\n"
_CUT: Final = ("# (the origin's robots.txt continues; cut here to keep this file within the "
               "500 KiB parsers read)\n")
_HEADER: Final = ("# robots.txt served by Gatekeeper: the site's own rules and the groups "
                  "its access policy\n# declares. See the licence terms for licensed use.\n")
_USAGE_NAMES: Final = {"content-usage": "Content-Usage", "content-signal": "Content-Signal"}
# Clients outside the catalog: they read the `*` group, which states no refusal.
_OUTSIDE: Final = (OTHER_BOT, UNDECLARED_BOT, UNKNOWN)


@dataclass(frozen=True, slots=True)
class RobotsDocument:
    text: str
    # The origin's part was cut to keep the file within the parsing limit.
    truncated: bool
    # Bytes of the policy's part: the comment, the generated groups and a `*` group
    # of its own.
    generated_size: int = 0
    # The policy's part alone is longer than the parsing limit: a parser stops before
    # its last groups and reads those crawlers as allowed where the gate refuses them.
    # The file is served all the same; serving code should log it.
    over_limit: bool = False
    # Where the origin's site-wide Content-Usage / Content-Signal lines, replaced by
    # the policy's, said otherwise (merge mode).
    usage_conflicts: tuple[str, ...] = ()


def render_robots(plan: Plan, *, origin_text: str | None, license_url: str,
                  offers_licences: bool, limit: int = PARSE_LIMIT) -> RobotsDocument:
    """The served robots.txt; `origin_text` is the origin's file (None: none or not
    served), `license_url` the absolute URL of the RSL document."""
    head = [_HEADER]
    if offers_licences and license_url:
        head.append(f"License: {license_url}\n")
    head.append("\n")
    head.extend(_written_groups(plan.groups, license_url))
    usage = _usage_lines(plan)
    generated = "".join(head)
    body, inserted, conflicts = _origin_part(origin_text or "", usage, plan)
    tail = ""
    if usage and not inserted:
        tail = "User-agent: *\n" + "".join(usage) + "Disallow:\n"
    own = len((generated + tail).encode())
    framing = len((generated + tail + _ORIGIN_HEAD + "\n" + _CUT).encode()) + 1
    room = limit - framing
    truncated = False
    encoded = body.encode()
    if len(encoded) > room:
        cut = encoded[:max(room, 0)]
        cut = cut[: max(cut.rfind(b"\n"), cut.rfind(b"\r")) + 1]
        body = cut.decode(errors="ignore") + _CUT
        truncated = True
    if body and not body.endswith(("\n", "\r")):
        body += "\n"
    parts = [generated]
    if body:
        parts.append(_ORIGIN_HEAD + body + "\n")
    if tail:
        parts.append(tail)
    return RobotsDocument("".join(parts), truncated, own, own > limit, conflicts)


# -- generated groups -------------------------------------------------------------------


def _written_groups(groups: Sequence[Group], license_url: str) -> list[str]:
    """The groups as written: crawlers with identical lines share one."""
    bodies = [_rules(group, license_url) for group in groups]
    return ["".join(f"User-agent: {groups[i].token}\n" for i in members) + bodies[members[0]]
            for members in _shared(groups, bodies)]


def _rules(group: Group, license_url: str) -> str:
    lines = [f"{'Allow' if line.allow else 'Disallow'}: {line.pattern}\n"
             for line in group.lines]
    if group.license and license_url:
        lines.append(f"License: {license_url}\n")
    lines.extend(usage_line(pattern, value) for pattern, value in group.usage)
    lines.append("\n")
    return "".join(lines)


def _shared(groups: Sequence[Group], bodies: Sequence[str]) -> list[list[int]]:
    """Indices into `groups`, one list per written group, in file order."""
    inside = _contained([group.token.lower() for group in groups])
    by_body: dict[str, list[int]] = {}
    for index, body in enumerate(bodies):
        by_body.setdefault(body, []).append(index)
    sets = list(by_body.values())
    while True:
        before = _precedence(sets, inside)
        cyclic = _on_cycles(before)
        if not cyclic:
            return [sets[k] for k in _topological(sets, before)]
        # Each crawler of those keeps a group of its own. Singletons need only precede
        # groups of strictly shorter tokens, so the loop ends.
        sets = [s for k, s in enumerate(sets) if k not in cyclic] + \
            [[index] for k in sorted(cyclic) for index in sets[k]]


def _contained(tokens: Sequence[str]) -> list[list[int]]:
    """Per token, the other tokens inside it: a substring parser would read their
    groups for its crawler if they came first. Equal tokens (which no catalog has)
    are left out: no order serves both."""
    return [[j for j, other in enumerate(tokens) if other != token and other in token]
            for token in tokens]


def _precedence(sets: Sequence[list[int]], inside: Sequence[list[int]]) -> list[set[int]]:
    """Per written group, the written groups it must precede."""
    where = {index: k for k, members in enumerate(sets) for index in members}
    before: list[set[int]] = [set() for _ in sets]
    for k, members in enumerate(sets):
        for index in members:
            before[k].update(where[j] for j in inside[index] if where[j] != k)
    return before


def _on_cycles(before: Sequence[set[int]]) -> set[int]:
    cyclic = set()
    for start in range(len(before)):
        seen: set[int] = set()
        stack = list(before[start])
        while stack:
            node = stack.pop()
            if node == start:
                cyclic.add(start)
                break
            if node not in seen:
                seen.add(node)
                stack.extend(before[node])
    return cyclic


def _topological(sets: Sequence[list[int]], before: Sequence[set[int]]) -> list[int]:
    """Kahn's order; among groups free to go next, the one the plan lists first."""
    waiting = [0] * len(sets)
    for targets in before:
        for target in targets:
            waiting[target] += 1
    ready = [(sets[k][0], k) for k in range(len(sets)) if not waiting[k]]
    heapq.heapify(ready)
    order = []
    while ready:
        _, k = heapq.heappop(ready)
        order.append(k)
        for target in before[k]:
            waiting[target] -= 1
            if not waiting[target]:
                heapq.heappush(ready, (sets[target][0], target))
    return order


# -- usage lines ------------------------------------------------------------------------


def _usage_lines(plan: Plan) -> list[str]:
    lines = [usage_line(pattern, value) for pattern, value in plan.usage]
    if plan.signal:
        lines.append(f"Content-Signal: {plan.signal}\n")
    return lines


def usage_line(pattern: str, value: str) -> str:
    """A `Content-Usage:` line (draft-ietf-aipref-attach: an optional path, then the
    preference)."""
    if pattern == ROOT:
        return f"Content-Usage: {value}\n"
    return f"Content-Usage: {pattern} {value}\n"


def _origin_part(text: str, usage: list[str],
                 plan: Plan) -> tuple[str, bool, tuple[str, ...]]:
    """`text` with its site-wide usage lines replaced and `usage` after the
    user-agent lines of its first `*` group; whether it has one; where the replaced
    lines disagreed with the policy's."""
    if not usage or not text:
        return text, False, ()
    lines = _LINE.findall(text)
    conflicts = _replace_usage(lines, plan)
    star = None
    for index, line in enumerate(lines):
        name, value = _directive(line)
        if name == "user-agent" and value == "*":
            star = index
            break
    if star is None:
        return "".join(lines), False, conflicts
    end = star + 1
    while end < len(lines) and _directive(lines[end])[0] == "user-agent":
        end += 1
    before = "".join(lines[:end])
    if not before.endswith(("\n", "\r")):
        before += "\n"
    return before + "".join(usage) + "".join(lines[end:]), True, conflicts


def _directive(line: str) -> tuple[str, str]:
    """A line's lower-cased name and its value, without the comment; ("", "") for
    a line that is no directive."""
    name, colon, value = line.split("#", 1)[0].partition(":")
    return (name.strip().lower(), value.strip()) if colon else ("", "")


def _replace_usage(lines: list[str], plan: Plan) -> tuple[str, ...]:
    """Replace, in place, the site-wide usage lines of the origin with a comment."""
    conflicts = []
    regions = PatternSet(pattern for pattern, _ in plan.usage)
    for index, site_wide in enumerate(_site_wide(lines)):
        name, value = _directive(lines[index])
        label = _USAGE_NAMES.get(name)
        if not site_wide or label is None:
            continue
        line = lines[index]
        ending = line[len(line.rstrip("\r\n")):]
        lines[index] = f"# (a {label} line of the site's, replaced by the policy's){ending}"
        conflict = _disagreement(label, value, plan, regions)
        if conflict:
            conflicts.append(conflict)
    return tuple(conflicts)


def _site_wide(lines: Iterable[str]) -> list[bool]:
    """Per line: before any group, or in a group naming `*` (RFC 9309 §2.1: user-agent
    lines after a rule start a new group; other lines never end one)."""
    group_of = []
    agents: list[list[str]] = []
    in_rules = False
    for line in lines:
        name, value = _directive(line)
        if name == "user-agent":
            if not agents or in_rules:
                agents.append([])
                in_rules = False
            agents[-1].append(value)
        elif name in ("allow", "disallow"):
            in_rules = True
        group_of.append(len(agents) - 1)
    return [group < 0 or "*" in agents[group] for group in group_of]


def _disagreement(label: str, value: str, plan: Plan, regions: PatternSet) -> str:
    if label == "Content-Signal":
        ours = f"Content-Signal: {plan.signal}"
        theirs, policy = _words(value), _words(plan.signal)
    else:
        # draft-ietf-aipref-attach: an optional path, then the preference.
        path, preference = ROOT, value
        parts = value.split(None, 1)
        if len(parts) == 2 and parts[0].startswith("/"):
            path, preference = parts
        region = regions.best(representative(path)) or ROOT
        statement = dict(plan.usage).get(region, "")
        ours = usage_line(region, statement).strip()
        theirs, policy = _words(preference), _words(statement)
    differ = [word for word, said in theirs.items() if policy.get(word, said) != said]
    if not differ:
        return ""
    return (f"the origin's robots.txt says `{label}: {value}` where the policy declares "
            f"`{ours}` ({', '.join(differ)} {'differs' if len(differ) == 1 else 'differ'}); "
            "the policy's line is served")


def _words(statement: str) -> dict[str, str]:
    """`search=yes, ai-train=no` as {word: value}, read leniently: the origin's file
    is anyone's text, and only words both sides state are compared."""
    out = {}
    for member in statement.split(","):
        word, equals, said = member.partition("=")
        if equals:
            out[word.strip().lower()] = said.split(";", 1)[0].strip().lower()
    return out


# -- what the `*` group cannot say ------------------------------------------------------


def unstated_refusals(policy: Policy) -> tuple[str, ...]:
    """The rules (and the default) that refuse clients outside the catalog: robots.txt
    gives generated groups to catalog crawlers only, and the `*` group those clients
    read states no refusal. Rules a client outside the catalog can never reach (after
    a rule that serves it on every path and host) are left out."""
    refusing: dict[str, list[str]] = {}
    for cls in _OUTSIDE:
        for section in policy.host_sections:
            _refusals(section.rules, cls, refusing)
        if _refusals(policy.rules, cls, refusing) and verdict_of(policy.default).refused:
            refusing.setdefault("default", []).append(cls.kind.value)
    return tuple(f"{'the default' if name == 'default' else f'rule {name!r}'} refuses "
                 f"clients outside the catalog ({', '.join(kinds)})"
                 for name, kinds in refusing.items())


def _refusals(rules: Iterable[Rule], cls: Classification,
              refusing: dict[str, list[str]]) -> bool:
    """Record the refusing rules `cls` can reach; whether it can get past them all."""
    for rule in rules:
        if not can_match(rule.match, cls, Identity.UNKNOWN):
            continue
        if verdict_of(rule.action).refused:
            refusing.setdefault(rule.name, []).append(cls.kind.value)
        if on_any_request(rule.match):
            return False
    return True
