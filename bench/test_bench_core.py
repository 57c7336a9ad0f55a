"""pytest-benchmark of the decision core: catalog match + policy evaluation with the
full catalog and a 30-rule policy, over a mix of real user agents and paths.

Run with bench/run.sh (not part of the test suite). The figure to read is the median
per decision; the baseline measured in the same run is building the RequestFacts alone.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.evaluate import decide, select
from gatekeeper.core.facts import Identity, RequestFacts
from gatekeeper.core.model import RateLimit
from gatekeeper.core.ratelimit import LimitResult
from gatekeeper.policy.loader import load_policy_file

CATALOG = load_catalog()
POLICY = load_policy_file(Path(__file__).with_name("policy-30-rules.yaml"), CATALOG)
ALLOWED = LimitResult(True, 5.0, 0.0)
UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; "
    "+https://openai.com/gptbot)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; ClaudeBot/1.0; "
    "+claudebot@anthropic.com)",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; ChatGPT-User/1.0",
    "curl/8.5.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
    "like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
]
PATHS = ["/", "/articles/2026/11/some-story", "/premium/report", "/section-3/a", "/img/x.jpg",
         "/api/v1/items"]
REQUESTS = [
    RequestFacts("GET", "www.example.com", path, "", CIMultiDictProxy(CIMultiDict(
        {"User-Agent": ua, "Host": "www.example.com"})), "198.51.100.7", 1_000_000.0)
    for ua, path in itertools.product(UAS, PATHS)
]


def _decide(facts: RequestFacts) -> None:
    cls = CATALOG.classify(facts.user_agent)
    identity = Identity.UNKNOWN if cls.crawler is None else Identity.UNVERIFIED
    selected = select(POLICY, facts, cls, identity)
    decide(POLICY, selected, ALLOWED if isinstance(selected.action, RateLimit) else None)


def test_decision_core(benchmark: pytest.FixtureRequest) -> None:
    cycle = itertools.cycle(REQUESTS)
    benchmark(lambda: _decide(next(cycle)))  # type: ignore[operator]


def test_baseline_building_request_facts(benchmark: pytest.FixtureRequest) -> None:
    headers = CIMultiDictProxy(CIMultiDict({"User-Agent": UAS[0], "Host": "www.example.com"}))
    benchmark(lambda: RequestFacts("GET", "h", "/", "", headers, "198.51.100.7", 0.0))  # type: ignore[operator]


def test_classify_uncached(benchmark: pytest.FixtureRequest) -> None:
    counter = itertools.count()
    # A unique suffix per call defeats the per-agent cache: the cost of one real pass.
    benchmark(lambda: CATALOG.classify(f"{UAS[0]} r{next(counter)}"))  # type: ignore[operator]


def test_classify_cached(benchmark: pytest.FixtureRequest) -> None:
    benchmark(lambda: CATALOG.classify(UAS[1]))  # type: ignore[operator]
