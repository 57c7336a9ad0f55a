"""Reading declarations back the way a crawler would, for tests.

A crawler does not see a `Plan`: it reads robots.txt, the `Content-Usage` and
`tdm-*` headers and tdmrep.json. These helpers parse those texts (robots.txt with
the RFC 9309 matcher and with the classic first-match parsers, `Content-Usage`
lines by the aipref attachment rules, `Content-Signal` and headers as RFC 9651
dictionaries, TDMRep by first match) so tests compare what is declared, as
parsed, with what the gate enforces.
"""

from __future__ import annotations

import json
import re
import urllib.robotparser
from dataclasses import dataclass, field

import http_sf
import robotexclusionrulesparser

from gatekeeper.core.robots import PatternSet, RobotsRules

_LINE = re.compile(r"\r\n|\r|\n")


@dataclass
class _Group:
    agents: list[str]
    usage: list[tuple[str, str]] = field(default_factory=list)  # (pattern, preference)
    licences: list[str] = field(default_factory=list)


@dataclass
class DeclaredRobots:
    """The non-rule lines of a robots.txt: Content-Usage, Content-Signal, License."""

    groups: list[_Group]
    global_licences: list[str]
    signals: list[str]

    @classmethod
    def parse(cls, text: str) -> DeclaredRobots:
        groups: list[_Group] = []
        global_licences: list[str] = []
        signals: list[str] = []
        current: _Group | None = None
        in_rules = False
        for raw in _LINE.split(text):
            line = raw.split("#", 1)[0]
            name, colon, value = line.partition(":")
            if not colon:
                continue
            name, value = name.strip().lower(), value.strip()
            if name == "user-agent":
                if current is None or in_rules:
                    current = _Group([])
                    groups.append(current)
                    in_rules = False
                current.agents.append(value.lower())
            elif name in ("allow", "disallow"):
                in_rules = True
            elif name == "license":
                (current.licences if current is not None else global_licences).append(value)
            elif name == "content-signal":
                signals.append(value)
            elif name == "content-usage" and current is not None:
                # draft-ietf-aipref-attach: an optional path before the preference.
                if value.startswith("/"):
                    path, _, preference = value.partition(" ")
                    current.usage.append((path, preference.strip()))
                else:
                    current.usage.append(("/", value))
        return cls(groups, global_licences, signals)

    def groups_for(self, token: str) -> list[_Group]:
        token = token.lower()
        own = [g for g in self.groups if token in g.agents]
        return own or [g for g in self.groups if "*" in g.agents]

    def usage(self, token: str, path: str) -> dict[str, bool]:
        """The aipref preferences for the crawler on `path` (longest match; "n" wins
        between rules of the same pattern)."""
        rules = [rule for g in self.groups_for(token) for rule in g.usage]
        best = PatternSet(p for p, _ in rules).best(path)
        out: dict[str, bool] = {}
        for pattern, preference in rules:
            if pattern == best:
                for word, allowed in parse_usage(preference).items():
                    out[word] = out.get(word, True) and allowed
        return out

    def licence_for(self, token: str) -> list[str]:
        scoped = [url for g in self.groups_for(token) for url in g.licences]
        return scoped or self.global_licences


def parse_usage(value: str) -> dict[str, bool]:
    """An aipref Content-Usage value (RFC 9651 Dictionary of y/n tokens)."""
    parsed = http_sf.parse(value.encode(), tltype="dictionary")
    out = {}
    for word, (item, _params) in parsed.items():
        token = str(item)
        assert token in ("y", "n"), f"{word}={token!r} is not y or n"
        out[word] = token == "y"
    return out


def parse_signal(value: str) -> dict[str, bool]:
    """A Content Signals statement (`search=yes, ai-train=no`)."""
    parsed = http_sf.parse(value.encode(), tltype="dictionary")
    out = {}
    for word, (item, _params) in parsed.items():
        token = str(item)
        assert token in ("yes", "no"), f"{word}={token!r} is not yes or no"
        out[word] = token == "yes"
    return out


class ClassicReaders:
    """robots.txt as Python's `urllib.robotparser` and `robotexclusionrulesparser`
    read it: the first group whose user agent is a substring of the crawler's name,
    the first rule in it that matches. `urllib.robotparser` knows no `*` or `$`."""

    def __init__(self, text: str) -> None:
        self.rfc9309 = RobotsRules.parse(text.encode())
        self._rep = robotexclusionrulesparser.RobotExclusionRulesParser()
        self._rep.parse(text)
        self._stdlib = urllib.robotparser.RobotFileParser()
        self._stdlib.parse(text.splitlines())

    def assert_agree(self, token: str, path: str) -> bool:
        """Both read `path` for `token` as RFC 9309 does; the verdict."""
        verdict = self.rfc9309.verdict(token, path)
        assert self._rep.is_allowed(token, path) is verdict.allowed, (
            "robotexclusionrulesparser", token, path, verdict)
        pattern = verdict.rule.partition(": ")[2]
        # RFC 9309 always allows /robots.txt; the served `Allow: /robots.txt$` says so
        # to the parsers that read `$`.
        robots_txt = path == "/robots.txt" or path.startswith("/robots.txt?")
        if "*" not in pattern and "$" not in pattern and not robots_txt:
            assert self._stdlib.can_fetch(token, path) is verdict.allowed, (
                "urllib.robotparser", token, path, verdict)
        return verdict.allowed


def tdm_first_match(document: bytes, path: str) -> dict[str, object] | None:
    """The TDMRep rule an agent applies to `path`: the first whose location matches."""
    for rule in json.loads(document):
        if PatternSet([rule["location"]]).best(path) is not None:
            return dict(rule)
    return None
