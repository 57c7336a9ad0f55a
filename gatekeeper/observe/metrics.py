"""Every gatekeeper_* metric, built in one place into an injected registry.

Label values are bounded: crawler names come from the catalog (anything else
is "other"), rule names from the loaded policy (capped), everything else from
closed enums. Children are cached per label tuple because `.labels()` costs
more than the increment itself on the request path.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gatekeeper import __version__
from gatekeeper.core.catalog import Kind, Purpose
from gatekeeper.core.decision import Reason
from gatekeeper.core.facts import Identity

OTHER = "other"
MAX_RULE_LABELS = 200
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
ACTIONS = ("allow", "block", "rate_limit", "require_license", "monitor")
UPSTREAM_ERRORS = ("refused", "reset", "timeout", "protocol", "client_disconnect")


class Metrics:
    def __init__(self, registry: CollectorRegistry, crawler_names: Iterable[str]) -> None:
        self.registry = registry
        self._crawlers = frozenset(crawler_names) | {k.value for k in Kind}
        self.requests = Counter(
            "gatekeeper_requests_total",
            "Requests decided, by crawler, purpose, identity state, action and outcome.",
            ["crawler", "purpose", "identity", "action", "reason"], registry=registry,
        )
        self.rule_matches = Counter(
            "gatekeeper_rule_matches_total", "Requests decided by each policy rule.",
            ["rule", "action"], registry=registry,
        )
        self.request_duration = Histogram(
            "gatekeeper_request_duration_seconds",
            "Whole request as seen by the gate, from headers received to last byte sent.",
            ["action"], buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.upstream_duration = Histogram(
            "gatekeeper_upstream_duration_seconds",
            "Time from forwarding a request to receiving the upstream's response headers.",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.upstream_errors = Counter(
            "gatekeeper_upstream_errors_total", "Upstream failures, by kind.", ["kind"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "gatekeeper_rate_limited_total", "Requests answered 429 by a rate limit.",
            ["crawler"], registry=registry,
        )
        self.bad_requests = Counter(
            "gatekeeper_bad_requests_total",
            "Requests refused before a decision (malformed or ambiguous), by reason.",
            ["reason"], registry=registry,
        )
        self.response_bytes = Counter(
            "gatekeeper_response_bytes_total", "Response body bytes sent to clients.",
            ["crawler"], registry=registry,
        )
        self.policy_reloads = Counter(
            "gatekeeper_policy_reloads_total", "Policy reloads, by result.", ["result"],
            registry=registry,
        )
        self.policy_last_reload = Gauge(
            "gatekeeper_policy_last_reload_success_timestamp_seconds",
            "When the serving policy was last loaded successfully.", registry=registry,
        )
        self.store_fallbacks = Counter(
            "gatekeeper_store_fallbacks_total",
            "Decisions made with the documented fallback because the store was unavailable.",
            ["store"], registry=registry,
        )
        self.build_info = Gauge(
            "gatekeeper_build_info", "Always 1; the version as a label.", ["version"],
            registry=registry,
        )
        self.build_info.labels(__version__).set(1)
        self._children: dict[tuple[str, ...], Counter] = {}
        self._rules: set[str] = set()
        self._durations: dict[str, Histogram] = {}
        self._preinitialise()

    def _preinitialise(self) -> None:
        # Zero series for what dashboards always show, so rates exist before traffic.
        for action in ACTIONS:
            self.request_duration.labels(action)
        for kind in UPSTREAM_ERRORS:
            self.upstream_errors.labels(kind)
        for result in ("success", "failure"):
            self.policy_reloads.labels(result)
        self.store_fallbacks.labels("memory")

    def observe_duration(self, action: str, seconds: float) -> None:
        child = self._durations.get(action)
        if child is None:
            child = self._durations[action] = self.request_duration.labels(action)
        child.observe(seconds)

    def crawler_label(self, name: str) -> str:
        return name if name in self._crawlers else OTHER

    def rule_label(self, name: str) -> str:
        if name in self._rules:
            return name
        if len(self._rules) >= MAX_RULE_LABELS:
            return OTHER
        self._rules.add(name)
        return name

    def request(self, crawler: str, purpose: str, identity: str, action: str, reason: str,
                rule: str) -> None:
        key = (crawler, purpose, identity, action, reason, rule)
        child = self._children.get(key)
        if child is None:
            child = self.requests.labels(
                self.crawler_label(crawler), purpose, identity, action, reason
            )
            self._children[key] = child
            self._children[("rule", *key)] = self.rule_matches.labels(
                self.rule_label(rule), action
            )
        child.inc()
        self._children[("rule", *key)].inc()


# Closed label vocabularies, exported for documentation and tests.
PURPOSE_LABELS = (*tuple(p.value for p in Purpose), "none")
IDENTITY_LABELS = tuple(i.value for i in Identity)
REASON_LABELS = tuple(r.value for r in Reason)
