"""The declarations of particular policies: groups, lines, headers and documents."""

from __future__ import annotations

import json
import urllib.robotparser
from decimal import Decimal

import http_sf
import pytest
import robotexclusionrulesparser

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.declarations import (
    Limit,
    Plan,
    from_origin,
    glob_patterns,
    plan,
    public_document,
    public_paths,
    representative,
)
from gatekeeper.core.globs import compile_path_glob
from gatekeeper.core.model import Policy
from gatekeeper.core.owners import Owner, Owners, Stance
from gatekeeper.core.robots import PARSE_LIMIT, RobotsRules
from gatekeeper.core.robots_txt import render_robots
from gatekeeper.core.stance import Verdict, stance_of
from gatekeeper.core.tdmrep import render_tdmrep
from gatekeeper.policy.loader import load_default_policy, load_policy_text
from gatekeeper.vocabulary_loader import load_vocabularies
from tests.support.declared import (
    ClassicReaders,
    DeclaredRobots,
    parse_signal,
    parse_usage,
    tdm_first_match,
)

CATALOG = load_catalog()
VOCAB = load_vocabularies()
RSL = "https://example.com/license.xml"
TERMS = "https://example.com/.well-known/gatekeeper/licenses"
GPTBOT = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2)"


def _policy(text: str) -> Policy:
    return load_policy_text("version: 1\n" + text, "test.yaml", CATALOG)


def _robots(policy: Policy, origin: str | None = None, owners: Owners | None = None,
            compliance: bool = True) -> tuple[Plan, str]:
    rules = RobotsRules.parse(origin.encode()) if origin is not None else None
    found = plan(policy, CATALOG, VOCAB, host="example.com", origin=rules,
                 owners=owners or Owners(), robots_compliance=compliance)
    served = rules.text if rules is not None and found.mode.value == "merge" else None
    doc = render_robots(found, origin_text=served, license_url=RSL,
                        offers_licences=any(lic.usages for lic in policy.licenses))
    return found, doc.text


def test_default_policy_disallows_training_crawlers_but_not_the_declarations() -> None:
    found, text = _robots(load_default_policy(CATALOG))
    group = found.group_for("GPTBot")
    assert group is not None
    assert [(line.allow, line.pattern) for line in group.lines] == [
        (True, "/.well-known?*"), (True, "/license.xml?*"), (True, "/.well-known$"),
        (True, "/.well-known/"), (True, "/license.xml$"), (True, "/robots.txt?*"),
        (True, "/robots.txt$"), (False, "/")]
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
    tokens = {g.token for g in found.groups}
    assert training <= tokens
    # The others are there only for parsers that match user agents by substring.
    for extra in tokens - training:
        assert any(t.lower() in extra.lower() for t in training if t != extra), extra


def test_groups_are_written_longest_user_agent_first() -> None:
    found, _ = _robots(load_default_policy(CATALOG))
    assert [len(g.token) for g in found.groups] == sorted(
        (len(g.token) for g in found.groups), reverse=True)


def test_a_crawler_whose_name_contains_a_grouped_token_gets_a_group_of_its_own() -> None:
    # The default policy refuses the training crawler `Spider`; urllib.robotparser
    # would give Baiduspider, a search engine it serves, Spider's `Disallow: /`.
    found, text = _robots(load_default_policy(CATALOG))
    assert found.group_for("Spider") is not None
    group = found.group_for("Baiduspider")
    assert group is not None
    assert [(line.allow, line.pattern) for line in group.lines] == [(True, "/")]
    assert group.usage == (("/", "search=y"),)
    stdlib = urllib.robotparser.RobotFileParser()
    stdlib.parse(text.splitlines())
    assert stdlib.can_fetch("Baiduspider", "/articles/1")
    assert not stdlib.can_fetch("Spider", "/articles/1")


def test_an_origin_group_shadowing_a_catalog_name_gets_that_crawler_a_group() -> None:
    # The origin's `Googlebot` group would be Googlebot-Image's in a substring parser.
    origin = "User-agent: Googlebot\nDisallow: /news/\n"
    found, text = _robots(_policy("rules: []\n"), origin)
    assert found.group_for("Googlebot") is None
    assert found.group_for("Googlebot-Image") is not None
    classic = robotexclusionrulesparser.RobotExclusionRulesParser()
    classic.parse(text)
    assert classic.is_allowed("Googlebot-Image", "/news/1")
    assert not classic.is_allowed("Googlebot", "/news/1")


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
    headers = dict(found.headers_for("/premium/story", RSL, TERMS))
    assert headers["tdm-reservation"] == "1"
    assert headers["Link"] == f'<{RSL}>; rel="license"; type="application/rsl+xml"'
    assert "tdm-policy" not in dict(found.headers_for("/free/story", RSL, TERMS))


