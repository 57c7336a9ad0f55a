"""The enforced stance is the gate's answer: what the declarations are derived from
(`stance_of`) must equal what the gate decides, an author's opt-out first, then
`gatekeeper.core.evaluate.select`, for every catalog crawler, path and host, with
each robots.txt verdict the gate can pass (None: robots.txt compliance is off).

The expected answers here are worked out from `select` and the owners directly,
with their own table from actions to verdicts, so a `stance_of` that chose rules,
host sections or robots.txt verdicts its own way would fail.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.catalog import Classification, Crawler, Kind
from gatekeeper.core.evaluate import select
from gatekeeper.core.facts import Identity, RequestFacts
from gatekeeper.core.globs import compile_path_glob
from gatekeeper.core.model import Allow, Block, Monitor, Policy, RateLimit, RequireLicense
from gatekeeper.core.owners import Owner, Owners, refuses
from gatekeeper.core.owners import Stance as OwnerStance
from gatekeeper.core.stance import Enforced, Verdict, robots_conditioned, stance_of
from gatekeeper.policy.loader import load_policy_text
from tests.unit.core.test_declarations_consistency import GLOBS_DRAWN, paths, policies

CATALOG = load_catalog()
HOSTS = ["example.com", "blog.example.com", "a.shop.example", "other.test"]
VERDICTS = {Allow: Verdict.ALLOW, Monitor: Verdict.ALLOW, RateLimit: Verdict.LIMIT,
            RequireLicense: Verdict.LICENSE, Block: Verdict.BLOCK}
# Header sets a request may carry, for the header conditions the policies draw.
HEADER_SETS = [{"X-Tier": "gold"}, {"Accept-Language": "en"},
               {"X-Tier": "gold", "Accept-Language": "en"}]


def _policy(text: str) -> Policy:
    return load_policy_text("version: 1\n" + text, "test.yaml", CATALOG)


def _crawler(name: str) -> Crawler:
    return next(c for c in CATALOG if c.name == name)


def _selected(policy: Policy, crawler: Crawler, path: str, host: str,
              robots: bool | None, headers: Mapping[str, str] | None = None,
              ) -> tuple[Verdict, str]:
    identity = Identity.VERIFIED if crawler.verification else Identity.UNVERIFIED
    facts = RequestFacts("GET", host, path, "", CIMultiDict(headers or {}), "", 0.0)
    chosen = select(policy, facts, Classification(Kind.CRAWLER, crawler), identity, robots)
    return VERDICTS[type(chosen.action)], chosen.name


def _gate(policy: Policy, owners: Owners, crawler: Crawler, path: str, host: str,
          robots: bool | None) -> tuple[Verdict, str]:
    """What `Gate.decide` does for an honest GET without headers, before any store."""
    owner = owners.owner_of(path)
    if refuses(owner, crawler.purpose):  # the gate's own check, as `Gate.decide` calls it
        assert owner is not None
        return Verdict.BLOCK, f"owner:{owner.name}"
    return _selected(policy, crawler, path, host, robots)


@st.composite
def owner_sets(draw: st.DrawFn) -> Owners:
    globs = draw(st.lists(st.sampled_from(GLOBS_DRAWN), max_size=3, unique=True))
    return Owners(tuple(
        Owner(f"o{i}", (compile_path_glob(glob),),
              draw(st.sampled_from([OwnerStance.OPT_OUT, OwnerStance.LICENSABLE])))
        for i, glob in enumerate(globs)))


# Every catalog crawler, three robots.txt verdicts, a few paths and hosts.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(hosts=True), owner_sets(), st.lists(paths, min_size=2, max_size=4),
       st.lists(st.sampled_from(HOSTS), min_size=1, max_size=2, unique=True))
def test_the_stance_is_what_the_owners_and_select_decide(
        text: str, owners: Owners, sample: list[str], hosts: list[str]) -> None:
    policy = load_policy_text(text, "generated.yaml", CATALOG)
    enforced = Enforced(policy, owners)
    for host in hosts:
        for url in sample:
            path = url.partition("?")[0]
            for crawler in CATALOG:
                for robots in (None, False, True):
                    stance = enforced.stance(crawler, path, host, robots)
                    expected = _gate(policy, owners, crawler, path, host, robots)
                    assert (stance.verdict, stance.rule) == expected, (
                        crawler.name, host, path, robots, stance)
                    if stance.rule.startswith("owner:"):
                        continue
                    if not stance.conditional:
                        # Nothing was decided by the absence of headers: any headers
                        # get the same rule.
                        for headers in HEADER_SETS:
                            assert _selected(policy, crawler, path, host, robots,
                                             headers) == expected, (crawler.name, headers)
                    else:
                        names = {r.name for r in (*policy.rules, *(
                            r for s in policy.host_sections for r in s.rules))
                                 if r.match.headers}
                        assert stance.conditional in names, stance


def test_without_a_robots_verdict_no_robots_condition_matches() -> None:
    policy = _policy("default: block\nrules:\n"
                     "  - {name: served, match: {crawlers: [GPTBot], robots: allowed}, "
                     "action: allow}\n"
                     "  - {name: barred, match: {crawlers: [GPTBot], robots: disallowed}, "
                     "action: allow}\n")
    gptbot = _crawler("GPTBot")
    assert stance_of(policy, Owners(), gptbot, "/a", "example.com", False).rule == "served"
    assert stance_of(policy, Owners(), gptbot, "/a", "example.com", True).rule == "barred"
    none = stance_of(policy, Owners(), gptbot, "/a", "example.com", None)
    assert (none.verdict, none.rule) == (Verdict.BLOCK, "default")


def test_a_header_rule_passed_over_is_named_as_conditional() -> None:
    policy = _policy("rules:\n"
                     "  - {name: tier, match: {crawlers: [GPTBot], headers: {X-Tier: present}}, "
                     "action: allow}\n"
                     "  - {name: no-gpt, match: {crawlers: [GPTBot]}, action: block}\n")
    stance = stance_of(policy, Owners(), _crawler("GPTBot"), "/a", "example.com", False)
    assert (stance.verdict, stance.rule, stance.conditional) == (Verdict.BLOCK, "no-gpt", "tier")
    plain = stance_of(policy, Owners(), _crawler("ClaudeBot"), "/a", "example.com", False)
    assert (plain.verdict, plain.rule, plain.conditional) == (Verdict.ALLOW, "default", "")


def test_the_rules_with_a_robots_condition_are_listed_with_host_sections() -> None:
    policy = _policy("rules:\n  - {name: a, match: {robots: disallowed}, action: block}\n"
                     "  - {name: b, match: {crawlers: [GPTBot]}, action: block}\n"
                     "hosts:\n  - hosts: [blog.example.com]\n    rules:\n"
                     "      - {name: c, match: {robots: allowed}, action: allow}\n")
    assert [r.name for r in robots_conditioned(policy)] == ["a", "c"]
