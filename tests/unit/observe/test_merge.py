"""Merging the workers' metrics and status documents into the supervisor's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gatekeeper.observe.activity import Activity
from gatekeeper.observe.merge import merge_metrics, merge_status


def _exposition(requests: int, duration: float, age: float) -> str:
    registry = CollectorRegistry()
    Counter("gk_requests", "Requests.", ["crawler"], registry=registry).labels(
        'a "quoted" \\ name').inc(requests)
    Histogram("gk_duration_seconds", "Duration.", buckets=(0.1, 1.0),
              registry=registry).observe(duration)
    Gauge("gk_age_seconds", "Age.", registry=registry).set(age)
    return generate_latest(registry).decode()


def test_counters_and_histograms_are_summed_and_gauges_take_the_largest() -> None:
    merged = merge_metrics([_exposition(3, 0.05, 10), _exposition(4, 0.5, 30)])
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    assert set(families) == {"gk_requests", "gk_duration_seconds", "gk_age_seconds"}
    [total] = families["gk_requests"].samples
    assert total.value == 7
    assert total.labels == {"crawler": 'a "quoted" \\ name'}
    buckets = {s.labels.get("le"): s.value for s in families["gk_duration_seconds"].samples
               if s.name.endswith("_bucket")}
    assert buckets == {"0.1": 1, "1.0": 2, "+Inf": 2}
    assert families["gk_age_seconds"].samples[0].value == 30


def test_one_worker_merges_to_itself() -> None:
    text = _exposition(5, 0.2, 1)
    original = {(s.name, tuple(s.labels.items())): s.value
                for f in text_string_to_metric_families(text) for s in f.samples
                if not s.name.endswith("_created")}
    merged = {(s.name, tuple(s.labels.items())): s.value
              for f in text_string_to_metric_families(merge_metrics([text])) for s in f.samples}
    assert merged == original


NOW = 1_796_006_400.0  # a minute's start


# crawler, purpose, reason, forwarded, identity, path, robots violation, licence
Seen = tuple[str, str | None, str, bool, str, str, bool, str]


def _worker_status(traffic: Sequence[Seen], policy: dict[str, Any],
                   minute: int = 0) -> dict[str, Any]:
    """A worker's document: `traffic` recorded into a real Activity, `minute` minutes on."""
    clock = [NOW]
    activity = Activity(minutes=5, clock=lambda: clock[0])
    for n, (crawler, purpose, reason, forwarded, identity, path, violation, licence) in \
            enumerate(traffic):
        clock[0] = NOW + 60 * (n % 2)
        activity.record(crawler, purpose, reason, forwarded, identity, path, violation,
                        licence, "acme" if licence else "")
    clock[0] = NOW + 60 * (1 + minute)
    operators = {"GPTBot": "OpenAI", "ClaudeBot": "Anthropic"}
    doc = activity.snapshot(lambda name: operators.get(name, ""))
    doc["policy"] = policy
    return doc


POLICY: dict[str, Any] = {"source": "/etc/gatekeeper/policy.yaml", "mode": "enforce", "rules": 7,
          "licences": ["ai-train-standard"], "serving_since": NOW - 100,
          "last_reload": {"ok": True, "at": NOW - 100, "source": "/etc/gatekeeper/policy.yaml",
                          "problems": []}}