def test_tdm_policy_names_the_terms_page_and_link_the_rsl_document() -> None:
    # TDMRep reads a text/html policy as human-readable and JSON-LD as ODRL; an
    # application/rsl+xml document would be a protocol error there.
    policy = _policy("""
licenses: [{name: train, usages: [ai-train]}]
rules:
  - {match: {purposes: [ai-training]}, action: {require_license: {any_of: [train]}}}
""")
    found, _ = _robots(policy)
    headers = dict(found.headers_for("/a", RSL, TERMS))
    assert headers["tdm-policy"] == TERMS
    assert RSL in headers["Link"]
    assert json.loads(render_tdmrep(found, TERMS))[-1] == {
        "location": "/", "tdm-reservation": 1, "tdm-policy": TERMS}


SEARCH_LICENCE = """
licenses:
  - {name: idx, usages: [search], price: {amount: 0.001, currency: USD}}
rules:
  - name: paid-search
    match: {purposes: [search-engine], paths: ["/archive/**"]}
    action: {require_license: {any_of: [idx]}}
"""


def test_a_licence_asked_only_of_search_engines_is_linked_where_it_is_asked() -> None:
    # RSL: `Link: rel="license"` names the licence of the response's content. Search
    # is no purpose TDMRep reserves, so there is no tdm-policy, but the licence is
    # offered on /archive/ as the search engines' robots.txt groups say.
    found, text = _robots(_policy(SEARCH_LICENCE))
    link = f'<{RSL}>; rel="license"; type="application/rsl+xml"'
    for path in ("/archive", "/archive/x"):
        headers = dict(found.headers_for(path, RSL, TERMS))
        assert headers["Link"] == link, path
        assert headers["tdm-reservation"] == "0"
        assert "tdm-policy" not in headers
    assert "Link" not in dict(found.headers_for("/news/x", RSL, TERMS))
    assert "Link" not in dict(found.headers_for("/archived", RSL, TERMS))
    assert DeclaredRobots.parse(text).licence_for("Googlebot") == [RSL]


def test_the_link_follows_the_licence_offers_whatever_else_is_declared() -> None:
    policy = _policy("declarations: {tdmrep: false, content_usage: false}\n" + SEARCH_LICENCE)
    found, _ = _robots(policy)
    assert found.headers_for("/archive/x", RSL, TERMS) == (
        ("Link", f'<{RSL}>; rel="license"; type="application/rsl+xml"'),)
    assert found.headers_for("/a", RSL, TERMS) == ()


def test_every_region_where_some_crawler_is_asked_for_a_licence_links_the_rsl_document(
) -> None:
    policy = _policy("""
licenses:
  - {name: train, usages: [ai-train], paths: ["/premium/**"]}
  - {name: idx, usages: [search]}
rules:
  - {match: {purposes: [ai-training], paths: ["/premium/**"]},
     action: {require_license: {any_of: [train]}}}
  - {match: {purposes: [search-engine], paths: ["/archive/**"]},
     action: {require_license: {any_of: [idx]}}}
  - {match: {crawlers: [Googlebot], paths: ["/archive/free/**"]}, action: allow}
  - {match: {purposes: [ai-training]}, action: block}
""")
    found, _ = _robots(policy)
    for pattern in found.headers_by_region:
        path = representative(pattern)
        asked = any(stance_of(policy, Owners(), c, path, "example.com", False).verdict
                    is Verdict.LICENSE for c in CATALOG)
        assert ("Link" in dict(found.headers_for(path, RSL, TERMS))) is asked, pattern
    # Bingbot is still asked on /archive/free/: the licence is offered there too.
    assert "Link" in dict(found.headers_for("/archive/free/x", RSL, TERMS))
    assert "Link" not in dict(found.headers_for("/a", RSL, TERMS))


