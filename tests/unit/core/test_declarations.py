"""The declarations of particular policies: groups, lines, headers and documents."""

from __future__ import annotations

import json
import urllib.robotparser
from decimal import Decimal

import http_sf
import pytest
import robotexclusionrulesparser

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.declarations import Plan, glob_patterns, plan, representative
from gatekeeper.core.globs import compile_path_glob
from gatekeeper.core.model import Policy
from gatekeeper.core.owners import Owner, Owners, Stance
from gatekeeper.core.robots import PARSE_LIMIT, RobotsRules
from gatekeeper.core.robots_txt import render_robots
from gatekeeper.core.tdmrep import render_tdmrep
from gatekeeper.policy.loader import load_default_policy, load_policy_text
from gatekeeper.vocabulary_loader import load_vocabularies
from tests.support.declared import DeclaredRobots, parse_usage, tdm_first_match

CATALOG = load_catalog()
VOCAB = load_vocabularies()
RSL = "https://example.com/license.xml"
GPTBOT = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2)"


def _policy(text: str) -> Policy:
    return load_policy_text("version: 1\n" + text, "test.yaml", CATALOG)


def _robots(policy: Policy, origin: str | None = None, owners: Owners | None = None,
            ) -> tuple[Plan, str]:
    rules = RobotsRules.parse(origin.encode()) if origin is not None else None
    found = plan(policy, CATALOG, VOCAB, host="example.com", origin=rules,
                 owners=owners or Owners())
    served = rules.text if rules is not None and found.mode.value == "merge" else None
    doc = render_robots(found, origin_text=served, license_url=RSL,
                        offers_licences=any(lic.usages for lic in policy.licenses))
    return found, doc.text


def test_default_policy_disallows_training_crawlers_but_not_the_declarations() -> None:
    found, text = _robots(load_default_policy(CATALOG))
    group = found.group_for("GPTBot")
    assert group is not None
    assert [(line.allow, line.pattern) for line in group.lines] == [
        (True, "/.well-known$"), (True, "/.well-known/"), (True, "/robots.txt$"), (False, "/")]
    rules = RobotsRules.parse(text.encode())
    assert not rules.verdict("GPTBot", "/articles/1").allowed
    assert rules.verdict("GPTBot", "/.well-known/tdmrep.json").allowed
    # Search engines and assistants are served: no group, the origin's rules apply.
    assert found.group_for("Googlebot") is None
    assert found.group_for("ChatGPT-User") is None
    assert rules.verdict("Googlebot", "/articles/1").allowed


def test_every_refused_training_crawler_gets_a_group_by_its_robots_token() -> None:
    found, _ = _robots(load_default_policy(CATALOG))
    training = {c.robots_token for c in CATALOG if c.purpose.value == "ai-training"}
    assert {g.token for g in found.groups} == training


def test_site_wide_usage_and_content_signal_follow_the_enforced_purposes() -> None:
    _found, text = _robots(load_default_policy(CATALOG))
    lines = DeclaredRobots.parse(text)
    assert lines.usage("*", "/articles/1") == {"train-ai": False, "search": True}
    assert lines.signals == ["search=yes, ai-input=yes, ai-train=no"]
    # GPTBot reads its own group, which says the same for its purpose.
    assert lines.usage("GPTBot", "/articles/1") == {"train-ai": False}


def test_a_crawler_served_better_than_its_purpose_gets_a_group_saying_so() -> None:
    policy = _policy("""
rules:
  - {name: gptbot-welcome, match: {crawlers: [GPTBot]}, action: allow}
  - {name: no-training, match: {purposes: [ai-training]}, action: block}
""")
    _found, text = _robots(policy)
    lines = DeclaredRobots.parse(text)
    assert lines.usage("*", "/a") == {"train-ai": False, "search": True}
    assert lines.usage("GPTBot", "/a") == {"train-ai": True}
    assert RobotsRules.parse(text.encode()).verdict("GPTBot", "/a").allowed


def test_licence_paths_stay_crawlable_and_point_at_the_rsl_document() -> None:
    policy = _policy("""
licenses:
  - {name: train, usages: [ai-train], price: {amount: 0.01, currency: USD}}
rules:
  - match: {purposes: [ai-training], paths: ["/premium/**"]}
    action: {require_license: {any_of: [train]}}
  - {match: {purposes: [ai-training]}, action: block}
""")
    found, text = _robots(policy)
    rules = RobotsRules.parse(text.encode())
    assert rules.verdict("ClaudeBot", "/premium/story").allowed
    assert not rules.verdict("ClaudeBot", "/free/story").allowed
    lines = DeclaredRobots.parse(text)
    assert lines.licence_for("ClaudeBot") == [RSL]
    assert lines.global_licences == [RSL]
    headers = dict(found.headers_for("/premium/story", RSL))
    assert headers["tdm-reservation"] == "1"
    assert headers["tdm-policy"] == RSL
    assert headers["Link"] == f'<{RSL}>; rel="license"; type="application/rsl+xml"'
    assert "tdm-policy" not in dict(found.headers_for("/free/story", RSL))


