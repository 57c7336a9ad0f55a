"""Metrics and the request log line: bounded labels, and no secrets in logs."""

from __future__ import annotations

import io
import json

from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry

from gatekeeper.core.catalog import UNKNOWN, Classification, Crawler, Kind, Purpose
from gatekeeper.core.decision import Decision, Reason
from gatekeeper.core.facts import Identity, RequestFacts
from gatekeeper.errors import Problem
from gatekeeper.gate import Outcome
from gatekeeper.observe import logging as gk_logging
from gatekeeper.observe.metrics import MAX_RULE_LABELS, Metrics
from gatekeeper.observe.record import Observation, Recorder

GPTBOT = Crawler("GPTBot", "OpenAI", Purpose.AI_TRAINING, ("gptbot",), "GPTBot")
ROGUE = Crawler("RogueBot", "?", Purpose.AI_TRAINING, ("rogue",), "RogueBot")


def recorder() -> tuple[Recorder, CollectorRegistry, io.StringIO]:
    out = io.StringIO()
    gk_logging.configure("json", "info", out)
    registry = CollectorRegistry()
    return Recorder(Metrics(registry, ["GPTBot"]), gk_logging.get_logger("t")), registry, out


def observation(cls: Classification, decision: Decision, **headers: str) -> Observation:
    h = CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}))
    facts = RequestFacts("GET", "example.com", "/a", "token=secret", h, "192.0.2.1", 0.0)
    identity = Identity.UNKNOWN if cls.crawler is None else Identity.UNVERIFIED
    return Observation(facts, Outcome(cls, identity, decision), decision.status or 200, 10,
                       0.002, 0.001)


BLOCK = Decision("block", "no-training", Reason.BLOCKED, forward=False, status=403)
ALLOW = Decision("allow", "default", Reason.ALLOWED, forward=True)


def test_observe_counts_by_crawler_purpose_identity_action_and_reason() -> None:
    rec, registry, _ = recorder()
    rec.observe(observation(Classification(Kind.CRAWLER, GPTBOT), BLOCK))
    assert registry.get_sample_value("gatekeeper_requests_total", {
        "crawler": "GPTBot", "purpose": "ai-training", "identity": "unverified",
        "action": "block", "reason": "blocked"}) == 1
    assert registry.get_sample_value(
        "gatekeeper_rule_matches_total", {"rule": "no-training", "action": "block"}) == 1
    assert registry.get_sample_value(
        "gatekeeper_request_duration_seconds_count", {"action": "block"}) == 1


def test_crawler_names_outside_the_catalog_become_other() -> None:
    rec, registry, _ = recorder()
    rec.observe(observation(Classification(Kind.CRAWLER, ROGUE), BLOCK))
    assert registry.get_sample_value("gatekeeper_requests_total", {
        "crawler": "other", "purpose": "ai-training", "identity": "unverified",
        "action": "block", "reason": "blocked"}) == 1


def test_rule_labels_are_capped() -> None:
    metrics = Metrics(CollectorRegistry(), [])
    labels = {metrics.rule_label(f"rule-{i}") for i in range(MAX_RULE_LABELS + 50)}
    assert len(labels) == MAX_RULE_LABELS + 1
    assert "other" in labels


def test_request_log_line_is_json_with_the_documented_fields_and_no_secrets() -> None:
    rec, _, out = recorder()
    rec.observe(observation(UNKNOWN, ALLOW, Authorization="License tok123",
                            Cookie="session=abc", User_Agent="Mozilla/5.0"))
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    for key in ("time", "client_ip", "method", "path", "status", "bytes", "crawler", "identity",
                "rule", "action", "reason", "duration_ms", "upstream_ms", "user_agent"):
        assert key in line
    assert line["event"] == "request"
    assert line["path"] == "/a"
    text = out.getvalue()
    for secret in ("tok123", "session=abc", "token=secret"):
        assert secret not in text


def test_reload_results_are_counted_and_logged_with_problems() -> None:
    rec, registry, out = recorder()
    rec.reload_result(False, "p.yaml", [Problem("p.yaml", 3, "rules[0].action", "bad")], 10.0)
    rec.reload_result(True, "p.yaml", [], 11.0)
    assert registry.get_sample_value("gatekeeper_policy_reloads_total", {"result": "failure"}) == 1
    assert registry.get_sample_value("gatekeeper_policy_reloads_total", {"result": "success"}) == 1
    assert registry.get_sample_value(
        "gatekeeper_policy_last_reload_success_timestamp_seconds") == 11.0
    assert "p.yaml:3: rules[0].action: bad" in out.getvalue()


def test_bad_requests_are_counted_by_reason() -> None:
    rec, registry, _ = recorder()
    rec.bad_request("encoded_slash", "192.0.2.1", "GET", 400)
    assert registry.get_sample_value(
        "gatekeeper_bad_requests_total", {"reason": "encoded_slash"}) == 1