def test_a_crawler_asked_only_for_a_licence_gets_a_group_naming_it() -> None:
    origin = "User-agent: *\nDisallow: /private/\n"
    policy = _policy("""
licenses: [{name: train, usages: [ai-train]}]
rules:
  - {match: {purposes: [ai-training]}, action: {require_license: {any_of: [train]}}}
""")
    found, text = _robots(policy, origin)
    group = found.group_for("GPTBot")
    assert group is not None
    assert group.license
    rules = RobotsRules.parse(text.encode())
    # Licence paths stay crawlable; the origin's `*` rules are folded in.
    assert rules.verdict("GPTBot", "/a").allowed
    assert not rules.verdict("GPTBot", "/private/a").allowed
    lines = DeclaredRobots.parse(text)
    assert lines.groups_for("GPTBot")[0].licences == [RSL]
    assert lines.usage("GPTBot", "/a") == {"train-ai": False}
    assert found.group_for("Googlebot") is None


def test_public_documents_are_allowed_in_every_group_even_when_everything_is_blocked() -> None:
    policy = _policy("""
default: block
licenses: [{name: train, usages: [ai-train]}]
rules:
  - {match: {crawlers: [ClaudeBot]}, action: {require_license: {any_of: [train]}}}
""")
    found, text = _robots(policy)
    rules = RobotsRules.parse(text.encode())
    classic = robotexclusionrulesparser.RobotExclusionRulesParser()
    classic.parse(text)
    public = ["/license.xml", "/.well-known/gatekeeper/licenses", "/.well-known/tdmrep.json",
              "/.well-known/jwks.json", "/robots.txt"]
    assert set(public_paths(policy)) == set(public)
    assert len(found.groups) == len(CATALOG)
    for group in found.groups:
        for path in public + [p + "?format=json" for p in public]:
            assert rules.verdict(group.token, path).allowed, (group.token, path)
            assert classic.is_allowed(group.token, path), (group.token, path)
        if group.token != "ClaudeBot":  # asked for a licence: its paths stay crawlable
            assert not rules.verdict(group.token, "/license.xml.bak").allowed
            assert not rules.verdict(group.token, "/a").allowed
    assert DeclaredRobots.parse(text).licence_for("ClaudeBot") == [RSL]


def test_the_keys_are_not_declared_before_a_signing_key_exists() -> None:
    policy = _policy("default: block\nrules: []\n")
    found = plan(policy, CATALOG, VOCAB, jwks=False)
    text = render_robots(found, origin_text=None, license_url=RSL, offers_licences=False).text
    rules = RobotsRules.parse(text.encode())
    assert not rules.verdict("GPTBot", "/.well-known/jwks.json").allowed
    assert rules.verdict("GPTBot", "/.well-known/tdmrep.json").allowed


@pytest.mark.parametrize(("method", "path", "settings", "kind", "origin"), [
    ("GET", "/robots.txt", "", "robots.txt", False),
    ("HEAD", "/robots.txt", "", "robots.txt", False),
    ("POST", "/robots.txt", "", None, False),
    # Not written by Gatekeeper, still never gated: forwarded to the origin as it is.
    ("GET", "/robots.txt", "declarations: {robots_txt: 'off'}\n", "robots.txt", True),
    ("GET", "/.well-known/tdmrep.json", "", "tdmrep.json", False),
    ("GET", "/.well-known/tdmrep.json", "declarations: {tdmrep: false}\n", "tdmrep.json",
     True),
    ("GET", "/robots.txt", "declarations: {tdmrep: false}\n", "robots.txt", False),
    ("GET", "/license.xml", "", "license.xml", False),
    ("GET", "/license.xml", "declarations: {robots_txt: 'off'}\n", "license.xml", False),
    ("GET", "/terms", "license_terms_url: /terms\n", "terms", False),
    ("GET", "/.well-known/gatekeeper/licenses", "license_terms_url: /terms\n", None, False),
    ("GET", "/.well-known/jwks.json", "", "jwks.json", False),
    ("GET", "/robots.txt/", "", None, False),
])
def test_which_paths_are_public_documents(method: str, path: str, settings: str,
                                          kind: str | None, origin: bool) -> None:
    policy = _policy(settings + "rules: []\n")
    assert public_document(policy, method, path) == kind
    if kind is not None:
        assert from_origin(policy, kind) is origin


@pytest.mark.parametrize("kind", ["robots.txt", "tdmrep.json"])
def test_without_a_usage_vocabulary_the_origin_serves_robots_txt_and_tdmrep(kind: str) -> None:
    policy = _policy("rules: []\n")
    assert from_origin(policy, kind, generated=False)
    assert not from_origin(policy, "license.xml", generated=False)