def test_merge_folds_the_origins_star_rules_into_generated_groups() -> None:
    origin = "User-agent: *\nDisallow: /private/\nAllow: /private/press/\n"
    policy = _policy("""
rules:
  - {match: {crawlers: [ClaudeBot], paths: ["/premium/**"]}, action: block}
""")
    found, text = _robots(policy, origin)
    rules = RobotsRules.parse(text.encode())
    for path, allowed in [("/premium/a", False), ("/private/a", False),
                          ("/private/press/a", True), ("/news", True)]:
        assert rules.verdict("ClaudeBot", path).allowed is allowed, path
        # Everyone else reads the origin's `*` group, unchanged.
        assert rules.verdict("Googlebot", path).allowed is not path.startswith("/private/a")
    assert found.origin_named == ()


def test_an_origin_group_naming_the_crawler_wins_and_the_conflict_is_reported() -> None:
    origin = "User-agent: GPTBot\nAllow: /\n"
    found, text = _robots(load_default_policy(CATALOG), origin)
    assert found.group_for("GPTBot") is None
    assert "GPTBot" in found.origin_named
    assert any(c.startswith("GPTBot: the origin's robots.txt allows /") for c in found.conflicts)
    assert RobotsRules.parse(text.encode()).verdict("GPTBot", "/a").allowed


def test_replace_mode_leaves_the_origins_file_out() -> None:
    policy = _policy("declarations: {robots_txt: replace}\n"
                     "rules: [{match: {purposes: [ai-training]}, action: block}]\n")
    _, text = _robots(policy, "User-agent: *\nDisallow: /private/\nSitemap: https://e/s\n")
    assert "Disallow: /private/" not in text
    assert "Sitemap" not in text
    assert "User-agent: GPTBot\nDisallow: /\n" in text


def test_replace_mode_judges_robots_rules_by_the_crawlers_own_origin_group() -> None:
    # The origin lets GPTBot in everywhere; only `*` is kept out of /private/. The
    # `robots: disallowed` exemption therefore never applies to GPTBot, which the
    # next rule blocks, /private/ included.
    policy = _policy("declarations: {robots_txt: replace}\n"
                     "rules:\n"
                     "  - {match: {kinds: [crawler], robots: disallowed}, action: allow}\n"
                     "  - {match: {crawlers: [GPTBot]}, action: block}\n")
    origin = "User-agent: *\nDisallow: /private/\n\nUser-agent: GPTBot\nAllow: /\n"
    _, text = _robots(policy, origin)
    rules = RobotsRules.parse(text.encode())
    assert not rules.verdict("GPTBot", "/private/").allowed
    assert not rules.verdict("GPTBot", "/a").allowed


def test_an_authors_opt_out_is_declared_for_ai_crawlers() -> None:
    owners = Owners((Owner("ana", (compile_path_glob("/ana/**"),), Stance.OPT_OUT,
                           Decimal(0)),))
    found, text = _robots(_policy("rules: []\n"), owners=owners)
    rules = RobotsRules.parse(text.encode())
    assert not rules.verdict("PerplexityBot", "/ana/post").allowed
    assert rules.verdict("PerplexityBot", "/bob/post").allowed
    assert rules.verdict("Googlebot", "/ana/post").allowed
    assert dict(found.headers_for("/ana/post"))["tdm-reservation"] == "1"
    assert dict(found.headers_for("/bob/post"))["tdm-reservation"] == "0"


def test_stated_preferences_only_make_declarations_stricter() -> None:
    policy = _policy("""
declarations:
  usage:
    - {paths: ["/**"], train-ai: "n"}
    - {paths: ["/open/**"], search: "y", train-ai: "y"}
rules:
  - {match: {purposes: [search-engine], paths: ["/members/**"]}, action: block}
""")
    found, text = _robots(policy)
    assert parse_usage(dict(found.headers_for("/a"))["Content-Usage"]) == {
        "train-ai": False, "search": True}
    # Stated "y" on /open/ cannot undo the stated "n" for the whole site.
    assert parse_usage(dict(found.headers_for("/open/a"))["Content-Usage"])["train-ai"] is False
    assert parse_usage(dict(found.headers_for("/members/a"))["Content-Usage"])["search"] is False
    assert dict(found.headers_for("/a"))["tdm-reservation"] == "1"
    assert "ai-train=no" in DeclaredRobots.parse(text).signals[0]


def test_declarations_can_be_switched_off_per_kind() -> None:
    policy = _policy("declarations: {tdmrep: false, content_usage: false}\n"
                     "rules: [{match: {purposes: [ai-training]}, action: block}]\n")
    found, text = _robots(policy)
    assert found.headers_for("/a") == ()
    assert found.tdm == ()
    assert "Content-Usage" not in text
    assert "Content-Signal" not in text
    assert "User-agent: GPTBot\nDisallow: /\n" in text


