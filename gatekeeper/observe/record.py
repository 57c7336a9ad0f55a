"""The one place a finished request is observed: one metrics update, one log line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from gatekeeper.core.facts import RequestFacts
from gatekeeper.errors import Problem
from gatekeeper.gate import Outcome
from gatekeeper.observe.metrics import Metrics

MAX_UA_LOGGED = 256


@dataclass(frozen=True, slots=True)
class Observation:
    """What happened to one request, reported by the edge when it is finished."""

    facts: RequestFacts
    outcome: Outcome
    status: int  # status sent to the client
    bytes_sent: int  # response body bytes sent to the client
    duration: float  # seconds, whole request as seen by the gate
    upstream_duration: float | None = None  # seconds to upstream response headers
    upstream_error: str | None = None  # "refused", "reset", "timeout", ... when it failed


class Observer(Protocol):
    def observe(self, obs: Observation) -> None: ...

    def bad_request(self, reason: str, client_ip: str, method: str, status: int) -> None:
        """A request refused before a decision (400, 413, ...); `reason` is bounded."""
        ...


class Recorder:
    """Metrics plus the request log line. The query string and every header but the
    user agent stay out of the log: they can carry tokens and personal data."""

    def __init__(self, metrics: Metrics, logger: Any, store_name: str = "memory") -> None:
        self.metrics = metrics
        self._log = logger
        self._store = store_name

    def observe(self, obs: Observation) -> None:
        m = self.metrics
        outcome = obs.outcome
        cls = outcome.classification
        decision = outcome.decision
        crawler = cls.name
        # StrEnum members are str: used as labels and log values without `.value`.
        purpose_label: str = cls.purpose or "none"
        identity: str = outcome.identity
        reason: str = decision.reason
        m.request(crawler, purpose_label, identity, decision.action, reason, decision.rule)
        m.observe_duration(decision.action, obs.duration)
        if obs.upstream_duration is not None:
            m.upstream_duration.observe(obs.upstream_duration)
        if obs.upstream_error is not None:
            m.upstream_errors.labels(obs.upstream_error).inc()
        if reason == "rate_limited":
            m.rate_limited.labels(m.crawler_label(crawler)).inc()
        if obs.bytes_sent:
            m.response_bytes.labels(m.crawler_label(crawler)).inc(obs.bytes_sent)
        if outcome.store_fallback:
            m.store_fallbacks.labels(self._store).inc()
        facts = obs.facts
        self._log.info(
            "request",
            client_ip=facts.client_ip,
            method=facts.method,
            host=facts.host,
            path=facts.path,
            status=obs.status,
            bytes=obs.bytes_sent,
            user_agent=facts.user_agent[:MAX_UA_LOGGED],
            crawler=crawler,
            purpose=purpose_label,
            identity=identity,
            rule=decision.rule,
            action=decision.action,
            reason=reason,
            dry_run=reason == "dry_run",
            duration_ms=round(obs.duration * 1000, 3),
            upstream_ms=(
                round(obs.upstream_duration * 1000, 3)
                if obs.upstream_duration is not None else None
            ),
            upstream_error=obs.upstream_error,
        )

    def bad_request(self, reason: str, client_ip: str, method: str, status: int) -> None:
        self.metrics.bad_requests.labels(reason).inc()
        self._log.info("bad_request", client_ip=client_ip, method=method, status=status,
                       reason=reason)

    def reload_result(self, ok: bool, source: str, problems: list[Problem], now: float) -> None:
        self.metrics.policy_reloads.labels("success" if ok else "failure").inc()
        if ok:
            self.metrics.policy_last_reload.set(now)
            self._log.info("policy_reloaded", source=source)
        else:
            self._log.error("policy_reload_failed", source=source, kept="last good policy",
                            problems=[str(p) for p in problems])
