"""What is declared is what is enforced: for every catalog crawler and many paths,
the served robots.txt (as parsed, by RFC 9309 and by the classic first-match
parsers), the Content-Usage preferences, the Content-Signal line, the TDMRep file
and the response headers agree with the action the policy takes.

Each (crawler, path) pair is either checked or skipped with a stated reason, and
every reason is one of the limits docs/declarations.md lists under "What cannot
be declared exactly" (`DOCUMENTED_LIMITS`, compared with that section below).
The public documents are not skipped: every generated group must allow them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import cached_property
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.catalog import Crawler
from gatekeeper.core.declarations import Limit, Plan, glob_patterns, plan, public_paths
from gatekeeper.core.declarations import representative as representative_path
from gatekeeper.core.model import Policy, RobotsMode
from gatekeeper.core.owners import NO_OWNERS
from gatekeeper.core.robots import RobotsRules
from gatekeeper.core.robots_txt import render_robots
from gatekeeper.core.stance import Verdict, robots_conditioned, stance_of
from gatekeeper.core.tdmrep import render_tdmrep
from gatekeeper.policy.loader import load_default_policy, load_policy_file, load_policy_text
from gatekeeper.vocabulary_loader import load_vocabularies
from tests.support.declared import (
    ClassicReaders,
    DeclaredRobots,
    parse_signal,
    parse_usage,
    tdm_first_match,
)

ROOT = Path(__file__).resolve().parents[3]
CATALOG = load_catalog()
VOCAB = load_vocabularies()
HOST = "example.com"
RSL = "https://example.com/license.xml"
TERMS = "https://example.com/.well-known/gatekeeper/licenses"

# The skip reasons: the bold titles of the bullets of docs/declarations.md, "What
# cannot be declared exactly".
RATE = "Rate limits"
HEADERS = "Rules that depend on request headers"
GLOBS = "Globs with `*` or `?` inside a segment"
ORIGIN_WILDCARD = "The origin's own patterns with `*`"
ORIGIN_DISALLOW = "The origin's own Disallow lines"
ORIGIN_GROUP = "A crawler the origin names itself"
DOCUMENTED_LIMITS = frozenset({RATE, HEADERS, GLOBS, ORIGIN_WILDCARD, ORIGIN_DISALLOW,
                               ORIGIN_GROUP})
# Notes that make a region's robots.txt lines inexact (rate limits and header
# conditions are exact in robots.txt terms, and judged by the stance).
INEXACT = frozenset({Limit.GLOB, Limit.ORIGIN_WILDCARD, Limit.ORIGIN_CUT})

SEGMENTS = ["premium", "free", "a", "b", "x", "private", "press", ".well-known", "robots.txt",
            "1.html", "news", "license.xml", "tdmrep.json", "jwks.json"]
paths = st.builds(
    lambda parts, slash, query: "/" + "/".join(parts) + ("/" if slash and parts else "") + query,
    st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=3), st.booleans(),
    st.sampled_from(["", "", "?x=1", "?a=b&c"]),
)
ORIGINS = [
    None,
    "User-agent: *\nDisallow: /private/\nAllow: /private/press/\n",
    "User-agent: *\nDisallow: /private/\n\nUser-agent: GPTBot\nAllow: /\n",
    "Sitemap: https://example.com/s.xml\nUser-agent: Googlebot\nDisallow: /news/\n\n"
    "User-agent: bingbot\n",
    "User-agent: *\nDisallow: /a\n",
    "User-agent: *\nDisallow: /*.html$\nDisallow: /news/\nAllow: /news/free\n",
]
# Origins whose own groups the first-match parsers read as RFC 9309 does (no `*`,
# no `$`, no Allow under a shorter Disallow); with the others only the generated
# groups are compared.
CLASSIC_SAFE = {ORIGINS[0], ORIGINS[2], ORIGINS[3], ORIGINS[4]}


class Declared:
    """Everything one policy declares for one origin file, parsed back; `compliance`:
    whether the gate reads the origin's file (`robots_compliance`), and so has a
    robots.txt verdict to give `robots:` conditions."""

    def __init__(self, policy: Policy, origin_text: str | None, compliance: bool = True,
                 ) -> None:
        self.policy = policy
        self.origin_text = origin_text
        self.compliance = compliance
        self.origin = RobotsRules.parse(origin_text.encode()) if origin_text else None
        self.plan: Plan = plan(policy, CATALOG, VOCAB, host=HOST, origin=self.origin,
                               robots_compliance=compliance)
        merged = self.origin is not None and self.plan.mode is RobotsMode.MERGE
        doc = render_robots(self.plan, origin_text=self.origin.text if merged and self.origin
                            else None, license_url=RSL,
                            offers_licences=any(lic.usages for lic in policy.licenses))
        self.text = doc.text
        self.robots = RobotsRules.parse(doc.text.encode())
        self.lines = DeclaredRobots.parse(doc.text)
        self.tdmrep = render_tdmrep(self.plan, TERMS)
        self.public = public_paths(policy)
        self.inexact = {(n.crawler, n.pattern): n.limit for n in self.plan.notes
                        if n.limit in INEXACT}

    def origin_disallows(self, crawler: Crawler, url: str) -> bool:
        return self.origin is not None and not self.origin.verdict(
            crawler.robots_token, url).allowed

    def gate_verdict(self, disallowed: bool) -> bool | None:
        """The robots.txt verdict the gate passes to the policy: none without compliance."""
        return disallowed if self.compliance else None

    def judge(self, crawler: Crawler, url: str) -> str:
        """Assert agreement for one pair; "checked", "public", or "skip: <limit>"."""
        path = url.partition("?")[0]
        token = crawler.robots_token
        declared = self.robots.verdict(token, url)
        if path in self.public:
            # Served whatever the policy says: every generated group allows it.
            assert declared.allowed or (self.plan.group_for(crawler.name) is None
                                        and self.origin_disallows(crawler, url)), (token, url)
            return "public"
        if self.origin is not None and "*" in self.origin.verdict(token, url).rule:
            return f"skip: {ORIGIN_WILDCARD}"
        region = self.plan.regions.best(path) or "/"
        limit = self.inexact.get((crawler.name, region)) or self.inexact.get(("*", region))
        if "*" in region or limit is Limit.GLOB:
            return f"skip: {GLOBS}"
        if limit is not None:  # more origin `*` rules than are folded
            return f"skip: {ORIGIN_WILDCARD}"
        origin_says_no = self.origin_disallows(crawler, url)
        stance = stance_of(self.policy, NO_OWNERS, crawler, path, HOST,
                           self.gate_verdict(origin_says_no))
        if stance.conditional:
            return f"skip: {HEADERS}"
        named = crawler.name in self.plan.origin_named
        reported = any(c.startswith(token + ":") for c in self.plan.conflicts)
        if stance.verdict is Verdict.BLOCK:
            if named and declared.allowed:
                assert reported, (token, url)
                return f"skip: {ORIGIN_GROUP}"
            assert not declared.allowed, (crawler.name, url, stance, self.text[:2000])
        elif not declared.allowed:
            # Stricter than enforced: only the origin's own Disallow may say so.
            assert origin_says_no, (crawler.name, url, stance, declared)
            if named:
                assert reported or stance.rule == "enforce-robots-txt", (token, url)
                return f"skip: {ORIGIN_GROUP}"
            return f"skip: {ORIGIN_DISALLOW}"
        if stance.verdict is Verdict.LICENSE and not named:
            assert RSL in self.lines.licence_for(token), crawler.name
        if not named and self.policy.declarations.content_usage:
            # Preferences state the policy's own stance; the origin's Disallow lines
            # are declared by its robots.txt.
            own = stance_of(self.policy, NO_OWNERS, crawler, path, HOST,
                            self.gate_verdict(False))
            usage = self.lines.usage(token, url)
            stated = self._stated(path)
            for word in VOCAB.aipref.words_for(crawler.purpose):
                expected = not own.verdict.refused and stated.get(word, True)
                assert usage.get(word) == expected, (crawler.name, url, word, usage, stance)
        if stance.verdict is Verdict.LIMIT:
            return f"skip: {RATE}"
        return "checked"

    def classic(self, crawler: Crawler, url: str, *, unless_grouped: bool = False) -> None:
        """The first-match parsers read the crawler's verdict as RFC 9309 does
        (`unless_grouped`: only for a crawler with a generated group)."""
        grouped = self.plan.group_for(crawler.name) is not None
        if (grouped or not unless_grouped) and (grouped or self.origin_text in CLASSIC_SAFE):
            self._readers.assert_agree(crawler.robots_token, url)

    @cached_property
    def _readers(self) -> ClassicReaders:
        return ClassicReaders(self.text)

    def site_wide(self, url: str) -> str:
        """Headers and TDMRep for `url` against every catalog crawler's stance."""
        path = url.partition("?")[0]
        if path in self.public:
            return "public"  # answered by Gatekeeper: no declaration headers
        region = self.plan.regions.best(path) or "/"
        if "*" in region or any(p == region and limit is Limit.GLOB
                                for (_, p), limit in self.inexact.items()):
            return f"skip: {GLOBS}"
        stances = [(c, stance_of(self.policy, NO_OWNERS, c, path, HOST,
                                 self.gate_verdict(False)))
                   for c in CATALOG]
        if any(s.conditional for _, s in stances):
            return f"skip: {HEADERS}"
        headers = dict(self.plan.headers_for(path, RSL, TERMS))
        reserved = any(s.verdict.refused for c, s in stances
                       if c.purpose in VOCAB.tdm_reserved_by)
        offered = any(s.verdict is Verdict.LICENSE for c, s in stances
                      if c.purpose in VOCAB.tdm_reserved_by)
        stated_no = not all(self._stated(path).values())
        if self.policy.declarations.tdmrep:
            assert headers["tdm-reservation"] == ("1" if reserved or stated_no else "0")
            rule = tdm_first_match(self.tdmrep, path)
            assert rule is not None
            assert rule["tdm-reservation"] == int(headers["tdm-reservation"])
            assert ("tdm-policy" in rule) == (offered and (reserved or stated_no)), (path, rule)
            assert rule.get("tdm-policy", TERMS) == headers.get("tdm-policy", TERMS) == TERMS
        if self.policy.declarations.content_usage:
            usage = parse_usage(headers["Content-Usage"])
            for word, purposes in VOCAB.aipref.words:
                refused = any(s.verdict.refused for c, s in stances if c.purpose in purposes)
                expected = not refused and self._stated(path).get(word, True)
                assert usage[word] == expected, (path, word, usage)
                assert self.lines.usage("*", url)[word] == expected
        return "checked"

    def signal(self) -> str:
        """The served Content-Signal line: a word is "no" exactly when the policy refuses
        one of its purposes on some region, or a stated preference says "n" for it."""
        if not self.policy.declarations.content_usage:
            assert self.lines.signals == []
            return "off"
        assert len(self.lines.signals) == 1, self.lines.signals
        served = parse_signal(self.lines.signals[0])
        regions = self._regions()
        for word, purposes in VOCAB.content_signals.words:
            refused = any(stance_of(self.policy, NO_OWNERS, c, representative_path(r), HOST,
                                    self.gate_verdict(False)).verdict.refused
                          for c in CATALOG if c.purpose in purposes for r in regions)
            stated_no = any(not allowed and VOCAB.purposes_of(stated) & purposes
                            for statement in self.policy.declarations.usage
                            for stated, allowed in statement.words)
            assert served[word] is not (refused or stated_no), (word, served)
        return "checked"

    def _regions(self) -> set[str]:
        """Every pattern of every glob of the policy, found here, not in the plan."""
        rules = [*self.policy.rules, *(r for s in self.policy.host_sections for r in s.rules)]
        globs = [g for rule in rules for g in rule.match.paths or ()]
        globs += [g for s in self.policy.declarations.usage for g in s.paths]
        return {"/"} | {p for g in globs for p in glob_patterns(g.text)[0]}

    def _stated(self, path: str) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for statement in self.policy.declarations.usage:
            if any(p.match(path) for p in statement.paths):
                for word, allowed in statement.words:
                    out[word] = out.get(word, True) and allowed
        return out


