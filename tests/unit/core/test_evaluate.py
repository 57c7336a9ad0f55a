"""Policy evaluation on hand-built policies: first match wins, host sections first,
every action's answer, and monitor mode as a dry run."""

import json

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gatekeeper.core.catalog import OTHER_BOT, UNKNOWN, Classification, Crawler, Kind, Purpose
from gatekeeper.core.decision import Reason
from gatekeeper.core.evaluate import decide, matches, select
from gatekeeper.core.facts import Identity, RequestFacts
from gatekeeper.core.model import (
    Allow,
    Block,
    HeaderMatch,
    HostSection,
    Match,
    Mode,
    Monitor,
    Pattern,
    Policy,
    RateLimit,
    RequireLicense,
    Rule,
)
from gatekeeper.core.ratelimit import LimitResult

GPTBOT = Crawler("GPTBot", "OpenAI", Purpose.AI_TRAINING, ("gptbot",), "GPTBot")
GOOGLEBOT = Crawler("Googlebot", "Google", Purpose.SEARCH_ENGINE, ("googlebot",), "Googlebot")
GPT = Classification(Kind.CRAWLER, GPTBOT)
GOOGLE = Classification(Kind.CRAWLER, GOOGLEBOT)


def exact(text: str) -> Pattern:
    return Pattern(text, text.__eq__)


def prefix(text: str) -> Pattern:
    return Pattern(text + "**", lambda s: s.startswith(text))


def facts(path: str = "/", host: str = "example.com", method: str = "GET",
          **headers: str) -> RequestFacts:
    h = CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}))
    return RequestFacts(method, host, path, "", h, "192.0.2.1", 1000.0)


def rule(name: str, action: object = None, **match: object) -> Rule:
    return Rule(name, Match(**match), action if action is not None else Block())  # type: ignore[arg-type]


def test_first_matching_rule_wins() -> None:
    policy = Policy(rules=(
        rule("robots", Allow(), paths=(exact("/robots.txt"),)),
        rule("no-training", Block(), purposes=frozenset({Purpose.AI_TRAINING})),
        rule("also-gptbot", Monitor(), crawlers=frozenset({"GPTBot"})),
    ))
    assert select(policy, facts("/robots.txt"), GPT, Identity.UNVERIFIED).name == "robots"
    assert select(policy, facts("/a"), GPT, Identity.UNVERIFIED).name == "no-training"
    assert select(policy, facts("/a"), GOOGLE, Identity.UNVERIFIED).name == "default"


@pytest.mark.parametrize(
    ("match", "cls", "identity", "request_facts", "expected"),
    [
        (Match(crawlers=frozenset({"GPTBot"})), GPT, Identity.UNVERIFIED, facts(), True),
        (Match(crawlers=frozenset({"GPTBot"})), UNKNOWN, Identity.UNKNOWN, facts(), False),
        (Match(operators=frozenset({"openai"})), GPT, Identity.UNVERIFIED, facts(), True),
        (Match(operators=frozenset({"google"})), GPT, Identity.UNVERIFIED, facts(), False),
        (Match(kinds=frozenset({"other-bot"})), OTHER_BOT, Identity.UNKNOWN, facts(), True),
        (Match(purposes=frozenset({Purpose.OTHER_BOT})), OTHER_BOT, Identity.UNKNOWN, facts(),
         True),
        (Match(purposes=frozenset({Purpose.AI_TRAINING})), UNKNOWN, Identity.UNKNOWN, facts(),
         False),
        (Match(identities=frozenset({Identity.SPOOFED})), GPT, Identity.UNVERIFIED, facts(),
         False),
        (Match(identities=frozenset({Identity.UNVERIFIED})), GPT, Identity.UNVERIFIED, facts(),
         True),
        (Match(methods=frozenset({"POST"})), GPT, Identity.UNVERIFIED, facts(), False),
        (Match(hosts=(exact("example.com"),)), GPT, Identity.UNVERIFIED, facts(), True),
        (Match(paths=(prefix("/premium"),)), GPT, Identity.UNVERIFIED, facts("/premium/x"), True),
        (Match(paths=(prefix("/premium"),)), GPT, Identity.UNVERIFIED, facts("/free"), False),
        (Match(headers=(HeaderMatch("X-Key", present=False),)), GPT, Identity.UNVERIFIED,
         facts(), True),
        (Match(headers=(HeaderMatch("X-Key", present=False),)), GPT, Identity.UNVERIFIED,
         facts(X_Key="1"), False),
        (Match(headers=(HeaderMatch("X-Key"),)), GPT, Identity.UNVERIFIED, facts(), False),
        (Match(headers=(HeaderMatch("X-Key", value=exact("v1")),)), GPT, Identity.UNVERIFIED,
         facts(X_Key="v1"), True),
        (Match(headers=(HeaderMatch("X-Key", value=exact("v1")),)), GPT, Identity.UNVERIFIED,
         facts(X_Key="v2"), False),
        # every condition must hold
        (Match(crawlers=frozenset({"GPTBot"}), paths=(prefix("/premium"),)), GPT,
         Identity.UNVERIFIED, facts("/free"), False),
        (Match(), UNKNOWN, Identity.UNKNOWN, facts(), True),
    ],
)
def test_match_conditions(match: Match, cls: Classification, identity: Identity,
                          request_facts: RequestFacts, expected: bool) -> None:
    assert matches(match, request_facts, cls, identity) is expected


