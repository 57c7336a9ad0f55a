"""WindowTable: behaviour windows per client key, bounded in number and in idle time."""

from __future__ import annotations

import resource
import time
import tracemalloc

import pytest

from gatekeeper.core.behaviour import BehaviourConfig, Signals
from gatekeeper.errors import SettingsError
from gatekeeper.store.windows import WindowTable

CFG = BehaviourConfig()
PAGE = Signals("/a", is_html_like=True)
T0 = 1_800_000_000.0


def test_observe_counts_requests_per_key() -> None:
    table = WindowTable()
    table.observe("a", PAGE, T0, CFG)
    window = table.observe("a", PAGE, T0 + 1, CFG)
    table.observe("b", PAGE, T0 + 2, CFG)
    assert window.requests == 2
    assert table.get("a") is window
    assert len(table) == 2


def test_the_least_recently_seen_client_is_evicted_at_the_bound() -> None:
    table = WindowTable(max_clients=3)
    for n, key in enumerate("abca"):
        table.observe(key, PAGE, T0 + n, CFG)
    table.observe("d", PAGE, T0 + 5, CFG)
    assert len(table) == 3
    assert table.get("b") is None
    assert all(table.get(key) is not None for key in "acd")


def test_get_does_not_refresh_a_clients_recency() -> None:
    table = WindowTable(max_clients=2)
    table.observe("a", PAGE, T0, CFG)
    table.observe("b", PAGE, T0 + 1, CFG)
    table.get("a")
    table.observe("c", PAGE, T0 + 2, CFG)
    assert table.get("a") is None


def test_idle_windows_expire_when_they_reach_the_old_end() -> None:
    table = WindowTable(idle_expiry=600.0)
    table.observe("a", PAGE, T0, CFG)
    table.observe("b", PAGE, T0 + 100, CFG)
    table.observe("c", PAGE, T0 + 650, CFG)
    assert table.get("a") is None  # idle 650 s
    assert table.get("b") is not None  # idle 550 s
    table.observe("c", PAGE, T0 + 701, CFG)  # a known client adds nothing, sheds nothing
    assert table.get("b") is not None
    table.observe("d", PAGE, T0 + 701, CFG)
    assert table.get("b") is None
    assert len(table) == 2


def test_a_refusal_is_remembered_for_a_known_and_for_an_evicted_client() -> None:
    table = WindowTable(max_clients=1)
    table.observe("a", PAGE, T0, CFG)
    table.note_refusal("a", "GPTBot", T0 + 1)
    known = table.get("a")
    assert known is not None
    assert known.last_refused_crawler == "GPTBot"
    table.note_refusal("b", "ClaudeBot", T0 + 2)  # "b" was never observed (or evicted)
    fresh = table.get("b")
    assert fresh is not None
    assert (fresh.last_refused_crawler, fresh.last_refused_at) == ("ClaudeBot", T0 + 2)
    assert fresh.requests == 0
    assert len(table) == 1
    # Its first request after the refusal starts an empty count and keeps the refusal.
    assert table.observe("b", PAGE, T0 + 3, CFG).requests == 1


@pytest.mark.parametrize(("kwargs"), [{"max_clients": 0}, {"idle_expiry": 0.0}])
def test_table_refuses_a_bound_that_holds_nothing(kwargs: dict[str, float]) -> None:
    with pytest.raises(SettingsError):
        WindowTable(**kwargs)  # type: ignore[arg-type]


def _address(n: int) -> str:
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" if n < 1 << 24 else f"11.0.0.{n & 255}"


def test_a_million_distinct_clients_stay_within_the_bound() -> None:
    table = WindowTable(max_clients=10_000)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    observe = table.observe
    for n in range(1_000_000):
        # 10 ms apart: nobody goes idle for an hour, only the bound can evict.
        observe(_address(n), PAGE, T0 + n * 0.01, CFG)
        if n % 100_000 == 0:
            assert len(table) <= 10_000
    elapsed = time.perf_counter() - started
    rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert len(table) == 10_000
    assert table.get(_address(999_999)) is not None
    assert table.get(_address(0)) is None
    # A million windows kept would take hundreds of MiB; ten thousand take a few.
    assert rss_growth_kib < 64 * 1024, rss_growth_kib

    # Full table, more new clients: every window added is one evicted. Traced from when
    # the table holds only windows made under tracing, what Python holds stays flat.
    def more(first: int, count: int) -> None:
        for n in range(first, first + count):
            observe(f"12.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", PAGE, T0 + n * 0.01, CFG)

    tracemalloc.start()
    try:
        more(1_000_000, 20_000)
        table_bytes, _ = tracemalloc.get_traced_memory()
        more(1_020_000, 50_000)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(table) == 10_000
    assert table_bytes < 10_000 * 1024  # under 1 KiB per client, key and window included
    assert after - table_bytes < 64 * 1024, after - table_bytes
    print(f"1,000,000 observes in {elapsed:.2f} s; RSS grew {rss_growth_kib} KiB; "
          f"{table_bytes // 10_000} B per client; {after - table_bytes} B more after "
          f"50,000 more clients")
