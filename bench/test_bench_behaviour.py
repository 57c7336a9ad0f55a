"""pytest-benchmark of behaviour scoring, the part of every request that keeps state:
the signals of a request, its two window keys, the update of both windows in a
`WindowTable` and the score of the client.

Run it by hand, the way bench/run.sh runs the core benchmark:
`pytest bench/test_bench_behaviour.py --benchmark-only`. The figure to read is the
median of "record + score" per request: both windows updated in the table and the
client scored (target: under 5 us), next to the same baseline as the core benchmark,
building the request's `RequestFacts`. The whole step, with the edge's share (the
request's signals and its two keys), is printed as well.

The input is a mix of 64 clients: people fetching a page and then its assets, and
scrapers fetching pages only, each request a little later than the one before so that
windows rotate as they do in service.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

from gatekeeper.core.behaviour import (
    BehaviourConfig,
    Score,
    Signals,
    client_keys,
    score_client,
    signals_for,
)
from gatekeeper.core.facts import RequestFacts
from gatekeeper.store.windows import WindowTable

if TYPE_CHECKING:
    from conftest import Measure

CFG = BehaviourConfig()
TARGET_US = 5.0
T0 = 1_800_000_000.0
BROWSER = CIMultiDictProxy(CIMultiDict({
    "Host": "www.example.com",
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Encoding": "gzip, deflate, br",
    "Accept-Language": "en-GB,en;q=0.7",
}))
SCRAPER = CIMultiDictProxy(CIMultiDict({"Host": "www.example.com", "User-Agent": "Mozilla/5.0"}))


def requests() -> list[tuple[str, str, CIMultiDictProxy[str]]]:
    """(client IP, path, headers): 48 people and 16 scrapers, interleaved. People are
    alone in their /24 (residential addresses); the scrapers share one (a data centre)."""
    mix: list[tuple[str, str, CIMultiDictProxy[str]]] = []
    for n in range(48):
        ip = f"10.{n}.1.7"
        mix.append((ip, f"/articles/{n}", BROWSER))
        mix.extend((ip, f"/static/{n}-{j}.css", BROWSER) for j in range(5))
    for n in range(16):
        mix.extend((f"203.0.113.{n}", f"/articles/{n}/{j}", SCRAPER) for j in range(18))
    # Interleave the clients the way concurrent traffic arrives.
    return [r for group in itertools.zip_longest(*[iter(mix)] * 32) for r in group if r]


REQUESTS = requests()


def test_baseline_request_facts(measure: Measure) -> None:
    inputs = itertools.cycle([("GET", "www.example.com", path, headers)
                              for _, path, headers in REQUESTS])

    def build() -> RequestFacts:
        method, host, path, headers = next(inputs)
        return RequestFacts(method, host, path, "", headers, "198.51.100.7", 0.0)

    measure(build, "baseline: building RequestFacts", baseline=True)


def test_behaviour_step(measure: Measure) -> None:
    """What the gate does per request: signals, keys, both windows, the score."""
    table = WindowTable()
    inputs = itertools.cycle(REQUESTS)
    clock = itertools.count()

    def step() -> Score:
        ip, path, headers = next(inputs)
        now = T0 + next(clock) * 0.002  # 500 requests/s across the mix
        signals = signals_for(path, headers)
        ip_key, net_key = client_keys(ip)
        by_ip = table.observe(ip_key, signals, now, CFG)
        by_net = table.observe(net_key, signals, now, CFG)
        return score_client(by_ip, by_net, signals, now, CFG)

    for _ in range(len(REQUESTS) * 20):  # warm the windows: scrapers over their thresholds
        step()
    assert any(step().undeclared for _ in REQUESTS)
    measure(step, "behaviour step: signals + keys + record + score")


def test_record_and_score(measure: Measure) -> None:
    """The same without the edge's share (signals, keys): the store and the score."""
    table = WindowTable()
    prepared = [(*client_keys(ip), signals_for(path, headers)) for ip, path, headers in REQUESTS]
    inputs = itertools.cycle(prepared)
    clock = itertools.count()

    def step() -> Score:
        ip_key, net_key, signals = next(inputs)
        now = T0 + next(clock) * 0.002
        by_ip = table.observe(ip_key, signals, now, CFG)
        by_net = table.observe(net_key, signals, now, CFG)
        return score_client(by_ip, by_net, signals, now, CFG)

    measure(step, "record + score (2 windows)", target_us=TARGET_US)


def test_signals_for(measure: Measure) -> None:
    inputs = itertools.cycle([(path, headers) for _, path, headers in REQUESTS])

    def build() -> Signals:
        path, headers = next(inputs)
        return signals_for(path, headers)

    measure(build, "signals_for")


def test_client_keys_ipv4(measure: Measure) -> None:
    addresses = itertools.cycle(sorted({ip for ip, _, _ in REQUESTS}))
    measure(lambda: client_keys(next(addresses)), "client_keys, IPv4")
