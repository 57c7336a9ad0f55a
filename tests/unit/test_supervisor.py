"""The supervisor's pure parts: merging workers' metrics, refusing per-worker limits."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.errors import SettingsError
from gatekeeper.policy.loader import load_default_policy, load_policy_text
from gatekeeper.settings import Settings
from gatekeeper.supervisor import check_shared_limits, merge_metrics


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


def test_several_workers_need_a_shared_store_for_global_limits() -> None:
    catalog = load_catalog()
    settings = dataclasses.replace(Settings(), workers=2)
    with pytest.raises(SettingsError, match="rate-limit-ai-assistants"):
        check_shared_limits(settings, load_default_policy(catalog))
    check_shared_limits(dataclasses.replace(settings, store="redis"),
                        load_default_policy(catalog))
    no_limits = load_policy_text("version: 1\nrules: [{match: {purposes: [ai-training]}, "
                                 "action: block}]\n", "p.yaml", catalog)
    check_shared_limits(settings, no_limits)
