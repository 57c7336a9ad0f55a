"""pytest-benchmark of the decision core: user-agent classification with the full
catalog plus first-match evaluation of a 30-rule policy (bench/policy-30-rules.yaml),
over a mix of real user agents, paths, methods and hosts.

Run it with bench/run.sh, not with the test suite. The figure to read is the median
per decision (target: under 20 us), next to the baseline measured in the same run:
building the request's `RequestFacts`, which the edge does for every request anyway.
Every benchmarked call goes through the same shape of call (a lambda pulling the
next input), so the ratio compares like with like.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.decision import Decision
from gatekeeper.core.evaluate import decide, select
from gatekeeper.core.facts import Identity, RequestFacts
from gatekeeper.core.model import RateLimit
from gatekeeper.core.ratelimit import LimitResult
from gatekeeper.policy.loader import load_policy_text

if TYPE_CHECKING:
    from conftest import Measure

POLICY_FILE = Path(__file__).with_name("policy-30-rules.yaml")
CATALOG = load_catalog()
POLICY = load_policy_text(POLICY_FILE.read_text(encoding="utf-8"), POLICY_FILE.name, CATALOG)
# The bucket answer the gate would get from the store for a rate-limited rule.
BUCKET_OK = LimitResult(True, 5.0, 0.0)
TARGET_US = 20.0
# Inputs for the uncached benchmarks are made in advance, one per call: this many.
UNCACHED_CALLS = (100, 200)  # rounds, iterations

USER_AGENTS = [
    # browsers
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
    "like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.70",
    # AI crawlers and assistants
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; "
    "+https://openai.com/gptbot)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; ClaudeBot/1.0; "
    "+claudebot@anthropic.com)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; ChatGPT-User/1.0; "
    "+https://openai.com/bot",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; PerplexityBot/1.0; "
    "+https://perplexity.ai/perplexitybot)",
    # search engines and SEO
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; "
    "+http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    # tools
    "curl/8.11.0",
    "python-requests/2.32.3",
]
PATHS = [
    "/",
    "/articles/2026/11/some-story",
    "/premium/report",
    "/archive/2025/full",
    "/section-3/a/b",
    "/img/2026/x.jpg",
    "/api/v1/items",
    "/robots.txt",
]
EXTRA = [  # (method, host, path): other rules' conditions
    ("POST", "www.example.com", "/comments"),
    ("GET", "cms.internal.example", "/"),
]


def facts(user_agent: str, path: str = "/", method: str = "GET",
          host: str = "www.example.com") -> RequestFacts:
    headers = CIMultiDictProxy(CIMultiDict({
        "Host": host,
        "User-Agent": user_agent,
        "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        "Accept-Encoding": "gzip, deflate, br",
        "Accept-Language": "en-GB,en;q=0.7",
    }))
    return RequestFacts(method, host, path, "", headers, "198.51.100.7", 1_800_000_000.0)


REQUESTS = [facts(ua, path) for ua, path in itertools.product(USER_AGENTS, PATHS)] + [
    facts(ua, path, method, host) for ua in USER_AGENTS for method, host, path in EXTRA
]


def decision(request: RequestFacts) -> Decision:
    """What `Gate.decide` does, without the store: the pure part of every request."""
    cls = CATALOG.classify(request.user_agent)
    identity = Identity.UNKNOWN if cls.crawler is None else Identity.UNVERIFIED
    selected = select(POLICY, request, cls, identity)
    limit = BUCKET_OK if isinstance(selected.action, RateLimit) else None
    return decide(POLICY, selected, limit)


def unique_agents() -> Iterator[str]:
    """The realistic agents, each made unique by a suffix: every one misses the cache."""
    for n in itertools.count():
        yield f"{USER_AGENTS[n % len(USER_AGENTS)]} u{n}"


def uncached_inputs() -> list[str]:
    rounds, iterations = UNCACHED_CALLS
    # pedantic also runs a warm-up round first and one call after the last round.
    return list(itertools.islice(unique_agents(), (rounds + 2) * iterations))


def test_baseline_request_facts(measure: Measure) -> None:
    inputs = itertools.cycle([(r.method, r.host, r.path, r.headers) for r in REQUESTS])

    def build() -> RequestFacts:
        method, host, path, headers = next(inputs)
        return RequestFacts(method, host, path, "", headers, "198.51.100.7", 0.0)

    measure(build, "baseline: building RequestFacts", baseline=True)


def test_decision(measure: Measure) -> None:
    # Sanity first: the mix must exercise allow, block, licence and rate-limit answers.
    kinds = {decision(r).action for r in REQUESTS}
    assert {"allow", "block", "require_license", "rate_limit"} <= kinds, kinds
    inputs = itertools.cycle(REQUESTS)
    measure(lambda: decision(next(inputs)),
            f"decision ({len(REQUESTS)} requests, UA cached)", target_us=TARGET_US)


def test_decision_uncached(measure: Measure) -> None:
    paths = itertools.cycle(PATHS)
    inputs = iter([facts(ua, next(paths)) for ua in uncached_inputs()])
    measure(lambda: decision(next(inputs)), "decision, every UA new (cache missed)",
            calls=UNCACHED_CALLS)


def test_classify_cached(measure: Measure) -> None:
    agents = itertools.cycle(USER_AGENTS)
    measure(lambda: CATALOG.classify(next(agents)), "classify, UA cached")


def test_classify_uncached(measure: Measure) -> None:
    inputs = iter(uncached_inputs())
    measure(lambda: CATALOG.classify(next(inputs)), "classify, every UA new (cache missed)",
            calls=UNCACHED_CALLS)
