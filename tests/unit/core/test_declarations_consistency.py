"""What is declared is what is enforced: for every catalog crawler and many paths,
the served robots.txt (as parsed), the Content-Usage preferences, the TDMRep file
and the response headers agree with the action the policy takes.

Each (crawler, path) pair is either checked or skipped with a stated reason; the
reasons are the limits docs/declarations.md lists (a rate limit has no
declaration; a rule conditioned on request headers; a glob with no exact
robots.txt form; the origin's own Disallow the policy does not enforce; an
origin group that names the crawler and disagrees, reported as a conflict).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.catalog import Crawler
from gatekeeper.core.declarations import Plan, plan
from gatekeeper.core.model import Policy, RobotsMode
from gatekeeper.core.owners import NO_OWNERS
from gatekeeper.core.robots import RobotsRules
from gatekeeper.core.robots_txt import render_robots
from gatekeeper.core.stance import Verdict, stance_of
from gatekeeper.core.tdmrep import render_tdmrep
from gatekeeper.policy.loader import load_default_policy, load_policy_file, load_policy_text
from gatekeeper.vocabulary_loader import load_vocabularies
from tests.support.declared import DeclaredRobots, parse_usage, tdm_first_match

ROOT = Path(__file__).resolve().parents[3]
CATALOG = load_catalog()
VOCAB = load_vocabularies()
HOST = "example.com"
RSL = "https://example.com/license.xml"
PUBLIC = ("/robots.txt", "/.well-known/tdmrep.json", "/license.xml")

SEGMENTS = ["premium", "free", "a", "b", "x", "private", "press", ".well-known", "robots.txt",
            "1.html",
            "news", "license.xml"]
paths = st.builds(
    lambda parts, slash: "/" + "/".join(parts) + ("/" if slash and parts else ""),
    st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=3), st.booleans(),
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


class Declared:
    """Everything one policy declares for one origin file, parsed back."""

    def __init__(self, policy: Policy, origin_text: str | None) -> None:
        self.policy = policy
        self.origin = RobotsRules.parse(origin_text.encode()) if origin_text else None
        self.plan: Plan = plan(policy, CATALOG, VOCAB, host=HOST, origin=self.origin)
        merged = self.origin is not None and self.plan.mode is RobotsMode.MERGE
        doc = render_robots(self.plan, origin_text=self.origin.text if merged and self.origin
                            else None, license_url=RSL,
                            offers_licences=any(lic.usages for lic in policy.licenses))
        self.text = doc.text
        self.robots = RobotsRules.parse(doc.text.encode())
        self.lines = DeclaredRobots.parse(doc.text)
        self.tdmrep = render_tdmrep(self.plan, RSL)
        self.inexact = {(n.crawler, n.pattern) for n in self.plan.notes}

    def origin_disallows(self, crawler: Crawler, path: str) -> bool:
        return self.origin is not None and not self.origin.verdict(
            crawler.robots_token, path).allowed

    def judge(self, crawler: Crawler, path: str) -> str:
        """Assert agreement for one pair; the result names the check or the skip."""
        if path in PUBLIC:
            return "skip: a public document, never gated"
        if self.origin is not None and "*" in self.origin.verdict(crawler.robots_token,
                                                                  path).rule:
            return "skip: decided by an origin pattern with a wildcard"
        region = self.plan.regions.best(path) or "/"
        if "*" in region or (crawler.name, region) in self.inexact \
                or ("*", region) in self.inexact:
            return "skip: no exact robots.txt form"
        origin_says_no = self.origin_disallows(crawler, path)
        stance = stance_of(self.policy, NO_OWNERS, crawler, path, HOST, origin_says_no)
        if stance.conditional:
            return "skip: rule depends on request headers"
        declared = self.robots.verdict(crawler.robots_token, path)
        named = crawler.name in self.plan.origin_named
        if stance.verdict is Verdict.BLOCK:
            if named and declared.allowed:
                assert any(c.startswith(crawler.robots_token + ":") for c in self.plan.conflicts)
                return "skip: conflict with the origin's own group, reported"
            assert not declared.allowed, (crawler.name, path, stance, self.text[:2000])
        elif not declared.allowed:
            # Stricter than enforced: only the origin's own Disallow may say so.
            assert origin_says_no or named, (crawler.name, path, stance, declared)
            return "skip: the origin's own Disallow, not enforced by the policy here"
        if stance.verdict is Verdict.LICENSE and not named:
            assert RSL in self.lines.licence_for(crawler.robots_token), crawler.name
        if not named and self.policy.declarations.content_usage:
            # Preferences state the policy's own stance; the origin's Disallow lines
            # are declared by its robots.txt.
            own = stance_of(self.policy, NO_OWNERS, crawler, path, HOST, False)
            words = VOCAB.aipref.words_for(crawler.purpose)
            usage = self.lines.usage(crawler.robots_token, path)
            stated = self._stated(path)
            for word in words:
                expected = not own.verdict.refused and stated.get(word, True)
                assert usage.get(word) == expected, (crawler.name, path, word, usage, stance)
        if stance.verdict is Verdict.LIMIT:
            return "skip: a rate limit has no declaration (robots.txt says Allow)"
        return "checked"

    def site_wide(self, path: str) -> str:
        """Headers and TDMRep for `path` against every catalog crawler's stance."""
        if path in PUBLIC:
            return "skip: public document"
        region = self.plan.regions.best(path) or "/"
        if "*" in region or any(p == region for _, p in self.inexact):
            return "skip: no exact robots.txt form"
        stances = [(c, stance_of(self.policy, NO_OWNERS, c, path, HOST, False))
                   for c in CATALOG]
        if any(s.conditional for _, s in stances):
            return "skip: rule depends on request headers"
        headers = dict(self.plan.headers_for(path, RSL))
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
        if self.policy.declarations.content_usage:
            usage = parse_usage(headers["Content-Usage"])
            for word, purposes in VOCAB.aipref.words:
                refused = any(s.verdict.refused for c, s in stances if c.purpose in purposes)
                expected = not refused and self._stated(path).get(word, True)
                assert usage[word] == expected, (path, word, usage)
                assert self.lines.usage("*", path)[word] == expected
        return "checked"

    def _stated(self, path: str) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for statement in self.policy.declarations.usage:
            if any(p.match(path) for p in statement.paths):
                for word, allowed in statement.words:
                    out[word] = out.get(word, True) and allowed
        return out