def _record(outcome: str) -> None:
    assert outcome in ("checked", "public") or outcome.startswith("skip: "), outcome
    if outcome.startswith("skip: "):
        assert outcome.removeprefix("skip: ") in DOCUMENTED_LIMITS, outcome
        event(outcome)


def _shipped() -> list[tuple[str, Policy]]:
    policies = [("default", load_default_policy(CATALOG))]
    for file in sorted((ROOT / "policies" / "examples").glob("*.yaml")):
        policies.append((file.stem, load_policy_file(file, CATALOG)))
    return policies


SHIPPED = _shipped()
# `robots:` conditions both ways, where the rest of the policy refuses: with compliance
# off the gate has no verdict and they never match, and neither may the declarations.
ROBOTS_CONDITIONED = [
    ("robots-allowed-or-block", load_policy_text(
        "version: 1\ndefault: block\nrules:\n"
        "  - {name: served, match: {crawlers: [GPTBot], robots: allowed}, action: allow}\n"
        "  - {name: searched, match: {purposes: [search-engine], robots: allowed}, "
        "action: allow}\n", "robots-allowed.yaml", CATALOG)),
    ("robots-disallowed-allows", load_policy_text(
        "version: 1\ndeclarations: {robots_txt: replace}\nrules:\n"
        "  - {name: kept, match: {crawlers: [ClaudeBot], robots: disallowed}, "
        "action: allow}\n"
        "  - {name: no-training, match: {purposes: [ai-training]}, action: block}\n"
        "  - {name: barred, match: {kinds: [crawler], robots: disallowed}, action: block}\n",
        "robots-disallowed.yaml", CATALOG)),
]
SAMPLES = ["/", "/premium/x", "/premium", "/free/a", "/private/press/x", "/private/y",
           "/news/1", "/a", "/a/b", "/.well-known/security.txt", "/x/y/z/", "/a?x=1",
           "/premium?x", "/robots.txt", "/license.xml", "/.well-known/tdmrep.json"]


