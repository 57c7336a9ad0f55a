"""Web Bot Auth for one request: profile checks, allowed agents, keys, signature, replay.

The order keeps the expensive and the stateful parts last: `inspect_signature` (pure,
no key needed) runs first, so a malformed, stale or unbound signature never causes a
directory fetch; the agent must be one the caller allows before anything is fetched
for it; the nonce is recorded only for a signature that verified, so forged requests
cannot fill the replay cache or burn a real agent's nonces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from gatekeeper.core.httpsig import (
    SigFailure,
    SignedRequest,
    SigResult,
    inspect_signature,
    normalize_origin,
    verify_candidate,
)
from gatekeeper.errors import StoreUnavailable
from gatekeeper.verify.keydir import KeyDirectory


class ReplayCache(Protocol):
    """Remembers keys for a while; `gatekeeper.store` implementations provide it."""

    async def first_seen(self, key: str, ttl: float, now: float) -> bool:
        """True the first time `key` is seen within `ttl` seconds, False after."""
        ...


class WebBotAuthVerifier:
    """Verifies Web Bot Auth signatures against allowed agents' keys, once per nonce."""

    def __init__(self, directory: KeyDirectory, replay: ReplayCache, *,
                 max_skew: float = 60.0, max_age: float = 300.0) -> None:
        self._directory = directory
        self._replay = replay
        self._max_skew = max_skew
        self._max_age = max_age

    async def verify(self, request: SignedRequest, allowed_agents: Sequence[str],
                     now: float) -> SigResult:
        """The outcome for `request`; `allowed_agents` are the https origins that may sign
        for the crawler it claims to be (the catalog's `signature_agents`) or for any."""
        candidate = inspect_signature(request, now, max_skew=self._max_skew,
                                      max_age=self._max_age)
        if candidate.failure is not None:
            return candidate.result(candidate.failure)
        allowed = [origin for a in allowed_agents if (origin := normalize_origin(a))]
        if candidate.agent_header:
            if candidate.agent is None or candidate.agent not in allowed:
                return candidate.result(SigFailure.UNKNOWN_KEY,
                                        "the covered Signature-Agent is not an allowed origin")
            origins = [candidate.agent]
        else:
            # No Signature-Agent: older signers registered keys out of band. The keyid is
            # a thumbprint, so finding it in an allowed agent's directory binds the
            # request to that agent as firmly as the header would.
            origins = allowed
        for origin in origins:
            keys = await self._directory.keys_for(origin, now)
            if candidate.keyid in keys:
                result = verify_candidate(replace(candidate, agent=origin), keys)
                break
        else:
            errors = [e for o in origins if (e := self._directory.last_error(o))]
            if errors:
                return candidate.result(SigFailure.DIRECTORY_ERROR, "; ".join(errors))
            return candidate.result(SigFailure.UNKNOWN_KEY,
                                    f"no allowed agent publishes keyid {candidate.keyid!r}")
        if not result.ok:
            return result
        return await self._check_replay(result, now)

    async def _check_replay(self, result: SigResult, now: float) -> SigResult:
        # A nonce is acceptable for at most max_age + max_skew (see httpsig._check_time),
        # so remembering it that long catches every replay inside the window.
        key = f"wba-nonce|{result.keyid}|{result.nonce}"
        try:
            fresh = await self._replay.first_seen(key, self._max_age + self._max_skew, now)
        except StoreUnavailable:
            # Signature checks never depend on the store (DESIGN, failure modes): the
            # signature stands, unchecked for replay for as long as the store is down.
            return replace(result, replay_unchecked=True)
        if not fresh:
            return replace(result, ok=False, reason=SigFailure.REPLAYED,
                           detail="this nonce was already used")
        return result