def test_host_section_rules_come_before_top_level_rules() -> None:
    policy = Policy(
        rules=(rule("global-block", Block()),),
        host_sections=(HostSection((exact("open.example.com"),), (rule("open", Allow()),)),),
    )
    assert select(policy, facts(host="open.example.com"), GPT, Identity.UNVERIFIED).name == "open"
    assert select(policy, facts(host="example.com"), GPT, Identity.UNVERIFIED).name == (
        "global-block"
    )


def test_host_section_without_match_falls_through_to_top_level() -> None:
    policy = Policy(
        rules=(rule("global", Monitor()),),
        host_sections=(HostSection((exact("a.example"),), (rule("gpt-only", Allow(),
                                    crawlers=frozenset({"GPTBot"})),)),),
    )
    assert select(policy, facts(host="a.example"), GOOGLE, Identity.UNVERIFIED).name == "global"


def test_block_answers_403_with_machine_readable_body() -> None:
    policy = Policy(rules=(rule("no-training", Block()),))
    d = decide(policy, select(policy, facts(), GPT, Identity.UNVERIFIED))
    assert (d.forward, d.status, d.reason) == (False, 403, Reason.BLOCKED)
    assert json.loads(d.body) == {"error": "blocked", "status": 403, "rule": "no-training"}
    assert ("Content-Type", "application/json") in d.headers


def test_block_with_custom_status_body_and_headers() -> None:
    action = Block(status=451, body="Unavailable for legal reasons", headers=(("X-Why", "tdm"),))
    policy = Policy(rules=(rule("legal", action),))
    d = decide(policy, select(policy, facts(), GPT, Identity.UNVERIFIED))
    assert d.status == 451
    assert d.body == b"Unavailable for legal reasons"
    assert ("X-Why", "tdm") in d.headers
    assert ("Content-Type", "text/plain; charset=utf-8") in d.headers


def test_rate_limit_forwards_while_tokens_remain_and_answers_429_after() -> None:
    policy = Policy(rules=(rule("slow", RateLimit(1.0, 5)),))
    selected = select(policy, facts(), GPT, Identity.UNVERIFIED)
    assert decide(policy, selected, LimitResult(True, 4.0, 0.0)).forward
    denied = decide(policy, selected, LimitResult(False, 0.2, 0.8))
    assert denied.status == 429
    assert ("Retry-After", "1") in denied.headers


def test_rate_limit_without_bucket_result_is_a_programming_error() -> None:
    policy = Policy(rules=(rule("slow", RateLimit(1.0, 5)),))
    with pytest.raises(ValueError, match="bucket"):
        decide(policy, select(policy, facts(), GPT, Identity.UNVERIFIED))


def test_monitor_rule_forwards_and_says_so() -> None:
    policy = Policy(rules=(rule("watch", Monitor()),))
    d = decide(policy, select(policy, facts(), GPT, Identity.UNVERIFIED))
    assert d.forward
    assert d.reason is Reason.MONITORED
    assert d.action == "monitor"


@pytest.mark.parametrize(
    ("action", "limit", "would"),
    [
        (Block(), None, 403),
        (RequireLicense(("x",)), None, 401),  # no priced licence on offer: 401
        (RateLimit(1.0, 1), LimitResult(False, 0.0, 1.0), 429),
    ],
)
def test_monitor_mode_turns_every_denial_into_a_dry_run(
    action: object, limit: LimitResult | None, would: int
) -> None:
    policy = Policy(rules=(rule("r", action),), mode=Mode.MONITOR)
    d = decide(policy, select(policy, facts(), GPT, Identity.UNVERIFIED), limit)
    assert d.forward
    assert d.reason is Reason.DRY_RUN
    assert d.would_status == would


def test_default_action_applies_when_nothing_matches() -> None:
    policy = Policy(rules=(), default=Block(status=403))
    d = decide(policy, select(policy, facts(), UNKNOWN, Identity.UNKNOWN))
    assert d.rule == "default"
    assert d.status == 403


@pytest.mark.parametrize(
    ("condition", "verdict", "expected"),
    [
        (True, True, True),  # robots: disallowed, and robots.txt disallows the path
        (True, False, False),
        (True, None, False),  # no verdict (no robots.txt known): the condition cannot hold
        (False, False, True),  # robots: allowed
        (False, True, False),
        (False, None, False),
        (None, None, True),  # no condition
        (None, True, True),
    ],
)
def test_robots_condition_matches_only_the_verdict_it_names(
    condition: bool | None, verdict: bool | None, expected: bool
) -> None:
    m = Match(robots_disallowed=condition)
    assert matches(m, facts(), GPT, Identity.VERIFIED, verdict) is expected


def test_undeclared_bot_has_its_own_kind_and_purpose() -> None:
    from gatekeeper.core.catalog import UNDECLARED_BOT

    assert UNDECLARED_BOT.name == "undeclared-bot"
    assert UNDECLARED_BOT.purpose is Purpose.UNDECLARED_BOT
    m = Match(purposes=frozenset({Purpose.UNDECLARED_BOT}))
    assert matches(m, facts(), UNDECLARED_BOT, Identity.UNKNOWN)
    assert not matches(m, facts(), UNKNOWN, Identity.UNKNOWN)
