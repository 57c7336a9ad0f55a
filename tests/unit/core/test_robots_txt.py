"""The robots.txt text written from a plan: shared groups, their order, its size, and
the origin's usage lines in merge mode."""

from __future__ import annotations

import urllib.robotparser

import pytest
import robotexclusionrulesparser

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.declarations import Plan, plan
from gatekeeper.core.model import Policy, RobotsMode
from gatekeeper.core.robots import PARSE_LIMIT, RobotsRules
from gatekeeper.core.robots_txt import RobotsDocument, render_robots, unstated_refusals
from gatekeeper.policy.loader import load_default_policy, load_policy_text
from gatekeeper.vocabulary_loader import load_vocabularies
from tests.support.declared import ClassicReaders, DeclaredRobots

CATALOG = load_catalog()
VOCAB = load_vocabularies()
RSL = "https://example.com/license.xml"
GPTBOT = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2)"
CCBOT = "CCBot/2.0 (https://commoncrawl.org/faq/)"


def _policy(text: str) -> Policy:
    return load_policy_text("version: 1\n" + text, "test.yaml", CATALOG)


def _render(policy: Policy, origin: str | None = None,
            limit: int = PARSE_LIMIT) -> tuple[Plan, RobotsDocument]:
    rules = RobotsRules.parse(origin.encode()) if origin is not None else None
    found = plan(policy, CATALOG, VOCAB, host="example.com", origin=rules)
    served = rules.text if rules is not None and found.mode is RobotsMode.MERGE else None
    return found, render_robots(found, origin_text=served, license_url=RSL, limit=limit,
                                offers_licences=any(lic.usages for lic in policy.licenses))


def _article(index: int) -> str:
    return f"/free/article-{index:04d}-some-long-slug-here"


def _free_articles_then_no_ai(count: int) -> Policy:
    paths = ", ".join(f'"{_article(i)}"' for i in range(count))
    return _policy(f"""
rules:
  - {{name: free-articles, match: {{paths: [{paths}]}}, action: allow}}
  - name: no-ai
    match: {{purposes: [ai-training, ai-search, ai-assistant, ai-agent]}}
    action: block
""")


@pytest.mark.parametrize("count", [20, 120])
def test_many_exact_paths_stay_within_the_parse_limit_and_keep_gptbot_and_ccbot_refused(
        count: int) -> None:
    _found, doc = _render(_free_articles_then_no_ai(count))
    assert len(doc.text.encode()) < PARSE_LIMIT
    assert not doc.over_limit
    assert doc.generated_size == len(doc.text.encode())
    rules = RobotsRules.parse(doc.text.encode())
    stdlib = urllib.robotparser.RobotFileParser()
    stdlib.parse(doc.text.splitlines())
    classic = robotexclusionrulesparser.RobotExclusionRulesParser()
    classic.parse(doc.text)
    for token, agent in (("GPTBot", GPTBOT), ("CCBot", CCBOT)):
        assert not rules.verdict(token, "/blocked/story").allowed, token
        assert not stdlib.can_fetch(token, "/blocked/story"), token
        assert not classic.is_allowed(token, "/blocked/story"), token
        # robotexclusionrulesparser also looks for the token in a whole user agent
        # (urllib.robotparser reads only the product before the first "/").
        assert not classic.is_allowed(agent, "/blocked/story"), token
        # The articles the first rule serves stay allowed (urllib.robotparser knows
        # no `$` and reads them as refused, the stricter side).
        for path in (_article(0), _article(count - 1) + "?page=2"):
            assert rules.verdict(token, path).allowed, (token, path)
            assert classic.is_allowed(token, path), (token, path)


def test_crawlers_with_identical_lines_share_one_group() -> None:
    found, doc = _render(load_default_policy(CATALOG))
    written = DeclaredRobots.parse(doc.text).groups
    agents = [agent for group in written for agent in group.agents]
    # Every generated group is named exactly once, and `*` once.
    assert sorted(agents) == sorted([g.token.lower() for g in found.groups] + ["*"])
    shared = next(g for g in written if "gptbot" in g.agents)
    assert "ccbot" in shared.agents
    assert len(written) < len(found.groups)


