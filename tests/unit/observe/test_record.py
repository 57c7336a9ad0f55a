"""The Recorder: one metrics update and one log line per request, and no secrets."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry

from gatekeeper.core.catalog import OTHER_BOT, UNKNOWN, Classification, Crawler, Kind, Purpose
from gatekeeper.core.decision import Decision, Reason
from gatekeeper.core.facts import Identity, RequestFacts
from gatekeeper.core.model import Block, Match, Policy, Rule
from gatekeeper.errors import Problem
from gatekeeper.gate import Outcome
from gatekeeper.observe import logging as gk_logging
from gatekeeper.observe import record
from gatekeeper.observe.metrics import Metrics
from gatekeeper.observe.record import MAX_UA_LOGGED, Observation, Observer, Recorder

GPTBOT = Crawler("GPTBot", "OpenAI", Purpose.AI_TRAINING, ("gptbot",), "GPTBot")
ROGUE = Crawler("RogueBot", "?", Purpose.AI_TRAINING, ("rogue",), "RogueBot")
BLOCK = Decision("block", "no-training", Reason.BLOCKED, forward=False, status=403)
ALLOW = Decision("allow", "default", Reason.ALLOWED, forward=True)
LIMIT = Decision("rate_limit", "slow", Reason.RATE_LIMITED, forward=False, status=429)
DRY = Decision("block", "no-training", Reason.DRY_RUN, forward=True, would_status=403)

# Every field the documentation promises on a request line, in order.
REQUEST_FIELDS = [
    "time", "level", "event", "client_ip", "method", "host", "path", "has_query", "status",
    "bytes", "user_agent", "crawler", "purpose", "identity", "verified_by", "identity_detail",
    "robots", "behaviour", "rule", "action", "reason",
    "dry_run", "duration_ms", "upstream_ms", "upstream_error",
]


@dataclass
class Rig:
    recorder: Recorder
    registry: CollectorRegistry
    out: io.StringIO

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]


@pytest.fixture
def rig() -> Iterator[Rig]:
    out = io.StringIO()
    gk_logging.configure("json", "info", out, cache_loggers=False)
    registry = CollectorRegistry()
    yield Rig(Recorder(Metrics(registry, ["GPTBot"])), registry, out)
    gk_logging.configure("json", "warning", io.StringIO(), cache_loggers=False)


def observation(
    cls: Classification,
    decision: Decision,
    *,
    headers: dict[str, str] | None = None,
    query: str = "",
    status: int | None = None,
    upstream: float | None = 0.001,
    error: str | None = None,
    fallback: bool = False,
    gate: float | None = None,
) -> Observation:
    h = CIMultiDictProxy(CIMultiDict(headers or {}))
    facts = RequestFacts("GET", "example.com", "/a", query, h, "192.0.2.1", 0.0)
    identity = Identity.UNKNOWN if cls.crawler is None else Identity.UNVERIFIED
    return Observation(facts, Outcome(cls, identity, decision, fallback),
                       status or decision.status or 200, 10, 0.0021234, upstream, error,
                       gate_duration=gate)


def test_recorder_is_an_observer() -> None:
    observer: Observer = Recorder(Metrics(CollectorRegistry(), []))
    assert observer is not None


def test_observe_counts_by_crawler_purpose_identity_action_and_reason(rig: Rig) -> None:
    rig.recorder.observe(observation(Classification(Kind.CRAWLER, GPTBOT), BLOCK, upstream=None))
    assert rig.value("gatekeeper_requests_total", crawler="GPTBot", purpose="ai-training",
                     identity="unverified", action="block", reason="blocked") == 1
    assert rig.value("gatekeeper_rule_matches_total", rule="no-training", action="block") == 1
    assert rig.value("gatekeeper_request_duration_seconds_count", action="block") == 1
    assert rig.value("gatekeeper_responses_total", code="4xx", source="gate") == 1
    assert rig.value("gatekeeper_response_bytes_total", crawler="GPTBot") == 10
    assert rig.value("gatekeeper_upstream_duration_seconds_count") == 0


def test_a_forwarded_request_adds_only_the_gate_s_own_time_to_the_gate_histogram(
    rig: Rig,
) -> None:
    # 2.1 ms in all, 1 ms of it waiting on the upstream: the gate took 0.3 ms to decide
    # and hand the request on.
    rig.recorder.observe(observation(UNKNOWN, ALLOW, upstream=0.001, gate=0.0003))
    assert rig.value("gatekeeper_gate_duration_seconds_count", action="allow") == 1
    assert rig.value("gatekeeper_gate_duration_seconds_sum", action="allow") == 0.0003
    assert rig.value("gatekeeper_gate_duration_seconds_bucket", action="allow",
                     le="0.00025") == 0
    assert rig.value("gatekeeper_gate_duration_seconds_bucket", action="allow",
                     le="0.0005") == 1
    assert rig.value("gatekeeper_request_duration_seconds_sum", action="allow") == 0.0021234


def test_an_answer_of_the_gate_s_own_is_all_gate_time(rig: Rig) -> None:
    rig.recorder.observe(observation(Classification(Kind.CRAWLER, GPTBOT), BLOCK,
                                     upstream=None))
    assert rig.value("gatekeeper_gate_duration_seconds_count", action="block") == 1
    assert rig.value("gatekeeper_gate_duration_seconds_sum", action="block") == 0.0021234
    assert rig.value("gatekeeper_gate_duration_seconds_count", action="allow") == 0


def test_repeated_requests_add_up(rig: Rig) -> None:
    obs = observation(UNKNOWN, ALLOW)
    for _ in range(3):
        rig.recorder.observe(obs)
    assert rig.value("gatekeeper_requests_total", crawler="unknown", purpose="none",
                     identity="unknown", action="allow", reason="allowed") == 3
    assert rig.value("gatekeeper_upstream_duration_seconds_count") == 3
    assert rig.value("gatekeeper_response_bytes_total", crawler="unknown") == 30


def test_crawler_names_outside_the_catalog_become_other(rig: Rig) -> None:
    rig.recorder.observe(observation(Classification(Kind.CRAWLER, ROGUE), BLOCK))
    assert rig.value("gatekeeper_requests_total", crawler="other", purpose="ai-training",
                     identity="unverified", action="block", reason="blocked") == 1
    assert rig.value("gatekeeper_requests_total", crawler="RogueBot", purpose="ai-training",
                     identity="unverified", action="block", reason="blocked") is None


def test_rate_limited_requests_are_counted_per_crawler(rig: Rig) -> None:
    rig.recorder.observe(observation(Classification(Kind.CRAWLER, GPTBOT), LIMIT))
    rig.recorder.observe(observation(OTHER_BOT, LIMIT))
    assert rig.value("gatekeeper_rate_limited_total", crawler="GPTBot") == 1
    assert rig.value("gatekeeper_rate_limited_total", crawler="other-bot") == 1


def test_upstream_errors_are_counted_by_kind(rig: Rig) -> None:
    rig.recorder.observe(observation(UNKNOWN, ALLOW, status=502, upstream=None, error="refused"))
    assert rig.value("gatekeeper_upstream_errors_total", kind="refused") == 1
    assert rig.value("gatekeeper_responses_total", code="5xx", source="gate") == 1
    (line,) = rig.lines()
    assert line["upstream_error"] == "refused"
    assert line["upstream_ms"] is None


def test_request_log_line_is_json_with_the_documented_fields(rig: Rig) -> None:
    rig.recorder.observe(observation(Classification(Kind.CRAWLER, GPTBOT), BLOCK,
                                     headers={"User-Agent": "GPTBot/1.2"}))
    (line,) = rig.lines()
    assert list(line) == REQUEST_FIELDS
    assert line["event"] == "request"
    assert line == line | {
        "client_ip": "192.0.2.1", "method": "GET", "host": "example.com", "path": "/a",
        "has_query": False, "status": 403, "bytes": 10, "user_agent": "GPTBot/1.2",
        "crawler": "GPTBot", "purpose": "ai-training", "identity": "unverified",
        "rule": "no-training", "action": "block", "reason": "blocked", "dry_run": False,
        "duration_ms": 2.123, "upstream_ms": 1.0, "upstream_error": None,
    }


def test_the_log_has_no_credentials_cookies_or_query_values(rig: Rig) -> None:
    secrets = {
        "Authorization": "Bearer tok-123456",
        "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
        "Cookie": "session=abc987",
        "X-Api-Key": "key-555",
        "X-Gatekeeper-License": "lic-777",
        "User-Agent": "Mozilla/5.0",
    }
    rig.recorder.observe(observation(UNKNOWN, ALLOW, headers=secrets,
                                     query="token=qsecret&email=a%40b.example"))
    text = rig.out.getvalue()
    for secret in ("tok-123456", "cHJveHk6c2VjcmV0", "abc987", "key-555", "lic-777",
                   "qsecret", "a%40b.example", "Authorization", "Cookie"):
        assert secret not in text
    (line,) = rig.lines()
    assert line["has_query"] is True
    assert line["user_agent"] == "Mozilla/5.0"


def test_the_user_agent_is_truncated(rig: Rig) -> None:
    rig.recorder.observe(observation(UNKNOWN, ALLOW, headers={"User-Agent": "A" * 5000}))
    (line,) = rig.lines()
    assert line["user_agent"] == "A" * MAX_UA_LOGGED


def test_dry_runs_are_flagged(rig: Rig) -> None:
    rig.recorder.observe(observation(Classification(Kind.CRAWLER, GPTBOT), DRY))
    (line,) = rig.lines()
    assert line["dry_run"] is True
    assert line["reason"] == "dry_run"
    assert rig.value("gatekeeper_requests_total", crawler="GPTBot", purpose="ai-training",
                     identity="unverified", action="block", reason="dry_run") == 1


def test_request_lines_are_skipped_above_info_but_metrics_still_count() -> None:
    out = io.StringIO()
    gk_logging.configure("json", "warning", out, cache_loggers=False)
    registry = CollectorRegistry()
    Recorder(Metrics(registry, [])).observe(observation(UNKNOWN, ALLOW))
    assert out.getvalue() == ""
    assert registry.get_sample_value("gatekeeper_requests_total", {
        "crawler": "unknown", "purpose": "none", "identity": "unknown", "action": "allow",
        "reason": "allowed"}) == 1


def test_store_fallbacks_are_counted_and_warned_about_once_per_interval(rig: Rig) -> None:
    for _ in range(3):
        rig.recorder.observe(observation(Classification(Kind.CRAWLER, GPTBOT), LIMIT,
                                         fallback=True))
    assert rig.value("gatekeeper_store_fallbacks_total", store="memory") == 3
    warnings = [e for e in rig.lines() if e["event"] == "store_unavailable"]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"


def test_the_store_warning_reports_how_many_fell_back_since_the_last(rig: Rig) -> None:
    times = iter([100.0, 101.0, 102.0, 100.0 + record.STORE_WARNING_INTERVAL + 1])
    recorder = Recorder(rig.recorder.metrics, clock=lambda: next(times))
    for _ in range(4):
        recorder.store_fallback()
    counts = [e["fallbacks"] for e in rig.lines() if e["event"] == "store_unavailable"]
    assert counts == [1, 3]


def test_reload_results_are_counted_and_logged_with_problems(rig: Rig) -> None:
    rig.recorder.reload_result(False, "p.yaml", [Problem("p.yaml", 3, "rules[0].action", "bad")],
                               10.0)
    rig.recorder.reload_result(True, "p.yaml", [], 11.0)
    assert rig.value("gatekeeper_policy_reloads_total", result="failure") == 1
    assert rig.value("gatekeeper_policy_reloads_total", result="success") == 1
    assert rig.value("gatekeeper_policy_last_reload_success_timestamp_seconds") == 11.0
    failed = next(e for e in rig.lines() if e["event"] == "policy_reload_failed")
    assert failed["level"] == "error"
    assert failed["problems"] == ["p.yaml:3: rules[0].action: bad"]


def test_a_failed_reload_keeps_the_serving_policy_s_digest(rig: Rig) -> None:
    rig.recorder.reload_result(True, "p.yaml", [], 10.0, digest="4edcc766d210")
    rig.recorder.reload_result(False, "p.yaml", [Problem("p.yaml", 3, "rules[0]", "bad")],
                               11.0)
    assert rig.recorder.reloads["serving"] == {"source": "p.yaml", "since": 10.0,
                                               "digest": "4edcc766d210"}
    assert rig.recorder.reloads["last"] == {"ok": False, "at": 11.0, "source": "p.yaml",
                                            "problems": ["p.yaml:3: rules[0]: bad"]}


def test_a_reload_with_the_policy_initialises_its_rules(rig: Rig) -> None:
    policy = Policy(rules=(Rule("no-training", Match(), Block()),), source="p.yaml")
    rig.recorder.reload_result(True, "p.yaml", policy=policy)
    assert rig.value("gatekeeper_rule_matches_total", rule="no-training", action="block") == 0
    assert rig.value("gatekeeper_policy_info", source="p.yaml", mode="enforce") == 1
    assert rig.value("gatekeeper_policy_last_reload_success_timestamp_seconds") is not None


def test_bad_requests_are_counted_and_logged_by_reason(rig: Rig) -> None:
    rig.recorder.bad_request("encoded_slash", "192.0.2.1", "GET", 400)
    assert rig.value("gatekeeper_bad_requests_total", reason="encoded_slash") == 1
    (line,) = rig.lines()
    assert line["event"] == "bad_request"
    assert line == line | {"client_ip": "192.0.2.1", "method": "GET", "status": 400,
                           "reason": "encoded_slash"}
