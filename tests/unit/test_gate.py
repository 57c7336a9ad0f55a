"""The gate: classification to identity, rate limits through the store, and the
documented fallback to per-process counters when the store is unavailable."""

from multidict import CIMultiDict, CIMultiDictProxy

from gatekeeper.core.catalog import UNKNOWN, Classification, Crawler, Kind, Purpose
from gatekeeper.core.decision import Reason
from gatekeeper.core.facts import Identity, RequestFacts
from gatekeeper.core.model import Match, Policy, RateLimit, Rule
from gatekeeper.core.ratelimit import LimitResult
from gatekeeper.errors import StoreUnavailable
from gatekeeper.gate import Gate
from gatekeeper.store.memory import MemoryStore

GPTBOT = Crawler("GPTBot", "OpenAI", Purpose.AI_TRAINING, ("gptbot",), "GPTBot")


class TokenClassifier:
    def classify(self, user_agent: str) -> Classification:
        return Classification(Kind.CRAWLER, GPTBOT) if "GPTBot" in user_agent else UNKNOWN


class DownStore:
    """A store that is down: the one fault the in-process store cannot produce."""

    calls = 0

    async def take(self, key: str, rate: float, burst: int, now: float) -> LimitResult:
        self.calls += 1
        raise StoreUnavailable("connection refused")

    async def close(self) -> None:
        pass


def facts(ua: str, now: float = 100.0) -> RequestFacts:
    headers = CIMultiDictProxy(CIMultiDict({"User-Agent": ua}))
    return RequestFacts("GET", "example.com", "/", "", headers, "192.0.2.1", now)


LIMIT = Policy(rules=(Rule("limit", Match(crawlers=frozenset({"GPTBot"})), RateLimit(0.001, 2)),))


async def test_claimed_crawler_is_unverified_and_browser_is_unknown() -> None:
    gate = Gate(TokenClassifier(), lambda: Policy(rules=()), MemoryStore())
    assert (await gate.decide(facts("GPTBot/1.1"))).identity is Identity.UNVERIFIED
    assert (await gate.decide(facts("Mozilla/5.0"))).identity is Identity.UNKNOWN


async def test_rate_limit_is_shared_through_the_store() -> None:
    gate = Gate(TokenClassifier(), lambda: LIMIT, MemoryStore())
    reasons = [(await gate.decide(facts("GPTBot"))).decision.reason for _ in range(3)]
    assert reasons == [Reason.ALLOWED, Reason.ALLOWED, Reason.RATE_LIMITED]


async def test_store_down_falls_back_to_local_counters_and_flags_it() -> None:
    store = DownStore()
    gate = Gate(TokenClassifier(), lambda: LIMIT, store)
    outcomes = [await gate.decide(facts("GPTBot")) for _ in range(3)]
    assert all(o.store_fallback for o in outcomes)
    assert [o.decision.reason for o in outcomes] == [
        Reason.ALLOWED, Reason.ALLOWED, Reason.RATE_LIMITED,
    ]
    assert store.calls == 3


async def test_policy_getter_is_read_per_request_so_reloads_apply() -> None:
    current = {"policy": Policy(rules=())}
    gate = Gate(TokenClassifier(), lambda: current["policy"], MemoryStore())
    assert (await gate.decide(facts("GPTBot"))).decision.rule == "default"
    current["policy"] = LIMIT
    assert (await gate.decide(facts("GPTBot"))).decision.rule == "limit"