SUBSTRING_POLICIES = {
    "default": load_default_policy(CATALOG),
    "no-ai": _free_articles_then_no_ai(3),
    "block-everyone": _policy("""
default: block
licenses: [{name: t, usages: [ai-train]}]
rules:
  - {match: {crawlers: [ClaudeBot]}, action: {require_license: {any_of: [t]}}}
"""),
    # Spider and Googlebot-Image would share a group, and Baiduspider and Googlebot
    # another: each would have to come first.
    "crossed": _policy("""
declarations: {content_usage: false}
rules:
  - {match: {crawlers: [Spider, Googlebot-Image], paths: ["/x/**"]}, action: block}
  - {match: {crawlers: [Baiduspider, Googlebot], paths: ["/y/**"]}, action: block}
"""),
}


@pytest.mark.parametrize("name", sorted(SUBSTRING_POLICIES))
def test_each_crawler_finds_its_own_group_first_in_substring_parsers(name: str) -> None:
    found, doc = _render(SUBSTRING_POLICIES[name])
    written = DeclaredRobots.parse(doc.text).groups
    assert any(len(group.agents) > 1 for group in written)  # groups are shared
    readers = ClassicReaders(doc.text)
    for crawler in CATALOG:
        token = crawler.robots_token.lower()
        # The group urllib.robotparser and robotexclusionrulesparser take: the first
        # with a user agent inside the crawler's token.
        first = next((g for g in written if any(a != "*" and a in token for a in g.agents)),
                     None)
        if found.group_for(crawler.name) is None:
            assert first is None, crawler.name
        else:
            assert first is not None, crawler.name
            assert token in first.agents, crawler.name
        for path in ("/", "/x/1", "/y/1", "/license.xml"):
            readers.assert_agree(crawler.robots_token, path)


def test_crawlers_whose_groups_would_each_have_to_come_first_keep_their_own() -> None:
    _found, doc = _render(SUBSTRING_POLICIES["crossed"])
    written = DeclaredRobots.parse(doc.text).groups
    # The crawlers served only for the substring parsers still share theirs.
    shared = next(g for g in written if "bytespider" in g.agents)
    assert {"yisouspider", "googlebot-news"} <= set(shared.agents)
    for token in ("spider", "googlebot-image", "baiduspider", "googlebot"):
        assert [g.agents for g in written if token in g.agents] == [[token]], token
    stdlib = urllib.robotparser.RobotFileParser()
    stdlib.parse(doc.text.splitlines())
    for token, refused in (("Spider", "/x/1"), ("Googlebot-Image", "/x/1"),
                           ("Baiduspider", "/y/1"), ("Googlebot", "/y/1")):
        other = "/y/1" if refused == "/x/1" else "/x/1"
        assert not stdlib.can_fetch(token, refused), token
        assert stdlib.can_fetch(token, other), token


def test_a_generated_part_longer_than_the_limit_is_flagged_and_served_whole() -> None:
    found, doc = _render(_free_articles_then_no_ai(20), limit=4096)
    assert doc.over_limit
    assert doc.generated_size > 4096
    # Nothing of it is cut: a cut group would read as allowed.
    assert doc.text.count("User-agent:") == len(found.groups) + 1


ORIGIN_USAGE = ("User-agent: *\nContent-Signal: search=yes, ai-train=yes, ai-input=yes\n"
                "Content-Usage: train-ai=y\nContent-Usage: /blog/ train-ai=y\nAllow: /\n\n"
                "User-agent: foo\nContent-Usage: train-ai=y\nDisallow: /x/\n")