def test_the_documented_limits_are_the_ones_the_docs_list() -> None:
    text = (ROOT / "docs" / "declarations.md").read_text(encoding="utf-8")
    section = text.split("## What cannot be declared exactly", 1)[1].split("\n## ", 1)[0]
    titles = {m.rstrip(".") for m in re.findall(r"^- \*\*(.+?)\*\*", section, re.MULTILINE)}
    assert titles >= DOCUMENTED_LIMITS, DOCUMENTED_LIMITS - titles


@pytest.mark.parametrize("compliance", [True, False],
                         ids=["robots-compliance", "no-robots-compliance"])
@pytest.mark.parametrize("origin", ORIGINS, ids=lambda o: "no-origin" if o is None
                         else json.dumps(o)[:30])
@pytest.mark.parametrize(("name", "policy"), SHIPPED + ROBOTS_CONDITIONED,
                         ids=[n for n, _ in SHIPPED + ROBOTS_CONDITIONED])
def test_shipped_and_robots_conditioned_policies_declare_what_they_enforce(
        name: str, policy: Policy, origin: str | None, compliance: bool) -> None:
    declared = Declared(policy, origin, compliance)
    outcomes: Counter[str] = Counter()
    samples = SAMPLES
    for path in samples:
        outcomes[declared.site_wide(path)] += 1
        for crawler in CATALOG:
            outcomes[declared.judge(crawler, path)] += 1
            declared.classic(crawler, path)
    assert declared.signal() == "checked"
    assert outcomes["checked"] > len(CATALOG) * len(samples) // 3, outcomes
    for outcome in outcomes:
        assert outcome in ("checked", "public") or \
            outcome.removeprefix("skip: ") in DOCUMENTED_LIMITS, outcome
    assert len(declared.text.encode()) < 500 * 1024