def _shipped() -> list[tuple[str, Policy]]:
    policies = [("default", load_default_policy(CATALOG))]
    for file in sorted((ROOT / "policies" / "examples").glob("*.yaml")):
        policies.append((file.stem, load_policy_file(file, CATALOG)))
    return policies


SHIPPED = _shipped()


@pytest.mark.parametrize("origin", ORIGINS, ids=lambda o: "no-origin" if o is None
                         else json.dumps(o)[:30])
@pytest.mark.parametrize(("name", "policy"), SHIPPED, ids=[n for n, _ in SHIPPED])
def test_shipped_policies_declare_what_they_enforce(name: str, policy: Policy,
                                                    origin: str | None) -> None:
    declared = Declared(policy, origin)
    outcomes: Counter[str] = Counter()
    samples = ["/", "/premium/x", "/premium", "/free/a", "/private/press/x", "/private/y",
               "/news/1", "/a", "/a/b", "/.well-known/security.txt", "/x/y/z/"]
    for path in samples:
        outcomes[declared.site_wide(path)] += 1
        for crawler in CATALOG:
            outcomes[declared.judge(crawler, path)] += 1
    assert outcomes["checked"] > len(CATALOG) * len(samples) // 3, outcomes
    assert all(k == "checked" or k.startswith("skip: ") for k in outcomes)
    assert len(declared.text.encode()) < 500 * 1024


# -- generated policies -------------------------------------------------------------------

GLOBS = ["/premium/**", "/free/**", "/premium/free/**", "/a", "/{a,b}/x/**", "/news/**",
         "/news/*.html",
         "/.well-known/**"]
CRAWLERS = ["GPTBot", "ClaudeBot", "Googlebot", "PerplexityBot", "ChatGPT-User", "bingbot"]
PURPOSES = ["ai-training", "ai-search", "ai-assistant", "search-engine", "seo"]
ACTIONS = ["allow", "block", "monitor", "{require_license: {any_of: [train]}}",
           "{rate_limit: {rate: 10/min, burst: 5}}"]


@st.composite
def policies(draw: st.DrawFn) -> str:
    rules = []
    for i in range(draw(st.integers(1, 6))):
        match = {}
        if draw(st.booleans()):
            match["paths"] = draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2,
                                           unique=True))
        who = draw(st.sampled_from(["crawlers", "purposes", "none"]))
        if who == "crawlers":
            match["crawlers"] = draw(st.lists(st.sampled_from(CRAWLERS), min_size=1,
                                              max_size=2, unique=True))
        elif who == "purposes":
            match["purposes"] = draw(st.lists(st.sampled_from(PURPOSES), min_size=1,
                                              max_size=2, unique=True))
        if draw(st.integers(0, 5)) == 0:
            match = {"kinds": ["crawler"], "robots": "disallowed"}
        action = draw(st.sampled_from(ACTIONS))
        rules.append(f"  - name: r{i}\n    match: {json.dumps(match)}\n    action: {action}\n")
    default = draw(st.sampled_from(["allow", "block"]))
    usage = ""
    if draw(st.booleans()):
        glob = draw(st.sampled_from(GLOBS))
        value = draw(st.sampled_from(["y", "n"]))
        usage = f"  usage:\n    - {{paths: [\"{glob}\"], train-ai: {value}}}\n"
    mode = draw(st.sampled_from(["merge", "replace"]))
    return ("version: 1\ndefault: " + default + "\n"
            "licenses:\n  - {name: train, usages: [ai-train]}\n"
            f"declarations:\n  robots_txt: {mode}\n{usage}"
            "rules:\n" + "".join(rules))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), st.sampled_from(ORIGINS), st.lists(paths, min_size=3, max_size=6))
def test_generated_policies_declare_what_they_enforce(text: str, origin: str | None,
                                                      sample: list[str]) -> None:
    policy = load_policy_text(text, "generated.yaml", CATALOG)
    declared = Declared(policy, origin)
    crawlers = [c for c in CATALOG if c.name in CRAWLERS] + list(CATALOG)[::25]
    for path in sample:
        assert declared.site_wide(path) in ("checked",) or declared.site_wide(path).startswith(
            "skip: ")
        for crawler in crawlers:
            outcome = declared.judge(crawler, path)
            assert outcome == "checked" or outcome.startswith("skip: ")
