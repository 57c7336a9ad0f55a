"""Every gatekeeper_* metric, built in one place into an injected registry.

Label values are bounded, because every distinct value is a time series kept in
Prometheus for as long as it exists:

- `crawler`: a catalog name, `unknown`, `other-bot`, or `other` for anything
  else (a name the catalog does not know must not create a series);
- `rule`: a rule of the serving policy, or `default`; at most `MAX_RULE_LABELS`
  names, then `other`;
- `purpose`, `identity`, `action`, `reason`, `kind`, `code`, `result`: closed
  vocabularies listed below, `other` when something outside them shows up;
- bad-request `reason`: short snake_case codes from the edge, capped as well.

The request path is hot: `.labels()` validates and locks on every call, and every
`inc()` or `observe()` takes a lock and several Python calls. So the per-request
series are looked up once per distinct label tuple and cached (`request_series`),
and a request only adds to plain integers in its `RequestSeries`; `flush()` moves
those into the prometheus_client children. The registry flushes before every
collection made on the event loop's thread (a test's `get_sample_value`), and the
admin endpoint flushes on that thread before rendering in a worker thread, so a
scrape always sees every finished request. Multiprocess mode, when it comes,
changes only this module: every metric is a plain Counter, Gauge or Histogram
built here.
"""

from __future__ import annotations

import re
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from gatekeeper import __version__
from gatekeeper.core.behaviour import Reason as BehaviourReason
from gatekeeper.core.catalog import Kind, Purpose
from gatekeeper.core.decision import Reason
from gatekeeper.core.facts import Identity
from gatekeeper.core.httpsig import SigFailure
from gatekeeper.core.licence_check import LicenseCheck, LicenseStatus
from gatekeeper.core.model import Policy, Rule, action_name
from gatekeeper.licensing.tokens import TokenFailure
from gatekeeper.verify.identity import CHECK_RESULTS, METHODS, Verification
from gatekeeper.verify.range_update import UpdateResult
from gatekeeper.verify.ranges import RangeRegistry

OTHER: Final = "other"
NO_PURPOSE: Final = "none"  # browsers and unrecognised clients have no purpose
DEFAULT_RULE: Final = "default"
MAX_RULE_LABELS: Final = 200
MAX_BAD_REQUEST_REASONS: Final = 64
# Distinct raw label tuples remembered by `request_series`. The real space is far
# smaller (crawlers x rules x a few states); the bound only stops a pathological
# policy from growing the cache forever.
MAX_CACHED_SERIES: Final = 8192

# Closed label vocabularies: exported for the documentation and the tests.
CRAWLER_BUCKETS: Final = (
    Kind.UNKNOWN.value, Kind.OTHER_BOT.value, Kind.UNDECLARED_BOT.value, OTHER,
)
PURPOSE_LABELS: Final = (*(p.value for p in Purpose), NO_PURPOSE)
IDENTITY_LABELS: Final = tuple(i.value for i in Identity)
# The policy's action keywords (gatekeeper.core.model.action_name).
ACTIONS: Final = ("allow", "block", "rate_limit", "require_license", "monitor")
REASON_LABELS: Final = tuple(r.value for r in Reason)
UPSTREAM_ERROR_KINDS: Final = ("refused", "reset", "timeout", "protocol")
# Failures the edge reports while forwarding that are the client's doing, not the
# upstream's: they show in the status codes, not as upstream errors.
CLIENT_FAULTS: Final = frozenset({
    "body_too_large", "client_timeout", "client_disconnect", "malformed_body",
})
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Who answered: the gate itself (a decision, an error of its own, a failed
# upstream), or the upstream, whose status was relayed. An origin's 5xx is then
# not mistaken for the gate's.
RESPONSE_SOURCES: Final = ("gate", "upstream")
_CLASSES: Final = len(STATUS_CLASSES) + 1  # and "other"
RELOAD_RESULTS: Final = ("success", "failure")

# From a cache hit (0.5 ms) to a slow origin (30 s): the gate's own share is in
# the lowest buckets, the upstream's in the rest.
LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
# The gate's own share of a request: a decision from memory takes tens of
# microseconds, one that waited on DNS, the store or the origin's robots.txt up to
# their budgets; 0.1 is the GatekeeperGateLatencyHigh threshold.
GATE_BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5,
)
# Identity checks: from an in-memory range lookup (microseconds) to a DNS lookup
# that ran out of its budget.
CHECK_BUCKETS: Final = (0.00001, 0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0)
SIGNATURE_FAILURES: Final = tuple(f.value for f in SigFailure)
RECLASSIFIED_BY: Final = ("web-bot-auth", "behaviour")
RANGE_UPDATE_RESULTS: Final = ("updated", "unchanged", "failed")
LICENSE_RESULTS: Final = tuple(s.value for s in LicenseStatus)
TOKEN_FAILURES: Final = frozenset(f.value for f in TokenFailure)
BEHAVIOUR_REASONS: Final = tuple(r.value for r in BehaviourReason)
DOCUMENTS: Final = ("robots.txt", "tdmrep.json", "license.xml", "terms", "jwks.json")
_REASON_CODE = re.compile(r"[a-z][a-z0-9_]{0,39}")