# -- generated policies -------------------------------------------------------------------

GLOBS_DRAWN = ["/premium/**", "/free/**", "/premium/free/**", "/a", "/{a,b}/x/**", "/news/**",
               "/news/*.html", "/.well-known/**", "/license.xml", "/a/**"]
# Names that nest as robots tokens (Spider in Baiduspider, Googlebot in
# Googlebot-Image, Code in Claude-Code) and the usual suspects.
CRAWLERS = ["GPTBot", "ClaudeBot", "Googlebot", "Googlebot-Image", "PerplexityBot",
            "ChatGPT-User", "Bingbot", "Spider", "Baiduspider", "Code", "Claude-Code"]
PURPOSES = ["ai-training", "ai-search", "ai-assistant", "search-engine", "seo"]
ACTIONS = ["allow", "block", "monitor", "{require_license: {any_of: [train]}}",
           "{rate_limit: {rate: 10/min, burst: 5}}"]
HEADER_CONDITIONS = [{"X-Tier": "present"}, {"Accept-Language": "absent"}]


def test_the_drawn_crawler_names_are_in_the_catalog() -> None:
    assert set(CRAWLERS) <= {c.name for c in CATALOG}


# Host sections, drawn by `policies(hosts=True)`: the first whose globs match the
# host is the one tried, so overlapping lists test the order too.
SECTION_HOSTS = [["blog.example.com"], ["*.example.com"], ["*.shop.example", "example.com"]]