def test_the_origins_tdmrep_json_is_allowed_in_every_group_when_gatekeeper_writes_none(
) -> None:
    # Forwarded ungated (from_origin), so robots.txt must not tell crawlers to stay out.
    policy = _policy("default: block\ndeclarations: {tdmrep: false}\nrules: []\n")
    assert "/.well-known/tdmrep.json" in public_paths(policy)
    _, text = _robots(policy)
    rules = RobotsRules.parse(text.encode())
    assert rules.verdict("GPTBot", "/.well-known/tdmrep.json").allowed
    assert not rules.verdict("GPTBot", "/a").allowed


def test_a_path_with_a_query_is_declared_as_the_path() -> None:
    # The policy matches the path; robots.txt matches path and query.
    policy = _policy("rules: [{match: {crawlers: [GPTBot], paths: ['/a', '/b/**']}, "
                     "action: block}]\n")
    _, text = _robots(policy)
    rules = RobotsRules.parse(text.encode())
    for path, allowed in [("/a", False), ("/a?x=1", False), ("/ab", True), ("/b", False),
                          ("/b?x", False), ("/b/c?x", False), ("/bc?x", True)]:
        assert rules.verdict("GPTBot", path).allowed is allowed, path
    assert DeclaredRobots.parse(text).usage("GPTBot", "/a?x=1") == {"train-ai": False}


def test_an_origin_disallow_the_policy_does_not_enforce_is_a_conflict() -> None:
    origin = "User-agent: GPTBot\nDisallow: /x/\n"
    policy = _policy("rules: [{name: welcome, match: {crawlers: [GPTBot]}, action: allow}]\n")
    found, text = _robots(policy, origin)
    assert found.conflicts == ("GPTBot: the origin's robots.txt disallows /x/ "
                               "(Disallow: /x/) but the policy serves it (rule 'welcome')",)
    # The origin's own group is what is served.
    assert not RobotsRules.parse(text.encode()).verdict("GPTBot", "/x/1").allowed


def test_a_rate_limit_is_noted_for_each_crawler_and_region() -> None:
    found, _ = _robots(load_default_policy(CATALOG))
    rated = {(n.crawler, n.pattern) for n in found.notes if n.limit is Limit.RATE}
    assistants = {c.name for c in CATALOG if c.purpose.value == "ai-assistant"}
    assert rated == {(name, "/") for name in assistants}
    note = next(n for n in found.notes if n.crawler == "ChatGPT-User")
    assert note.reason == ("rule 'rate-limit-ai-assistants' sets a rate limit, which no "
                           "declaration can state: declared as allowed")


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
    assert "User-agent: GPTBot\n" in text
    assert not RobotsRules.parse(text.encode()).verdict("GPTBot", "/private/a").allowed


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


def test_content_signal_says_no_when_any_region_refuses_the_purpose() -> None:
    # Content Signals have no path scope: training refused on /premium/ alone is enough.
    policy = _policy("rules: [{match: {purposes: [ai-training], paths: ['/premium/**']}, "
                     "action: block}]\n")
    _, text = _robots(policy)
    assert [parse_signal(v) for v in DeclaredRobots.parse(text).signals] == [
        {"search": True, "ai-input": True, "ai-train": False}]


def test_declarations_can_be_switched_off_per_kind() -> None:
    policy = _policy("declarations: {tdmrep: false, content_usage: false}\n"
                     "rules: [{match: {purposes: [ai-training]}, action: block}]\n")
    found, text = _robots(policy)
    assert found.headers_for("/a") == ()
    assert found.tdm == ()
    assert "Content-Usage" not in text
    assert "Content-Signal" not in text
    assert "User-agent: GPTBot\n" in text
    assert not RobotsRules.parse(text.encode()).verdict("GPTBot", "/a").allowed


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
    document = render_tdmrep(found, TERMS)
    rules = json.loads(document)
    assert rules[-1]["location"] == "/"
    assert [len(r["location"]) for r in rules] == sorted((len(r["location"]) for r in rules),
                                                         reverse=True)
    for path in ["/", "/x", "/shop", "/shop/", "/shop/a/1", "/shop/c/1", "/.well-known/x"]:
        rule = tdm_first_match(document, path)
        headers = dict(found.headers_for(path, RSL, TERMS))
        assert rule is not None
        assert str(rule["tdm-reservation"]) == headers["tdm-reservation"], path
        assert rule.get("tdm-policy") == headers.get("tdm-policy"), path
    assert dict(found.headers_for("/shop/a/1", RSL, TERMS))["tdm-reservation"] == "0"
    assert dict(found.headers_for("/shop/c/1", RSL, TERMS))["tdm-policy"] == TERMS


