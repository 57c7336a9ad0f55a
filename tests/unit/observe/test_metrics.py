"""Metrics: names, bounded label values, pre-initialised series, the child cache."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gatekeeper import __version__
from gatekeeper.core.decision import Reason
from gatekeeper.core.model import (
    Allow,
    Block,
    Match,
    Mode,
    Monitor,
    Policy,
    RateLimit,
    RequireLicense,
    Rule,
    action_name,
)
from gatekeeper.observe.metrics import (
    ACTIONS,
    CLIENT_FAULTS,
    IDENTITY_LABELS,
    MAX_BAD_REQUEST_REASONS,
    MAX_RULE_LABELS,
    PURPOSE_LABELS,
    REASON_LABELS,
    STATUS_CLASSES,
    UPSTREAM_ERROR_KINDS,
    Metrics,
)

DOCS = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry, ["GPTBot", "ClaudeBot"])


def requests(registry: CollectorRegistry, **labels: str) -> float | None:
    return registry.get_sample_value("gatekeeper_requests_total", labels)


def _families(registry: CollectorRegistry) -> dict[str, str]:
    text = generate_latest(registry).decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_every_gatekeeper_metric_follows_prometheus_naming(registry: CollectorRegistry) -> None:
    Metrics(registry, [])
    families = {n: t for n, t in _families(registry).items() if n.startswith("gatekeeper_")}
    assert len(families) == 33
    samples = generate_latest(registry).decode()
    for name, kind in families.items():
        assert re.fullmatch(r"gatekeeper_[a-z_]+", name), name
        if kind == "counter":
            # The parser strips _total from a counter's family name; the samples keep it.
            assert f"# HELP {name}_total " in samples, name
        elif kind == "histogram":
            assert name.endswith("_seconds"), name
        else:
            # A gauge is a time, an info series, or a count of named things.
            assert name.endswith(("_seconds", "_info", "_prefixes", "_records")), name


def test_every_gatekeeper_metric_is_documented(registry: CollectorRegistry) -> None:
    Metrics(registry, [])
    docs = DOCS.read_text()
    for name, kind in _families(registry).items():
        if name.startswith("gatekeeper_"):
            exposed = name + "_total" if kind == "counter" else name
            assert f"`{exposed}`" in docs, exposed


def test_process_collectors_are_added_to_the_injected_registry(
    registry: CollectorRegistry,
) -> None:
    Metrics(registry, [])
    assert "python_info" in _families(registry)


def test_no_created_series_by_default(registry: CollectorRegistry) -> None:
    Metrics(registry, [])
    assert b"_created" not in generate_latest(registry)


def test_the_action_vocabulary_is_the_policy_s() -> None:
    instances = (Allow(), Block(), RateLimit(1.0, 1), RequireLicense(), Monitor())
    assert {action_name(a) for a in instances} == set(ACTIONS)


def test_request_series_counts_with_the_given_labels(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    series = metrics.request_series("GPTBot", "ai-training", "unverified", "block", "blocked",
                                    "no-training")
    metrics.request(series, 0.01, 0, 403, None)
    assert requests(registry, crawler="GPTBot", purpose="ai-training", identity="unverified",
                    action="block", reason="blocked") == 1
    assert registry.get_sample_value(
        "gatekeeper_rule_matches_total", {"rule": "no-training", "action": "block"}) == 1
    assert registry.get_sample_value(
        "gatekeeper_request_duration_seconds_count", {"action": "block"}) == 1
    assert registry.get_sample_value("gatekeeper_rate_limited_total", {"crawler": "GPTBot"}) \
        is None


def test_request_series_are_cached_per_label_tuple(metrics: Metrics) -> None:
    first = metrics.request_series("GPTBot", "ai-training", "unverified", "allow", "allowed",
                                   "default")
    again = metrics.request_series("GPTBot", "ai-training", "unverified", "allow", "allowed",
                                   "default")
    assert again is first


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("GPTBot", "GPTBot"),
        ("unknown", "unknown"),
        ("other-bot", "other-bot"),
        ("NotInTheCatalog", "other"),
        ("gptbot", "other"),  # labels are exact catalog names, not case-folded
        ("crawler", "other"),  # a Kind value, but never a crawler label
        ("", "other"),
    ],
)
def test_crawler_labels_are_catalog_names_or_a_bucket(
    metrics: Metrics, registry: CollectorRegistry, name: str, label: str
) -> None:
    metrics.request(metrics.request_series(name, "ai-training", "unverified", "allow", "allowed",
                           "default"), 0.01, 0, 200, None)
    assert requests(registry, crawler=label, purpose="ai-training", identity="unverified",
                    action="allow", reason="allowed") == 1


def test_values_outside_the_closed_vocabularies_become_other(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.request(metrics.request_series("GPTBot", "astrology", "trusted", "teleport", "whim",
                           "default"), 0.01, 0, 200, None)
    assert requests(registry, crawler="GPTBot", purpose="other", identity="other",
                    action="other", reason="other") == 1


def test_no_purpose_is_labelled_none(metrics: Metrics, registry: CollectorRegistry) -> None:
    series = metrics.request_series("unknown", None, "unknown", "allow", "allowed", "default")
    metrics.request(series, 0.01, 0, 200, None)
    assert requests(registry, crawler="unknown", purpose="none", identity="unknown",
                    action="allow", reason="allowed") == 1
    assert "none" in PURPOSE_LABELS


def test_rate_limited_requests_get_the_rate_limited_counter(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    series = metrics.request_series("Unlisted", "ai-training", "unverified", "rate_limit",
                                    Reason.RATE_LIMITED, "slow-down")
    metrics.request(series, 0.001, 0, 429, None)
    assert registry.get_sample_value("gatekeeper_rate_limited_total", {"crawler": "other"}) == 1


def test_rule_labels_are_capped_then_other(metrics: Metrics) -> None:
    labels = {metrics.rule_label(f"rule-{i}") for i in range(MAX_RULE_LABELS * 2)}
    # "default" is always a label and counts towards the cap.
    assert len(labels - {"other"}) == MAX_RULE_LABELS - 1
    assert "other" in labels
    assert metrics.rule_label("default") == "default"
    assert metrics.rule_label("rule-0") == "rule-0"  # already seen: keeps its name


def test_pre_initialised_series_exist_at_zero(registry: CollectorRegistry) -> None:
    Metrics(registry, ["GPTBot"], store="redis")
    value = registry.get_sample_value
    for action in ACTIONS:
        assert value("gatekeeper_request_duration_seconds_count", {"action": action}) == 0
        assert value("gatekeeper_gate_duration_seconds_count", {"action": action}) == 0
    for kind in (*UPSTREAM_ERROR_KINDS, "other"):
        assert value("gatekeeper_upstream_errors_total", {"kind": kind}) == 0
    for code in STATUS_CLASSES:
        for source in ("gate", "upstream"):
            assert value("gatekeeper_responses_total", {"code": code, "source": source}) == 0
    for result in ("success", "failure"):
        assert value("gatekeeper_policy_reloads_total", {"result": result}) == 0
    assert value("gatekeeper_store_fallbacks_total", {"store": "redis"}) == 0
    assert value("gatekeeper_rule_matches_total", {"rule": "default", "action": "allow"}) == 0
    assert value("gatekeeper_build_info", {"version": __version__}) == 1


@pytest.mark.parametrize(
    ("status", "code"),
    [(101, "1xx"), (200, "2xx"), (304, "3xx"), (403, "4xx"), (429, "4xx"), (502, "5xx"),
     (0, "other"), (99, "other"), (600, "other")],
)
def test_status_codes_are_counted_by_class(
    metrics: Metrics, registry: CollectorRegistry, status: int, code: str
) -> None:
    metrics.status(status)
    assert registry.get_sample_value("gatekeeper_responses_total",
                                     {"code": code, "source": "gate"}) == 1


def test_upstream_errors_are_bounded_and_exclude_client_faults(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    for kind in ("refused", "timeout", "timeout", "gremlins", *CLIENT_FAULTS):
        metrics.upstream_error(kind)
    value = registry.get_sample_value
    assert value("gatekeeper_upstream_errors_total", {"kind": "refused"}) == 1
    assert value("gatekeeper_upstream_errors_total", {"kind": "timeout"}) == 2
    assert value("gatekeeper_upstream_errors_total", {"kind": "other"}) == 1
    for fault in CLIENT_FAULTS:
        assert value("gatekeeper_upstream_errors_total", {"kind": fault}) is None


def test_bad_request_reasons_are_bounded(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.bad_request("encoded_slash")
    metrics.bad_request("encoded_slash")
    metrics.bad_request("Not A Code\n")
    metrics.bad_request("x" * 100)
    for i in range(MAX_BAD_REQUEST_REASONS + 10):
        metrics.bad_request(f"reason_{i}")
    value = registry.get_sample_value
    assert value("gatekeeper_bad_requests_total", {"reason": "encoded_slash"}) == 2
    families = {s.labels["reason"] for f in registry.collect() for s in f.samples
                if f.name == "gatekeeper_bad_requests"}
    assert len(families) <= MAX_BAD_REQUEST_REASONS + 1
    assert value("gatekeeper_bad_requests_total", {"reason": "other"}) == 2 + 11


def _policy(*rules: Rule, default: Allow | Block | None = None,
            mode: Mode = Mode.ENFORCE) -> Policy:
    return Policy(rules=rules, default=default or Allow(), mode=mode, source="policy.yaml")


def test_policy_loaded_initialises_each_rule_and_drops_removed_ones(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    def matches(rule: str, action: str) -> float | None:
        return registry.get_sample_value(
            "gatekeeper_rule_matches_total", {"rule": rule, "action": action})

    def info(mode: str) -> float | None:
        return registry.get_sample_value(
            "gatekeeper_policy_info", {"source": "policy.yaml", "mode": mode})

    metrics.policy_loaded(_policy(
        Rule("no-training", Match(), Block()), Rule("watch", Match(), Monitor()),
    ))
    assert matches("no-training", "block") == 0
    assert matches("watch", "monitor") == 0
    assert info("enforce") == 1

    metrics.policy_loaded(_policy(Rule("watch", Match(), Monitor()), default=Block(),
                                  mode=Mode.MONITOR))
    assert matches("no-training", "block") is None
    assert matches("default", "allow") is None
    assert matches("default", "block") == 0
    assert info("enforce") is None
    assert info("monitor") == 1


def test_series_cached_before_a_reload_do_not_count_into_removed_rules(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.policy_loaded(_policy(Rule("old", Match(), Block())))
    metrics.request_series("GPTBot", "ai-training", "unverified", "block", "blocked", "old")
    metrics.policy_loaded(_policy(Rule("new", Match(), Block())))
    series = metrics.request_series("GPTBot", "ai-training", "unverified", "block", "blocked",
                                    "new")
    metrics.request(series, 0.01, 0, 200, None)
    assert registry.get_sample_value(
        "gatekeeper_rule_matches_total", {"rule": "new", "action": "block"}) == 1


def test_a_policy_with_too_many_rules_folds_the_rest_into_other(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    rules = [Rule(f"r{i}", Match(), Block()) for i in range(MAX_RULE_LABELS + 20)]
    metrics.policy_loaded(_policy(*rules))
    names = {s.labels["rule"] for f in registry.collect() for s in f.samples
             if f.name == "gatekeeper_rule_matches"}
    assert len(names) == MAX_RULE_LABELS + 1
    assert "other" in names


def test_reload_sets_the_success_timestamp(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.reload(False, 5.0)
    assert registry.get_sample_value(
        "gatekeeper_policy_last_reload_success_timestamp_seconds") == 0
    metrics.reload(True, 7.0)
    assert registry.get_sample_value(
        "gatekeeper_policy_last_reload_success_timestamp_seconds") == 7.0


def test_closed_vocabularies_match_the_enums() -> None:
    assert set(REASON_LABELS) == {r.value for r in Reason}
    assert "unknown" in IDENTITY_LABELS


def test_batched_request_numbers_export_exactly_what_direct_observation_would(
    registry: CollectorRegistry,
) -> None:
    # The hot path adds to plain numbers and flushes through prometheus_client's
    # histogram internals; a second registry observes the same values directly.
    from prometheus_client import Histogram

    from gatekeeper.observe.metrics import LATENCY_BUCKETS

    metrics = Metrics(registry, ["GPTBot"], process_metrics=False)
    direct_registry = CollectorRegistry()
    direct = Histogram("gatekeeper_request_duration_seconds", "d", ["action"],
                       buckets=LATENCY_BUCKETS, registry=direct_registry)
    series = metrics.request_series("GPTBot", "ai-training", "verified", "allow", "allowed",
                                    "default")
    values = [0.0001, 0.0005, 0.0007, 0.001, 0.02, 0.3, 3.0, 29.9, 30.0, 31.0, 500.0]
    for v in values:
        metrics.request(series, v, 10, 200, v / 2)
        direct.labels("allow").observe(v)
    got = {(s.name, s.labels.get("le")): s.value for f in registry.collect()
           for s in f.samples if s.name.startswith("gatekeeper_request_duration_seconds")
           and s.labels.get("action") == "allow"}
    want = {(s.name, s.labels.get("le")): s.value for f in direct_registry.collect()
            for s in f.samples}
    assert got == want
    assert registry.get_sample_value("gatekeeper_upstream_duration_seconds_count") == len(values)
    assert registry.get_sample_value("gatekeeper_response_bytes_total",
                                     {"crawler": "GPTBot"}) == 10 * len(values)
    # With an upstream duration, the status was the upstream's.
    assert registry.get_sample_value("gatekeeper_responses_total",
                                     {"code": "2xx", "source": "upstream"}) == len(values)


def test_a_collection_from_another_thread_does_not_flush(registry: CollectorRegistry) -> None:
    import threading

    metrics = Metrics(registry, [], process_metrics=False)
    series = metrics.request_series("unknown", None, "unknown", "allow", "allowed", "default")
    metrics.request(series, 0.01, 0, 200, None)
    seen: list[float | None] = []
    labels = {"crawler": "unknown", "purpose": "none", "identity": "unknown",
              "action": "allow", "reason": "allowed"}
    thread = threading.Thread(target=lambda: seen.append(
        registry.get_sample_value("gatekeeper_requests_total", labels)))
    thread.start()
    thread.join()
    assert seen == [0.0]  # pending: only the owning thread moves the numbers
    metrics.flush()
    assert registry.get_sample_value("gatekeeper_requests_total", labels) == 1


def test_the_gate_s_own_time_is_batched_into_its_histogram_exactly(
    registry: CollectorRegistry,
) -> None:
    from prometheus_client import Histogram

    from gatekeeper.observe.metrics import GATE_BUCKETS

    metrics = Metrics(registry, [], process_metrics=False)
    direct_registry = CollectorRegistry()
    direct = Histogram("gatekeeper_gate_duration_seconds", "d", ["action"],
                       buckets=GATE_BUCKETS, registry=direct_registry)
    series = metrics.request_series("unknown", None, "unknown", "allow", "allowed", "default")
    values = [0.00001, 0.00005, 0.00007, 0.0003, 0.001, 0.04, 0.1, 2.5, 9.0]
    for v in values:
        metrics.request(series, 1.0 + v, 10, 200, 1.0, v)
        direct.labels("allow").observe(v)
    got = {(s.name, s.labels.get("le")): s.value for f in registry.collect()
           for s in f.samples if s.name.startswith("gatekeeper_gate_duration_seconds")
           and s.labels.get("action") == "allow"}
    want = {(s.name, s.labels.get("le")): s.value for f in direct_registry.collect()
            for s in f.samples}
    assert got == want


def test_without_a_gate_time_the_whole_duration_is_the_gate_s(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    series = metrics.request_series("GPTBot", "ai-training", "spoofed", "block", "blocked",
                                    "default")
    metrics.request(series, 0.002, 0, 403, None)
    assert registry.get_sample_value(
        "gatekeeper_gate_duration_seconds_sum", {"action": "block"}) == 0.002