def test_the_origins_site_wide_usage_lines_give_way_to_the_policys() -> None:
    found, doc = _render(load_default_policy(CATALOG), ORIGIN_USAGE)
    lines = DeclaredRobots.parse(doc.text)
    assert lines.signals == [found.signal] == ["search=yes, ai-input=yes, ai-train=no"]
    assert lines.usage("*", "/blog/a") == {"train-ai": False, "search": True}
    assert "# (a Content-Signal line of the site's, replaced by the policy's)\n" in doc.text
    assert doc.text.count("replaced by the policy's") == 3
    # A group naming its own crawler keeps its lines, as it keeps its rules.
    assert lines.usage("foo", "/a") == {"train-ai": True}
    assert not RobotsRules.parse(doc.text.encode()).verdict("foo", "/x/1").allowed
    # A policy without usage lines of its own (content_usage: false) leaves the origin's.
    policy = _policy("declarations: {content_usage: false}\n"
                     "rules: [{match: {purposes: [ai-training]}, action: block}]\n")
    _found, kept = _render(policy, ORIGIN_USAGE)
    assert kept.usage_conflicts == ()
    assert DeclaredRobots.parse(kept.text).signals == [
        "search=yes, ai-train=yes, ai-input=yes"]
    assert doc.usage_conflicts == (
        "the origin's robots.txt says `Content-Signal: search=yes, ai-train=yes, "
        "ai-input=yes` where the policy declares `Content-Signal: search=yes, "
        "ai-input=yes, ai-train=no` (ai-train differs); the policy's line is served",
        "the origin's robots.txt says `Content-Usage: train-ai=y` where the policy "
        "declares `Content-Usage: train-ai=n, search=y` (train-ai differs); the policy's "
        "line is served",
        "the origin's robots.txt says `Content-Usage: /blog/ train-ai=y` where the "
        "policy declares `Content-Usage: train-ai=n, search=y` (train-ai differs); the "
        "policy's line is served",
    )


def test_origin_usage_lines_that_agree_with_the_policy_are_replaced_without_conflict(
        ) -> None:
    origin = ("Content-Signal: ai-train=no\n\nUser-agent: *\nContent-Usage: train-ai=n\n"
              "Disallow: /private/\n")
    _found, doc = _render(load_default_policy(CATALOG), origin)
    assert doc.usage_conflicts == ()
    assert len(DeclaredRobots.parse(doc.text).signals) == 1
    assert doc.text.count("replaced by the policy's") == 2
    assert not RobotsRules.parse(doc.text.encode()).verdict("Googlebot", "/private/").allowed


REFUSALS_OUTSIDE_THE_CATALOG = {
    "rules: [{name: no-bots, match: {kinds: [other-bot]}, action: block}]\n":
        ("rule 'no-bots' refuses clients outside the catalog (other-bot)",),
    "default: block\nrules: [{name: people, match: {kinds: [unknown]}, action: allow}]\n":
        ("the default refuses clients outside the catalog (other-bot, undeclared-bot)",),
    "rules: [{name: private, match: {paths: ['/private/**']}, action: block}]\n":
        ("rule 'private' refuses clients outside the catalog (other-bot, undeclared-bot, "
         "unknown)",),
    # Nobody reaches the default past a rule that serves everyone everywhere.
    "default: block\nrules: [{name: all, action: allow}]\n": (),
    "rules: [{match: {purposes: [ai-training]}, action: block}]\n": (),
}


def test_refusals_of_clients_outside_the_catalog_are_found() -> None:
    found = {text: unstated_refusals(_policy(text)) for text in REFUSALS_OUTSIDE_THE_CATALOG}
    assert found == REFUSALS_OUTSIDE_THE_CATALOG
    for text in REFUSALS_OUTSIDE_THE_CATALOG:
        # ... and the `*` group they read indeed states none of it.
        _plan, doc = _render(_policy(text))
        assert RobotsRules.parse(doc.text.encode()).verdict("SomeBot", "/private/a").allowed
