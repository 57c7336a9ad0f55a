"""The gate's answer for one request, as data.

A `Decision` is either "forward" (stream the request upstream) or "answer"
(send `status`, `headers` and `body` to the client). Adapters execute it and
never second-guess it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """Why the request ended the way it did. Closed set: also a metric label."""

    ALLOWED = "allowed"
    BLOCKED = "blocked"
    RATE_LIMITED = "rate_limited"
    LICENSE_REQUIRED = "license_required"  # no licence token, or the price was not accepted
    LICENSED = "licensed"  # a valid licence token covers this use: forwarded and metered
    LICENSE_INVALID = "license_invalid"  # the token is expired, forged, revoked, ...
    LICENSE_INSUFFICIENT = "license_insufficient"  # valid, but not for this path or use
    LICENSE_QUOTA = "license_quota"  # the licensee used up the licence's limits
    MONITORED = "monitored"
    DRY_RUN = "dry_run"  # mode: monitor turned a deny into a forward


@dataclass(frozen=True, slots=True)
class Decision:
    action: str  # the matched rule's action keyword ("allow", "block", ...)
    rule: str  # the matched rule's name, or "default"
    reason: Reason
    forward: bool
    status: int = 0  # the answer's status when not forwarded
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    # What would have been answered, for dry runs and `explain`.
    would_status: int = 0
    # Added to the upstream's response when forwarded (e.g. `crawler-charged`).
    response_headers: tuple[tuple[str, str], ...] = ()

    @property
    def denied(self) -> bool:
        return not self.forward