@st.composite
def rule_lines(draw: st.DrawFn, prefix: str = "r", indent: str = "  ") -> list[str]:
    """A list of rules as YAML list items."""
    rules = []
    for i in range(draw(st.integers(1, 6))):
        match: dict[str, object] = {}
        if draw(st.booleans()):
            match["paths"] = draw(st.lists(st.sampled_from(GLOBS_DRAWN), min_size=1,
                                           max_size=2, unique=True))
        who = draw(st.sampled_from(["crawlers", "purposes", "none"]))
        if who == "crawlers":
            match["crawlers"] = draw(st.lists(st.sampled_from(CRAWLERS), min_size=1,
                                              max_size=2, unique=True))
        elif who == "purposes":
            match["purposes"] = draw(st.lists(st.sampled_from(PURPOSES), min_size=1,
                                              max_size=2, unique=True))
        if draw(st.integers(0, 5)) == 0:
            match["headers"] = draw(st.sampled_from(HEADER_CONDITIONS))
        if draw(st.integers(0, 3)) == 0:
            # As the default policy has it, or as a further condition of the rule.
            robots = draw(st.sampled_from(["disallowed", "allowed"]))
            match = {"kinds": ["crawler"], "robots": robots} if draw(st.booleans()) \
                else match | {"robots": robots}
        action = draw(st.sampled_from(ACTIONS))
        rules.append(f"{indent}- name: {prefix}{i}\n{indent}  match: {json.dumps(match)}\n"
                     f"{indent}  action: {action}\n")
    return rules


@st.composite
def policies(draw: st.DrawFn, hosts: bool = False) -> str:
    rules = draw(rule_lines())
    sections = ""
    if hosts:
        for index in range(draw(st.integers(0, 2))):
            sections += (f"  - hosts: {json.dumps(draw(st.sampled_from(SECTION_HOSTS)))}\n"
                         "    rules:\n" + "".join(draw(rule_lines(f"h{index}r", "      "))))
    default = draw(st.sampled_from(["allow", "block"]))
    usage = ""
    if draw(st.booleans()):
        glob = draw(st.sampled_from(GLOBS_DRAWN))
        value = draw(st.sampled_from(["y", "n"]))
        word = draw(st.sampled_from(["train-ai", "search"]))
        usage = f"  usage:\n    - {{paths: [\"{glob}\"], {word}: {value}}}\n"
    mode = draw(st.sampled_from(["merge", "replace"]))
    return ("version: 1\ndefault: " + default + "\n"
            "licenses:\n  - {name: train, usages: [ai-train]}\n"
            f"declarations:\n  robots_txt: {mode}\n{usage}"
            "rules:\n" + "".join(rules) + (f"hosts:\n{sections}" if sections else ""))


# Every catalog crawler on every path: about a third of a second per example, twice
# for a policy with a `robots:` rule.
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(hosts=True), st.sampled_from(ORIGINS),
       st.lists(paths, min_size=3, max_size=5))
def test_generated_policies_declare_what_they_enforce(text: str, origin: str | None,
                                                      sample: list[str]) -> None:
    policy = load_policy_text(text, "generated.yaml", CATALOG)
    # Without a `robots:` rule, robots.txt compliance changes nothing the policy does.
    for compliance in (True, False) if robots_conditioned(policy) else (True,):
        declared = Declared(policy, origin, compliance)
        for index, path in enumerate(sample):
            _record(declared.site_wide(path))
            for crawler in CATALOG:
                _record(declared.judge(crawler, path))
                # The classic parsers read the whole catalog once, then the groups: a
                # crawler without one reads the origin's `*` group in every parser.
                declared.classic(crawler, path, unless_grouped=index > 0)
        declared.signal()
