"""The `Store` protocol: what the gate keeps between requests.

Implementations: `memory` (in-process, the embedded default) and `redis` (shared
by replicas, `gatekeeper.store.redis`). Both must pass the conformance suite in
`tests/conformance/`. An implementation that cannot answer raises
`gatekeeper.errors.StoreUnavailable`; the gate applies the documented failure mode.
"""

from __future__ import annotations

from typing import Protocol

from gatekeeper.core.behaviour import BehaviourConfig, Signals, Window
from gatekeeper.core.ratelimit import LimitResult


class Store(Protocol):
    async def take(self, key: str, rate: float, burst: int, now: float) -> LimitResult:
        """Spend one token from the bucket `key` (refilled at `rate`/s up to `burst`)."""
        ...

    async def first_seen(self, key: str, ttl: float, now: float) -> bool:
        """Record `key` for `ttl` seconds; True the first time, False while it is remembered.

        The replay cache: a Web Bot Auth nonce or a token id seen twice is a replay.
        """
        ...

    async def incr(self, key: str, amount: int, ttl: float, now: float) -> int:
        """Add `amount` to the counter `key` (created at 0, forgotten `ttl` seconds after
        its creation) and return the new total: licence quotas per period."""
        ...

    async def observe_client(
        self, keys: tuple[str, str], signals: Signals, now: float, cfg: BehaviourConfig
    ) -> tuple[Window, Window]:
        """Count one request in the behaviour windows of a client's address and network
        (`gatekeeper.core.behaviour.client_keys`); both windows, updated."""
        ...

    async def note_refusal(self, keys: tuple[str, str], crawler: str, now: float) -> None:
        """Remember that the gate refused `crawler` for this client (user-agent switching)."""
        ...

    async def revoke(self, token_id: str, until: float, now: float) -> None:
        """Remember that a licence token is revoked, until `until` (its expiry)."""
        ...

    async def revoked(self, token_id: str, now: float) -> bool:
        """Whether a token was revoked (and its revocation has not lapsed by `now`)."""
        ...

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...
