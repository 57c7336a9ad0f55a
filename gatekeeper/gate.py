"""The one orchestrator: who is this, what does the policy say, what happens.

Every edge adapter calls `Gate.decide(facts)` and executes the returned
`Outcome`; none contains policy logic of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gatekeeper.core.catalog import Classification
from gatekeeper.core.decision import Decision
from gatekeeper.core.evaluate import Selected, decide, select
from gatekeeper.core.facts import Identity, RequestFacts
from gatekeeper.core.model import Policy, RateLimit
from gatekeeper.core.ratelimit import bucket_key
from gatekeeper.errors import StoreUnavailable
from gatekeeper.store.base import Store
from gatekeeper.store.memory import MemoryStore


class Classifier(Protocol):
    """What the gate needs from the catalog (see `gatekeeper.core.catalog.Catalog`)."""

    def classify(self, user_agent: str) -> Classification: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """Everything decided about one request: what it is, and what to do with it."""

    classification: Classification
    identity: Identity
    decision: Decision
    # True when the store failed and a rate limit fell back to local counters.
    store_fallback: bool = False
    # The rule that matched and the action it named (the policy default when none did),
    # so `explain` can point at the rule without evaluating the policy a second time.
    selected: Selected | None = None


class Gate:
    def __init__(
        self,
        classifier: Classifier,
        policy: Callable[[], Policy],
        store: Store,
    ) -> None:
        # `policy` is a getter so a hot reload is seen by the next request.
        self._classifier = classifier
        self._policy = policy
        self._store = store
        self._local = MemoryStore(max_buckets=10_000)

    async def decide(self, facts: RequestFacts) -> Outcome:
        cls = self._classifier.classify(facts.user_agent)
        # Until identity verification lands, a claimed crawler is only a claim.
        identity = Identity.UNKNOWN if cls.crawler is None else Identity.UNVERIFIED
        policy = self._policy()
        selected = select(policy, facts, cls, identity)
        action = selected.action
        if not isinstance(action, RateLimit):
            return Outcome(cls, identity, decide(policy, selected), selected=selected)
        key = bucket_key(selected.name, action, facts, cls)
        fallback = False
        try:
            limit = await self._store.take(key, action.rate, action.burst, facts.now)
        except StoreUnavailable:
            # Documented failure mode: rate limits fall back to per-process counters.
            limit = self._local.take_now(key, action.rate, action.burst, facts.now)
            fallback = True
        return Outcome(cls, identity, decide(policy, selected, limit), fallback, selected)