def test_content_usage_header_is_an_rfc9651_dictionary_of_y_and_n() -> None:
    found, _ = _robots(load_default_policy(CATALOG))
    value = dict(found.headers_for("/a"))["Content-Usage"]
    parsed = http_sf.parse(value.encode(), tltype="dictionary")
    assert {word: str(item) for word, (item, _) in parsed.items()} == {
        "train-ai": "n", "search": "y"}


def test_tdmrep_first_match_agrees_with_the_header_for_every_region() -> None:
    policy = _policy("""
licenses: [{name: t, usages: [ai-train]}]
rules:
  - {match: {paths: ["/.well-known/**"]}, action: allow}
  - {match: {purposes: [ai-training], paths: ["/shop/{a,b}/**"]}, action: allow}
  - match: {purposes: [ai-training], paths: ["/shop/**"]}
    action: {require_license: {any_of: [t]}}
  - {match: {purposes: [ai-training]}, action: block}
""")
    found, _ = _robots(policy)
    document = render_tdmrep(found, RSL)
    rules = json.loads(document)
    assert rules[-1]["location"] == "/"
    assert [len(r["location"]) for r in rules] == sorted((len(r["location"]) for r in rules),
                                                         reverse=True)
    for path in ["/", "/x", "/shop", "/shop/", "/shop/a/1", "/shop/c/1", "/.well-known/x"]:
        rule = tdm_first_match(document, path)
        headers = dict(found.headers_for(path, RSL))
        assert rule is not None
        assert str(rule["tdm-reservation"]) == headers["tdm-reservation"], path
        assert rule.get("tdm-policy") == headers.get("tdm-policy"), path
    assert dict(found.headers_for("/shop/a/1", RSL))["tdm-reservation"] == "0"
    assert dict(found.headers_for("/shop/c/1", RSL))["tdm-policy"] == RSL


@pytest.mark.parametrize("origin", [None, "User-agent: *\nDisallow: /private/\n",
                                    "User-agent: GPTBot\nDisallow: /x/\n\nUser-agent: foo\n"])
def test_served_file_parses_the_same_in_rfc9309_and_classic_parsers(origin: str | None) -> None:
    _, text = _robots(load_default_policy(CATALOG), origin)
    ours = RobotsRules.parse(text.encode())
    classic = robotexclusionrulesparser.RobotExclusionRulesParser()
    classic.parse(text)
    stdlib = urllib.robotparser.RobotFileParser()
    stdlib.parse(text.splitlines())
    for agent in ["GPTBot", "ClaudeBot", "Googlebot", "bingbot", "foo", "SomeBrowser"]:
        for path in ["/", "/a/b", "/private/x", "/x/y", "/.well-known/security.txt"]:
            expected = ours.verdict(agent, path).allowed
            assert classic.is_allowed(agent, path) is expected, (agent, path)
            assert stdlib.can_fetch(agent, path) is expected, (agent, path)


def test_a_huge_origin_file_is_cut_so_the_generated_groups_stay_within_500_kib() -> None:
    origin = "User-agent: *\n" + "".join(f"Disallow: /p{i}/\n" for i in range(60_000))
    _found, text = _robots(load_default_policy(CATALOG), origin)
    assert len(text.encode()) <= PARSE_LIMIT
    assert "cut here" in text
    rules = RobotsRules.parse(text.encode())
    assert not rules.verdict("GPTBot", "/a").allowed
    assert not rules.verdict("Googlebot", "/p10/x").allowed


def test_a_bare_trailing_user_agent_of_the_origin_does_not_join_generated_groups() -> None:
    _, text = _robots(load_default_policy(CATALOG), "User-agent: foo\n")
    rules = RobotsRules.parse(text.encode())
    assert rules.verdict("foo", "/a").allowed
    assert not rules.verdict("GPTBot", "/a").allowed


def test_an_in_segment_wildcard_is_declared_wider_and_noted() -> None:
    policy = _policy("rules: [{match: {crawlers: [GPTBot], paths: ['/docs/*.pdf']}, "
                     "action: block}]\n")
    found, text = _robots(policy)
    assert "Disallow: /docs/*.pdf$" in text
    assert any(n.crawler == "GPTBot" and "no exact robots.txt form" in n.reason
               for n in found.notes)


@pytest.mark.parametrize(("glob", "exact"), [("/a/**", True), ("/{a,b}/c", True),
                                             ("/a/**/b", True), ("/a/*.pdf", False),
                                             ("/a?", False)])
def test_which_globs_have_an_exact_robots_txt_form(glob: str, exact: bool) -> None:
    assert glob_patterns(glob)[1] is exact


def test_a_representative_path_matches_only_its_own_pattern() -> None:
    assert representative("/a/") == "/a/\x7f"
    assert representative("/robots.txt$") == "/robots.txt"
    assert representative("/a/*/b$") == "/a/\x7f/b"