PARSER_ORIGINS = [None, "User-agent: *\nDisallow: /private/\n",
                  "User-agent: GPTBot\nDisallow: /x/\n\nUser-agent: foo\n",
                  "User-agent: Googlebot\nDisallow: /news/\n\nUser-agent: *\nDisallow: /x/\n"]
PARSER_POLICIES = {
    "default": load_default_policy(CATALOG),
    "licence-or-block": _policy("""
default: block
licenses: [{name: t, usages: [ai-train]}]
rules:
  - {match: {purposes: [search-engine]}, action: allow}
  - {match: {crawlers: [Googlebot]}, action: block}
  - match: {purposes: [ai-training], paths: ["/premium/**"]}
    action: {require_license: {any_of: [t]}}
"""),
}


@pytest.mark.parametrize("origin", PARSER_ORIGINS,
                         ids=["none", "star", "gptbot", "googlebot"])
@pytest.mark.parametrize("name", sorted(PARSER_POLICIES))
def test_served_file_parses_the_same_in_rfc9309_and_classic_parsers(
        name: str, origin: str | None) -> None:
    # The origins use no `*` or `$` and no Allow under a shorter Disallow, which the
    # first-match parsers read differently on their own.
    policy = PARSER_POLICIES[name]
    found, text = _robots(policy, origin)
    readers = ClassicReaders(text)
    origin_rules = RobotsRules.parse(origin.encode()) if origin else None
    agents = [c.robots_token for c in CATALOG] + ["foo", "SomeBrowser"]
    paths = ["/", "/a/b", "/private/x", "/x/y", "/news/1", "/premium/x", "/robots.txt",
             "/.well-known/security.txt", "/license.xml", "/license.xml?format=json"]
    by_token = {c.robots_token: c for c in CATALOG}
    for agent in agents:
        for path in paths:
            allowed = readers.assert_agree(agent, path)
            crawler = by_token.get(agent)
            if crawler is None or crawler.name in found.origin_named:
                continue
            # ... and with what the gate enforces.
            barred = origin_rules is not None and not origin_rules.verdict(agent, path).allowed
            bare = path.partition("?")[0]
            stance = stance_of(policy, Owners(), crawler, bare, "example.com", barred)
            if stance.verdict is Verdict.BLOCK and bare not in public_paths(policy):
                assert not allowed, (agent, path)
            elif not barred:
                assert allowed, (agent, path)


def test_without_robots_compliance_a_robots_allowed_rule_is_not_declared_as_matching(
        ) -> None:
    # The gate has no robots.txt verdict then, so the rule never matches: GPTBot is
    # refused by the default, and robots.txt and Content-Usage must say so.
    policy = _policy("default: block\nrules:\n"
                     "  - {name: served, match: {crawlers: [GPTBot], robots: allowed}, "
                     "action: allow}\n")
    for compliance, allowed in ((True, True), (False, False)):
        found, text = _robots(policy, compliance=compliance)
        assert RobotsRules.parse(text.encode()).verdict("GPTBot", "/articles/1").allowed \
            is allowed, compliance
        group = found.group_for("GPTBot")
        assert group is not None
        assert dict(group.usage)["/"] == ("train-ai=y" if allowed else "train-ai=n")
        stdlib = urllib.robotparser.RobotFileParser()
        stdlib.parse(text.splitlines())
        assert stdlib.can_fetch("GPTBot", "/articles/1") is allowed


def test_without_robots_compliance_replace_mode_repeats_no_origin_disallow() -> None:
    # Under `robots: disallowed` the origin's lines bound what the gate enforces, so
    # replace mode folds them in; without compliance the gate never reads them.
    policy = _policy("declarations: {robots_txt: replace}\nrules:\n"
                     "  - {name: barred, match: {kinds: [crawler], robots: disallowed}, "
                     "action: block}\n")
    origin = "User-agent: *\nDisallow: /private/\n"
    found, text = _robots(policy, origin)
    assert not RobotsRules.parse(text.encode()).verdict("Googlebot", "/private/x").allowed
    assert found.group_for("Googlebot") is not None
    found, text = _robots(policy, origin, compliance=False)
    assert RobotsRules.parse(text.encode()).verdict("Googlebot", "/private/x").allowed
    assert found.groups == ()


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
