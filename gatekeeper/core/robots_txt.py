"""The robots.txt Gatekeeper serves, written from a declarations `Plan`.

Layout, chosen so that every RFC 9309 parser (and the older first-match ones)
reads the origin's rules as the origin wrote them:

1. A comment saying what the file is, and a global `License:` line (RSL) when
   the policy offers licences.
2. The generated groups (`gatekeeper.core.declarations`), longest user agent
   first. They come first so that a parser's size limit (RFC 9309 §2.5: at least
   500 KiB) can only cut the origin's part, never a refusal.
3. The origin's file as it was (merge mode), with the site-wide `Content-Usage:`
   and `Content-Signal:` lines inserted right after the user-agent lines of its
   first `*` group. Non-rule lines do not end a group (RFC 9309 §2.2.4), so the
   insertion changes no Allow or Disallow.
4. Without an origin `*` group, a `*` group of its own carries those lines, with
   an empty `Disallow:` (a rule that matches nothing) so that it is a complete
   group and no later user-agent line can join it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from gatekeeper.core.declarations import ROOT, Group, Plan
from gatekeeper.core.robots import PARSE_LIMIT

_LINE: Final = re.compile(r"[^\r\n]*(?:\r\n|\r|\n|$)")
_ORIGIN_HEAD: Final = "# The site's own robots.txt:\n"
_CUT: Final = ("# (the origin's robots.txt continues; cut here to keep this file within the "
               "500 KiB parsers read)\n")
_HEADER: Final = ("# robots.txt served by Gatekeeper: the site's own rules and the groups "
                  "its access policy\n# declares. See the licence terms for licensed use.\n")


@dataclass(frozen=True, slots=True)
class RobotsDocument:
    text: str
    # The origin's part was cut to keep the file within the parsing limit.
    truncated: bool


def render_robots(plan: Plan, *, origin_text: str | None, license_url: str,
                  offers_licences: bool, limit: int = PARSE_LIMIT) -> RobotsDocument:
    """The served robots.txt; `origin_text` is the origin's file (None: none or not
    served), `license_url` the absolute URL of the RSL document."""
    head = [_HEADER]
    if offers_licences and license_url:
        head.append(f"License: {license_url}\n")
    head.append("\n")
    for group in plan.groups:
        head.append(_group(group, license_url))
    usage = _usage_lines(plan)
    generated = "".join(head)
    body, inserted = _with_usage(origin_text or "", usage)
    tail = ""
    if usage and not inserted:
        tail = "User-agent: *\n" + "".join(usage) + "Disallow:\n"
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
    return RobotsDocument("".join(parts), truncated)


def _group(group: Group, license_url: str) -> str:
    lines = [f"User-agent: {group.token}\n"]
    lines.extend(f"{'Allow' if line.allow else 'Disallow'}: {line.pattern}\n"
                 for line in group.lines)
    if group.license and license_url:
        lines.append(f"License: {license_url}\n")
    lines.extend(usage_line(pattern, value) for pattern, value in group.usage)
    lines.append("\n")
    return "".join(lines)


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


def _with_usage(text: str, usage: list[str]) -> tuple[str, bool]:
    """`text` with `usage` after the user-agent lines of its first `*` group."""
    if not usage or not text:
        return text, False
    lines = _LINE.findall(text)
    star = None
    for index, line in enumerate(lines):
        name, colon, value = line.split("#", 1)[0].partition(":")
        if colon and name.strip().lower() == "user-agent" and value.strip() == "*":
            star = index
            break
    if star is None:
        return text, False
    end = star + 1
    while end < len(lines):
        name, colon, _ = lines[end].split("#", 1)[0].partition(":")
        if not (colon and name.strip().lower() == "user-agent"):
            break
        end += 1
    before = "".join(lines[:end])
    if not before.endswith(("\n", "\r")):
        before += "\n"
    return before + "".join(usage) + "".join(lines[end:]), True