def test_status_documents_are_summed_row_by_row_and_ranked_again() -> None:
    a = _worker_status([
        ("GPTBot", "ai-training", "blocked", False, "spoofed", "/a", True, ""),
        ("GPTBot", "ai-training", "blocked", False, "verified", "/a", False, ""),
        ("ClaudeBot", "ai-training", "licensed", True, "verified", "/b", False,
         "ai-train-standard"),
        ("unknown", None, "allowed", True, "unknown", "/", False, ""),
    ], POLICY)
    b = _worker_status([
        ("ClaudeBot", "ai-training", "allowed", True, "verified", "/b", False, ""),
        ("ClaudeBot", "ai-training", "licensed", True, "signed", "/b", False,
         "ai-train-standard"),
        ("ClaudeBot", "ai-training", "blocked", False, "verified", "/c", True, ""),
        ("unknown", None, "blocked", False, "unknown", "/", False, ""),
    ], {**POLICY, "serving_since": NOW - 50,
        "last_reload": {**POLICY["last_reload"], "at": NOW - 50}})
    merged = merge_status({"0": a, "1": b})
    rows = {row["crawler"]: row for row in merged["crawlers"]}
    # ClaudeBot has more requests in all (4 to 2): first, though worker 0 ranked GPTBot first.
    assert [row["crawler"] for row in merged["crawlers"]] == ["ClaudeBot", "GPTBot"]
    assert rows["ClaudeBot"] == {
        "crawler": "ClaudeBot", "operator": "Anthropic", "purpose": "ai-training",
        "requests": 4, "reasons": {"licensed": 2, "allowed": 1, "blocked": 1}, "refused": 1,
        "identities": {"verified": 3, "signed": 1}, "robots_violations": 1, "licensed": 2}
    assert rows["GPTBot"]["identities"] == {"spoofed": 1, "verified": 1}
    assert merged["browsers"] == {"requests": 2, "refused": 1}
    # /b: 1 + 2, ahead of /a (2), which led worker 0's list.
    assert [(p["path"], p["requests"], p["crawlers"]) for p in merged["top_paths"]] == [
        ("/b", 3, ["ClaudeBot"]), ("/a", 2, ["GPTBot"]), ("/c", 1, ["ClaudeBot"])]
    assert merged["licences"] == [{"license": "ai-train-standard", "requests": 2,
                                   "licensees": ["acme"]}]
    minutes = {m["minute"]: m for m in merged["per_minute"]}
    assert len(merged["per_minute"]) == 5
    assert minutes[NOW] == {"minute": NOW, "browsers": 0, "crawlers": 4, "refused": 2}
    assert minutes[NOW + 60] == {"minute": NOW + 60, "browsers": 2, "crawlers": 2,
                                 "refused": 2}
    assert merged["generated_at"] == NOW + 60
    assert merged["window_minutes"] == 5
    # The same policy on both; each loaded it at its own moment: the latest is shown.
    assert merged["policy"] == {**POLICY, "serving_since": NOW - 50,
                                "last_reload": {**POLICY["last_reload"],
                                                "at": NOW - 50},
                                "workers_agree": True, "differences": {}}


def test_workers_serving_different_policies_are_flagged_field_by_field() -> None:
    # `digest` stands for any field a worker adds: compared without being named here.
    a = _worker_status([], {**POLICY, "digest": "sha256:aaa"})
    b = _worker_status([], {**POLICY, "digest": "sha256:bbb", "rules": 8,
                            "last_reload": {**POLICY["last_reload"],
                                            "ok": False, "problems": ["p.yaml:3: bad"]}})
    policy = merge_status({"0": a, "1": b})["policy"]
    assert policy["workers_agree"] is False
    assert policy["differences"] == {
        "rules": {"0": 7, "1": 8},
        "digest": {"0": "sha256:aaa", "1": "sha256:bbb"},
        "last_reload.ok": {"0": True, "1": False},
        "last_reload.problems": {"0": [], "1": ["p.yaml:3: bad"]},
    }
    assert (policy["digest"], policy["rules"]) == ("sha256:aaa", 7)  # the first worker's


def test_a_worker_a_minute_ahead_keeps_the_window_to_its_length() -> None:
    traffic = [("GPTBot", "ai-training", "blocked", False, "spoofed", "/a", False, "")]
    merged = merge_status({"0": _worker_status(traffic, POLICY),
                           "1": _worker_status(traffic, POLICY, minute=1)})
    series = [m["minute"] for m in merged["per_minute"]]
    assert series == [NOW + 60 * n for n in range(-2, 3)]
    assert merged["crawlers"][0]["requests"] == 2


def test_top_paths_are_cut_to_twenty_after_summing() -> None:
    many = [("GPTBot", "ai-training", "blocked", False, "spoofed", f"/p{n}", False, "")
            for n in range(15)]
    others = [("GPTBot", "ai-training", "blocked", False, "spoofed", f"/q{n}", False, "")
              for n in range(15)] + [many[0]] * 3
    merged = merge_status({"0": _worker_status(many, POLICY),
                           "1": _worker_status(others, POLICY)})
    assert len(merged["top_paths"]) == 20
    assert merged["top_paths"][0] == {"path": "/p0", "requests": 4, "crawlers": ["GPTBot"]}