class _PendingHistogram:
    """Observations of one histogram child, counted per bucket until flushed.

    prometheus_client keeps a child's buckets as separate (non-cumulative) values
    plus a sum, and exposes only `observe(one value)`; adding a flushed batch goes
    through those attributes. tests/unit/observe/test_metrics.py checks that a
    flush exports exactly what observing each value would have."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Histogram) -> None:
        self.child = child
        self.bounds: tuple[float, ...] = tuple(child._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def flush(self) -> None:
        child = self.child
        counts = self.counts
        for i, n in enumerate(counts):
            if n:
                child._buckets[i].inc(n)
                counts[i] = 0
        child._sum.inc(self.total)
        self.total = 0.0


class RequestSeries:
    """What one kind of request adds to the metrics, in plain numbers until `flush`."""

    __slots__ = ("_bytes", "_children", "_duration", "_gate", "_limited", "_requests", "dirty")

    def __init__(self, requests: Counter, rule: Counter, duration: Histogram,
                 response_bytes: Counter, rate_limited: Counter | None,
                 gate: Histogram) -> None:
        self._children = (requests, rule, response_bytes, rate_limited)
        self._duration = _PendingHistogram(duration)
        self._gate = _PendingHistogram(gate)
        self._requests = 0
        self._bytes = 0
        self._limited = rate_limited is not None
        self.dirty = False

    def record(self, duration: float, sent: int, gate: float) -> None:
        """One request: counted, its durations (whole, the gate's own) observed, its
        body bytes added."""
        self._requests += 1
        self._bytes += sent
        self._duration.observe(duration)
        self._gate.observe(gate)

    def flush(self) -> None:
        n = self._requests
        if not n:
            return
        requests, rule, response_bytes, rate_limited = self._children
        requests.inc(n)
        rule.inc(n)
        if self._bytes:
            response_bytes.inc(self._bytes)
        if rate_limited is not None:
            rate_limited.inc(n)
        self._duration.flush()
        self._gate.flush()
        self._requests = 0
        self._bytes = 0


class _FlushFirst:
    """A collector that returns no metrics: collecting it flushes the pending
    request counts, on the thread that owns them only (see the module docstring)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._thread = threading.get_ident()

    def collect(self) -> Iterator[object]:
        if threading.get_ident() == self._thread:
            self._metrics.flush()
        return iter(())


class Metrics:
    """Builds every gatekeeper_* metric into `registry` and keeps labels bounded.

    `crawler_names` are the catalog's names: the only crawler label values besides
    `CRAWLER_BUCKETS`. `store` names the configured store for the fallback counter.
    `process_metrics` adds the standard process_*, python_* and gc collectors, which
    a registry other than the global default does not have. `created_series=False`
    (the default) stops prometheus_client from exporting a `_created` series next
    to every counter and histogram series: they double what every scrape renders
    and Prometheus stores, and no query here uses them. That switch is
    process-wide in prometheus_client, and takes effect for metrics built after it.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        crawler_names: Iterable[str],
        *,
        store: str = "memory",
        process_metrics: bool = True,
        created_series: bool = False,
    ) -> None:
        if not created_series:
            disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
        self.registry = registry
        self.store = store
        self._crawlers = frozenset(crawler_names) | frozenset(CRAWLER_BUCKETS)
        self._rules: set[str] = {DEFAULT_RULE}
        self._rule_pairs: set[tuple[str, str]] = set()
        self._bad_reasons: dict[str, Counter] = {}
        self._series: dict[tuple[object, ...], RequestSeries] = {}
        self._dirty: list[RequestSeries] = []
        # Label sets for licensed traffic: the serving policy's licences and the
        # registered licensees (set by the wiring); anything else is "other".
        self.licenses: frozenset[str] = frozenset()
        self.licensees: frozenset[str] = frozenset()
        self._status_counts = [0] * (_CLASSES * len(RESPONSE_SOURCES))
        # Registered before every metric, so a collection flushes before it reads them.
        registry.register(_FlushFirst(self))  # type: ignore[arg-type]
        self._build(registry)
        if process_metrics:
            _add_process_collectors(registry)
        self._preinitialise()

    def _build(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gatekeeper_requests_total",
            "Requests decided, by crawler, purpose, identity state, action and reason.",
            ["crawler", "purpose", "identity", "action", "reason"], registry=registry,
        )
        self.rule_matches = Counter(
            "gatekeeper_rule_matches_total",
            "Requests decided by each policy rule (default: no rule matched).",
            ["rule", "action"], registry=registry,
        )
        self.responses = Counter(
            "gatekeeper_responses_total",
            "Responses sent to clients for decided requests, by status class and source "
            "(gate: the gate's own answer, including its 502 and 504; upstream: the "
            "upstream's status, relayed).",
            ["code", "source"], registry=registry,
        )
        self.request_duration = Histogram(
            "gatekeeper_request_duration_seconds",
            "Whole request as seen by the gate, from its headers to the last byte sent.",
            ["action"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.gate_duration = Histogram(
            "gatekeeper_gate_duration_seconds",
            "The gate's own time per decided request, by action: from its headers until "
            "the upstream request is about to be sent (forwarded) or the answer is ready "
            "(answered by the gate).",
            ["action"], buckets=GATE_BUCKETS, registry=registry,
        )
        self.upstream_duration = Histogram(
            "gatekeeper_upstream_duration_seconds",
            "From forwarding a request to receiving the upstream's response headers.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.upstream_errors = Counter(
            "gatekeeper_upstream_errors_total",
            "Forwarded requests the upstream failed, by kind.", ["kind"], registry=registry,
        )
        self.client_faults = Counter(
            "gatekeeper_client_faults_total",
            "Requests the client's side cut short: a body over the limit, a client too "
            "slow (a timeout, or below the minimum rate), one that hung up, or a body "
            "whose chunked framing broke, by fault.",
            ["fault"], registry=registry,
        )
        self.rate_limited = Counter(
            "gatekeeper_rate_limited_total", "Requests answered 429 by a rate limit.",
            ["crawler"], registry=registry,
        )
        self.bad_requests = Counter(
            "gatekeeper_bad_requests_total",
            "Requests refused before a decision (malformed, ambiguous or too large: 400, "
            "413, 431, ...), by reason.",
            ["reason"], registry=registry,
        )
        self.response_bytes = Counter(
            "gatekeeper_response_bytes_total", "Response body bytes sent to clients.",
            ["crawler"], registry=registry,
        )
        self.policy_reloads = Counter(
            "gatekeeper_policy_reloads_total", "Policy reload attempts, by result.",
            ["result"], registry=registry,
        )
        self.policy_last_reload = Gauge(
            "gatekeeper_policy_last_reload_success_timestamp_seconds",
            "Unix time the serving policy was loaded.", registry=registry,
        )
        self.policy_info = Gauge(
            "gatekeeper_policy_info",
            "Always 1: the serving policy's source (its file) and mode (enforce, monitor) "
            "as labels.",
            ["source", "mode"], registry=registry,
        )
        self.store_fallbacks = Counter(
            "gatekeeper_store_fallbacks_total",
            "Decisions made with the documented fallback because the store failed.",
            ["store"], registry=registry,
        )
        self.build_info = Gauge(
            "gatekeeper_build_info", "Always 1: the running version as a label.",
            ["version"], registry=registry,
        )
        self._build_identity(registry)

    def _build_identity(self, registry: CollectorRegistry) -> None:
        self.spoofed = Counter(
            "gatekeeper_spoofed_requests_total",
            "Requests whose user agent claims a crawler that its operator's published data "
            "refutes, by claimed crawler.", ["crawler"], registry=registry,
        )
        self.verifications = Counter(
            "gatekeeper_verifications_total",
            "Identity checks run, by method (web-bot-auth, ip-ranges, reverse-dns) and "
            "result (verified, refuted, unknown: could not finish, pending: reverse DNS "
            "went on after the request's budget).", ["method", "result"],
            registry=registry,
        )
        self.verification_duration = Histogram(
            "gatekeeper_verification_duration_seconds",
            "Time a request waited on one identity check, by method (near 0 for a cached "
            "or background DNS answer).", ["method"],
            buckets=CHECK_BUCKETS, registry=registry,
        )
        self.signature_failures = Counter(
            "gatekeeper_signature_failures_total",
            "Web Bot Auth signatures presented and rejected, by reason.", ["reason"],
            registry=registry,
        )
        self.reclassifications = Counter(
            "gatekeeper_reclassifications_total",
            "Requests classified otherwise than their user agent says, by evidence "
            "(web-bot-auth: a valid signature names a catalog crawler; behaviour: the "
            "crawler is then undeclared-bot) and resulting crawler.", ["by", "crawler"],
            registry=registry,
        )
        self.ranges_age = Gauge(
            "gatekeeper_crawler_ranges_age_seconds",
            "Seconds since each published range list was last fetched or confirmed "
            "unchanged (for a shipped snapshot never refreshed: since the operator published "
            "it; NaN for a list with no data).",
            ["list"], registry=registry,
        )
        self.ranges_prefixes = Gauge(
            "gatekeeper_crawler_ranges_prefixes",
            "Prefixes loaded from each range list (0: no data, the list can neither "
            "verify nor refute).",
            ["list"], registry=registry,
        )
        self.robots_violations = Counter(
            "gatekeeper_robots_violations_total",
            "Requests from catalog crawlers for paths the origin's robots.txt disallows "
            "for them, whatever the policy then did, by crawler.", ["crawler"],
            registry=registry,
        )
        self.declaration_reads = Counter(
            "gatekeeper_declaration_requests_total",
            "Requests for the public documents that declare the policy (robots.txt, "
            "tdmrep.json, license.xml, terms, jwks.json), by document and the catalog "
            "crawler the user agent names (other for everyone else).",
            ["document", "crawler"], registry=registry,
        )
        self.undeclared = Counter(
            "gatekeeper_undeclared_bot_reasons_total",
            "Reasons present when a client claiming no crawler was scored an undeclared "
            "bot, one count per reason.", ["reason"], registry=registry,
        )
        self.license_checks = Counter(
            "gatekeeper_license_checks_total",
            "Licence tokens presented to require_license rules, by result and token failure "
            "reason (empty when granted); a request without a token is not counted.",
            ["result", "reason"], registry=registry,
        )
        self.licensed_requests = Counter(
            "gatekeeper_licensed_requests_total",
            "Requests served under a licence, by licence (one of the serving policy's) and "
            "registered licensee; anything else is other.",
            ["license", "licensee"], registry=registry,
        )
        self.licensed_bytes = Counter(
            "gatekeeper_licensed_bytes_total",
            "Response body bytes served under a licence, by licence and licensee.",
            ["license", "licensee"], registry=registry,
        )
        self.tokens_issued = Counter(
            "gatekeeper_license_tokens_issued_total",
            "Licence tokens issued by the licence server, by licence.", ["license"],
            registry=registry,
        )
        self.tokens_revoked = Gauge(
            "gatekeeper_license_tokens_revoked_records",
            "Revoked licence tokens still remembered (gatekeeper token revoke), until each "
            "would have expired.",
            registry=registry,
        )
        self.ledger_last_seq = Gauge(
            "gatekeeper_ledger_records",
            "Usage-ledger records written to disk (the newest record's sequence number): "
            "compare with `gatekeeper ledger verify` to detect a ledger cut short.",
            registry=registry,
        )
        self.range_updates = Counter(
            "gatekeeper_crawler_ranges_updates_total",
            "Background range-list refresh attempts, by list and result (updated; unchanged: "
            "304 or the same bytes; failed: the last good copy stays).", ["list", "result"],
            registry=registry,
        )

    def _preinitialise(self) -> None:
        # Series that exist at zero before traffic, so rates, ratios and alerts
        # (increase(...) > 0) work from the first scrape rather than the first event.
        self.build_info.labels(__version__).set(1)
        for action in ACTIONS:
            self.request_duration.labels(action)
            self.gate_duration.labels(action)
        # Indexed by source * _CLASSES + class (see `request`).
        self._status = [self.responses.labels(code, source) for source in RESPONSE_SOURCES
                        for code in (*STATUS_CLASSES, OTHER)]
        self._upstream_pending = _PendingHistogram(self.upstream_duration)
        self._upstream_errors = {k: self.upstream_errors.labels(k) for k in UPSTREAM_ERROR_KINDS}
        self._upstream_error_other = self.upstream_errors.labels(OTHER)
        self._client_faults = {k: self.client_faults.labels(k) for k in sorted(CLIENT_FAULTS)}
        self._reloads = {r: self.policy_reloads.labels(r) for r in RELOAD_RESULTS}
        self._store_fallback = self.store_fallbacks.labels(self.store)
        self.rule_matches.labels(DEFAULT_RULE, "allow")
        self._rule_pairs.add((DEFAULT_RULE, "allow"))
        self._checks = {
            (m, r): (self.verifications.labels(m, r), self.verification_duration.labels(m))
            for m in METHODS for r in CHECK_RESULTS
        }
        self._sig_failures = {r: self.signature_failures.labels(r) for r in SIGNATURE_FAILURES}

    # -- label bounding -------------------------------------------------------

    def crawler_label(self, name: str) -> str:
        return name if name in self._crawlers else OTHER

    def rule_label(self, name: str) -> str:
        """`name` while fewer than MAX_RULE_LABELS rules have been seen, then `other`.

        `policy_loaded` resets the set to the serving policy's rules, so the cap
        only bites for a policy with more rules than that.
        """
        if name in self._rules:
            return name
        if len(self._rules) < MAX_RULE_LABELS:
            self._rules.add(name)
            return name
        return OTHER

    # -- the request path -----------------------------------------------------

    def request_series(
        self,
        crawler: str,
        purpose: str | None,
        identity: str,
        action: str,
        reason: str,
        rule: str,
    ) -> RequestSeries:
        """The children for one request's labels; one dict lookup after the first call."""
        key = (crawler, purpose, identity, action, reason, rule)
        series = self._series.get(key)
        if series is None:
            series = self._new_series(crawler, purpose, identity, action, reason, rule)
            if len(self._series) >= MAX_CACHED_SERIES:
                self.flush()
                self._series.clear()
            self._series[key] = series
        return series

    def _new_series(
        self,
        crawler: str,
        purpose: str | None,
        identity: str,
        action: str,
        reason: str,
        rule: str,
    ) -> RequestSeries:
        # Validated here, on a cache miss, so the hot path never pays for it.
        crawler_l = self.crawler_label(crawler)
        action_l = _closed(action, ACTIONS)
        reason_l = _closed(reason, REASON_LABELS)
        return RequestSeries(
            requests=self.requests.labels(
                crawler_l, _closed(purpose or NO_PURPOSE, PURPOSE_LABELS),
                _closed(identity, IDENTITY_LABELS), action_l, reason_l,
            ),
            rule=self._rule_child(self.rule_label(rule), action_l),
            duration=self.request_duration.labels(action_l),
            response_bytes=self.response_bytes.labels(crawler_l),
            rate_limited=(
                self.rate_limited.labels(crawler_l)
                if reason_l == Reason.RATE_LIMITED else None
            ),
            gate=self.gate_duration.labels(action_l),
        )

    def _rule_child(self, rule: str, action: str) -> Counter:
        self._rule_pairs.add((rule, action))
        return self.rule_matches.labels(rule, action)

    def request(self, series: RequestSeries, duration: float, sent: int, status: int,
                upstream: float | None, gate: float | None = None) -> None:
        """One finished request's numbers, added without locks (see `flush`). `gate`
        is the gate's own share of `duration`; None when it is all of it (an answer
        of the gate's own, observed as soon as it was ready)."""
        series.record(duration, sent, duration if gate is None else gate)
        if not series.dirty:
            series.dirty = True
            self._dirty.append(series)
        index = status // 100 - 1
        index = index if 0 <= index < 5 else 5
        if upstream is not None:  # the status is the upstream's
            index += _CLASSES
            self._upstream_pending.observe(upstream)
        self._status_counts[index] += 1

    def flush(self) -> None:
        """Move the pending request numbers into the exported metrics."""
        dirty, self._dirty = self._dirty, []
        for series in dirty:
            series.dirty = False
            series.flush()
        counts = self._status_counts
        for i, n in enumerate(counts):
            if n:
                self._status[i].inc(n)
                counts[i] = 0
        self._upstream_pending.flush()

    def status(self, code: int) -> None:
        """A response of the gate's own."""
        index = code // 100 - 1
        self._status[index if 0 <= index < 5 else 5].inc()

    def upstream_error(self, kind: str) -> None:
        fault = self._client_faults.get(kind)
        if fault is not None:
            fault.inc()
            return
        self._upstream_errors.get(kind, self._upstream_error_other).inc()

    def identity_checked(self, verification: Verification, claimed: str) -> None:
        """One request's identity checks; `claimed` is the crawler its user agent named."""
        for check in verification.checks:
            pair = self._checks.get((check.method, check.result))
            if pair is not None:
                pair[0].inc()
                pair[1].observe(check.elapsed)
        if verification.identity is Identity.SPOOFED:
            self.spoofed.labels(self.crawler_label(claimed)).inc()
        failure = verification.signature_failure
        if failure is not None:
            self._sig_failures.get(failure, self._sig_failures[SigFailure.MALFORMED]).inc()

    def license_checked(self, check: LicenseCheck) -> None:
        reason = check.failure if check.failure in TOKEN_FAILURES else (
            "" if not check.failure else OTHER)
        self.license_checks.labels(_closed(check.status.value, LICENSE_RESULTS), reason).inc()

    def licensed(self, license: str, licensee: str, sent: int) -> None:
        """`licensee` is a label only for registered licensees (`licensees`), and the
        licence only for the serving policy's licences: both sets are bounded."""
        lic = license if license in self.licenses else OTHER
        who = licensee if licensee in self.licensees else OTHER
        self.licensed_requests.labels(lic, who).inc()
        if sent:
            self.licensed_bytes.labels(lic, who).inc(sent)

    def token_issued(self, license: str) -> None:
        self.tokens_issued.labels(license if license in self.licenses else OTHER).inc()

    def revocations(self, count: Callable[[], int]) -> None:
        self.tokens_revoked.set_function(lambda: float(count()))

    def ledger_opened(self, durable_seq: Callable[[], int]) -> None:
        self.ledger_last_seq.set_function(lambda: float(durable_seq()))

    def robots_violation(self, crawler: str) -> None:
        self.robots_violations.labels(self.crawler_label(crawler)).inc()

    def declaration_read(self, document: str, crawler: str) -> None:
        self.declaration_reads.labels(_closed(document, DOCUMENTS),
                                      self.crawler_label(crawler)).inc()

    def undeclared_bot(self, reasons: Iterable[str]) -> None:
        for reason in reasons:
            self.undeclared.labels(_closed(reason, BEHAVIOUR_REASONS)).inc()

    def reclassified(self, by: str, crawler: str) -> None:
        self.reclassifications.labels(_closed(by, RECLASSIFIED_BY),
                                      self.crawler_label(crawler)).inc()

    # -- events off the request path -------------------------------------------

    def ranges_loaded(self, registry: RangeRegistry) -> None:
        """Age and size gauges for every list of `registry` (the serving one)."""
        for source_id in registry.sources():
            state = registry.info(source_id)
            self.ranges_prefixes.labels(source_id).set(state.prefixes)
            stamp = state.fetched_at or state.updated_at
            age = self.ranges_age.labels(source_id)
            if stamp is None:
                age.set(float("nan"))  # no data at all: no age to report
            else:
                age.set_function(_seconds_since(stamp))

    def range_update(self, result: UpdateResult) -> None:
        self.range_updates.labels(result.source_id,
                                  _closed(result.status, RANGE_UPDATE_RESULTS)).inc()

    def bad_request(self, reason: str) -> None:
        child = self._bad_reasons.get(reason)
        if child is None:
            label = reason
            if not _REASON_CODE.fullmatch(reason) or (
                len(self._bad_reasons) >= MAX_BAD_REQUEST_REASONS
            ):
                label = OTHER
            child = self.bad_requests.labels(label)
            if label != OTHER:
                self._bad_reasons[reason] = child
        child.inc()

    def store_fallback(self) -> None:
        self._store_fallback.inc()

    def reload(self, ok: bool, now: float | None = None) -> None:
        self._reloads["success" if ok else "failure"].inc()
        if ok:
            if now is None:
                self.policy_last_reload.set_to_current_time()
            else:
                self.policy_last_reload.set(now)

    def policy_loaded(self, policy: Policy) -> None:
        """Make the serving policy's rules the rule label set, each at zero.

        Series of rules the new policy no longer has are removed, so the label set
        follows the policy rather than everything ever loaded; a rule that never
        matches still shows (at 0), which is how dead rules are found.
        """
        self.flush()  # pending counts of series about to be dropped go out first
        pairs = {(DEFAULT_RULE, action_name(policy.default))}
        for rule in _all_rules(policy):
            pairs.add((rule.name, action_name(rule.action)))
        self._rules = {DEFAULT_RULE}
        wanted: set[tuple[str, str]] = set()
        for name, action in pairs:
            wanted.add((self.rule_label(name), action))
        for gone in self._rule_pairs - wanted:
            self.rule_matches.remove(*gone)
        self._rule_pairs = set()
        for rule_label, action in wanted:
            self._rule_child(rule_label, action)
        # Cached series may hold removed children or old rule labels.
        self._series.clear()
        self.policy_info.clear()
        self.policy_info.labels(policy.source, policy.mode.value).set(1)
        self.licenses = frozenset(lic.name for lic in policy.licenses)


def _seconds_since(stamp: float) -> Callable[[], float]:
    return lambda: time.time() - stamp


def _closed(value: str, vocabulary: tuple[str, ...]) -> str:
    return value if value in vocabulary else OTHER


def _all_rules(policy: Policy) -> Iterable[Rule]:
    yield from policy.rules
    for section in policy.host_sections:
        yield from section.rules


def _add_process_collectors(registry: CollectorRegistry) -> None:
    # The global default registry gets these at import; an injected one does not.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
