"""The one place a finished request is observed: one metrics update, one log line.

Edge adapters report each request exactly once, when it is finished, through the
`Observer` protocol; `Recorder` is the implementation the wiring builds. Events
that are not requests (policy reloads, store outages) have their own hooks here
so that metrics and logs stay defined in one place.

What the request line leaves out, on purpose: the query string (it carries
session ids, signed-URL signatures, e-mail addresses and search terms: secrets
and personal data; `has_query` says one was there) and every header except the
user agent (Authorization, Cookie and friends carry credentials). The path is the
canonical one the gate decided on and forwarded, so the log, the policy and the
upstream's log agree on what was requested.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from structlog.typing import FilteringBoundLogger

from gatekeeper.core.decision import Reason
from gatekeeper.core.facts import RequestFacts
from gatekeeper.core.licence_check import LicenseCheck
from gatekeeper.core.model import License, Policy
from gatekeeper.errors import Problem
from gatekeeper.gate import Outcome
from gatekeeper.ledger.record import UsageRecord
from gatekeeper.observe import logging as gk_logging
from gatekeeper.observe.activity import Activity
from gatekeeper.observe.metrics import NO_PURPOSE, Metrics
from gatekeeper.verify.range_update import UpdateResult
from gatekeeper.verify.ranges import RangeRegistry

MAX_UA_LOGGED: Final = 256
# During a store outage every rate-limited request falls back; one warning per
# interval (with the count) says so without drowning the request lines.
STORE_WARNING_INTERVAL: Final = 10.0


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
    document: str = ""  # the public document served ("robots.txt", ...), "" for others
    # Seconds from the request's arrival until the gate had decided and the upstream
    # request was about to be sent: the latency the gate adds. None for an answer of
    # the gate's own observed as soon as it was ready: `duration` is then all the gate's.
    gate_duration: float | None = None


class Observer(Protocol):
    """What an edge adapter reports to. Called once per request, never raises."""

    def observe(self, obs: Observation) -> None:
        """A request the gate decided on, once it is finished."""
        ...

    def bad_request(self, reason: str, client_ip: str, method: str, status: int) -> None:
        """A request refused before a decision (400, 413, ...); `reason` is bounded."""
        ...


class UsageSink(Protocol):
    """Where licensed requests are written (`gatekeeper.ledger.file.FileLedger`)."""

    def append(self, record: UsageRecord) -> None: ...


class Recorder:
    """The Observer: metrics into `metrics`, one line per request into the log.

    `logger` takes the lines that are not requests (reloads, store warnings);
    `request_log` defaults to the writer of the current logging configuration,
    so configure logging before building the recorder.
    """

    def __init__(
        self,
        metrics: Metrics,
        logger: FilteringBoundLogger | None = None,
        *,
        request_log: gk_logging.RequestLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self._log = logger if logger is not None else gk_logging.get_logger("gatekeeper")
        self._requests = request_log if request_log is not None else gk_logging.request_log()
        self._fallbacks_unreported = 0
        self._fallback_warned_at = float("-inf")
        self._clock = clock  # paces the store warning
        # Set by the wiring once the ledger is open and the licence gate exists.
        self.ledger: UsageSink | None = None
        self.activity = Activity()  # the status page's last hour
        # The serving policy's reloads, as the status page shows them.
        self.reloads: dict[str, object] = {}
        self.count_licensed_bytes: Callable[[LicenseCheck, int, float], None] | None = None

    def observe(self, obs: Observation) -> None:
        outcome = obs.outcome
        cls = outcome.classification
        decision = outcome.decision
        m = self.metrics
        series = m.request_series(
            cls.name, cls.purpose, outcome.identity, decision.action, decision.reason,
            decision.rule,
        )
        m.request(series, obs.duration, obs.bytes_sent, obs.status, obs.upstream_duration,
                  obs.gate_duration)
        if obs.upstream_error is not None:
            m.upstream_error(obs.upstream_error)
        verification = outcome.verification
        if verification is not None:
            claimed = outcome.claimed.name if outcome.claimed is not None else cls.name
            m.identity_checked(verification, claimed)
            if outcome.claimed is not None and verification.signed_as is not None:
                m.reclassified("web-bot-auth", cls.name)
        license = outcome.license
        # The licence the request was served under, if it was.
        served_under = license.license if license is not None and \
            decision.reason == Reason.LICENSED else None
        if license is not None:
            m.license_checked(license)
            if served_under is not None:
                self._licensed(obs, license, served_under)
        score = outcome.behaviour
        if score is not None and score.undeclared:
            m.reclassified("behaviour", cls.name)
            m.undeclared_bot(score.reasons)
        if obs.document:
            m.declaration_read(obs.document, cls.name)
        if outcome.robots_violation:
            m.robots_violation(cls.name)
        if outcome.store_fallback:
            self.store_fallback()
        if not obs.document:
            self.activity.record(
                cls.name, cls.purpose, decision.reason, decision.forward, outcome.identity,
                obs.facts.path, outcome.robots_violation,
                served_under.name if served_under is not None else "",
                license.licensee if served_under is not None and license is not None else "")
        if self._requests.enabled:
            self._requests.write("request", _request_fields(obs))

    def _licensed(self, obs: Observation, check: LicenseCheck, lic: License) -> None:
        """A request served under a licence: metered, and written to the ledger."""
        self.metrics.licensed(lic.name, check.licensee, obs.bytes_sent)
        if self.count_licensed_bytes is not None:
            self.count_licensed_bytes(check, obs.bytes_sent, obs.facts.now)
        if self.ledger is None:
            return
        charged = check.charged
        crawler = obs.outcome.classification.name
        self.ledger.append(UsageRecord(
            time=obs.facts.now, licensee=check.licensee, license=lic.name, crawler=crawler,
            path=obs.facts.path, status=obs.status, bytes=obs.bytes_sent,
            price=str(charged.amount) if charged is not None else "",
            currency=charged.currency if charged is not None else "",
            section=obs.outcome.owner, token_id=check.token_id,
        ))

    def bad_request(self, reason: str, client_ip: str, method: str, status: int) -> None:
        self.metrics.bad_request(reason)
        self._requests.write("bad_request", {
            "client_ip": client_ip, "method": method, "status": status, "reason": reason,
        })

    def reload_result(
        self,
        ok: bool,
        source: str,
        problems: Sequence[Problem | str] = (),
        now: float | None = None,
        *,
        policy: Policy | None = None,
        digest: str | None = None,
    ) -> None:
        """A policy load or reload finished. Pass the serving `policy` on success:
        its rules become the rule label set, each at zero; and its content `digest`,
        which the status page shows (a failed reload keeps the last good one's)."""
        self.metrics.reload(ok, now)
        at = now if now is not None else time.time()
        self.reloads["last"] = {"ok": ok, "at": at, "source": source,
                                "problems": [str(p) for p in problems]}
        if ok:
            self.reloads["serving"] = {"source": source, "since": at, "digest": digest}
            if policy is not None:
                self.metrics.policy_loaded(policy)
            self._log.info("policy_reloaded", source=source)
        else:
            self._log.error("policy_reload_failed", source=source, kept="last good policy",
                            problems=[str(p) for p in problems])

    def ranges_refreshed(self, registry: RangeRegistry, results: Sequence[UpdateResult]) -> None:
        """A background range-list refresh finished; `registry` now serves."""
        # Failures are logged by the refresher itself (range_list_update_failed).
        for result in results:
            self.metrics.range_update(result)
        self.metrics.ranges_loaded(registry)
        updated = [r.source_id for r in results if r.status == "updated"]
        if updated:
            self._log.info("ranges_updated", lists=updated)

    def store_fallback(self) -> None:
        """A decision used the documented fallback because the store failed.

        `observe` calls this for an Outcome with `store_fallback` set; call it
        directly only for fallbacks that no observed request carries.
        """
        self.metrics.store_fallback()
        self._fallbacks_unreported += 1
        now = self._clock()
        if now - self._fallback_warned_at >= STORE_WARNING_INTERVAL:
            self._log.warning("store_unavailable", store=self.metrics.store,
                              fallbacks=self._fallbacks_unreported,
                              fallback="see docs/scaling-out.md: local rate limits and "
                                       "windows, licence checks answer 503")
            self._fallbacks_unreported = 0
            self._fallback_warned_at = now


def _robots(outcome: Outcome) -> dict[str, str] | None:
    """The robots.txt rule a catalog crawler broke; None when it broke none."""
    verdict = outcome.robots
    if verdict is None or not outcome.robots_violation:
        return None
    return {"rule": verdict.rule, "group": verdict.group}


def _behaviour(outcome: Outcome) -> dict[str, Any] | None:
    """Why a client was scored an undeclared bot; None when it was not."""
    score = outcome.behaviour
    if score is None or not score.undeclared:
        return None
    return {"score": score.value, "reasons": list(score.reasons), "scope": score.scope}


def _request_fields(obs: Observation) -> dict[str, Any]:
    facts = obs.facts
    outcome = obs.outcome
    verification = outcome.verification
    cls = outcome.classification
    decision = outcome.decision
    upstream = obs.upstream_duration
    # int()/1000 rather than round(): a third of the cost, and it still prints
    # as at most three decimals.
    return {
        "client_ip": facts.client_ip,
        "method": facts.method,
        "host": facts.host,
        "path": facts.path,
        "has_query": bool(facts.query),
        "status": obs.status,
        "bytes": obs.bytes_sent,
        "user_agent": facts.user_agent[:MAX_UA_LOGGED],
        "crawler": cls.name,
        "purpose": cls.purpose or NO_PURPOSE,
        "identity": outcome.identity,
        "verified_by": verification.method or None if verification else None,
        "identity_detail": verification.detail if verification else None,
        "robots": _robots(outcome),
        "behaviour": _behaviour(outcome),
        "rule": decision.rule,
        "action": decision.action,
        "reason": decision.reason,
        "dry_run": decision.reason == Reason.DRY_RUN,
        "duration_ms": int(obs.duration * 1_000_000) / 1000,
        "upstream_ms": None if upstream is None else int(upstream * 1_000_000) / 1000,
        "upstream_error": obs.upstream_error,
    }
