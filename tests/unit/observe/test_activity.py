"""The status page's last hour: minute buckets summed, bounded, and forgotten."""

from __future__ import annotations

import tracemalloc

import pytest

from gatekeeper.observe.activity import (
    MAX_PATH_CHARS,
    MAX_PATH_CRAWLERS,
    PATH_ENTRY_BYTES,
    Activity,
    bounded_path,
    shown_path,
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_crawlers_are_summed_over_the_hour_with_what_happened_to_them() -> None:
    clock = Clock(6000.0)
    activity = Activity(clock=clock)
    for _ in range(3):
        activity.record("GPTBot", "ai-training", "blocked", False, "verified", "/a", True)
    clock.now += 120
    activity.record("GPTBot", "ai-training", "licensed", True, "verified", "/a", False,
                    "train", "acme")
    activity.record("Googlebot", "search-engine", "allowed", True, "spoofed", "/b", False)
    activity.record("unknown", None, "allowed", True, "unknown", "/c", False)
    activity.record("unknown", None, "rate_limited", False, "unknown", "/c", False)
    snap = activity.snapshot(lambda name: {"GPTBot": "OpenAI"}.get(name, ""))
    assert [row["crawler"] for row in snap["crawlers"]] == ["GPTBot", "Googlebot"]
    gpt = snap["crawlers"][0]
    assert gpt["operator"] == "OpenAI"
    assert gpt["requests"] == 4
    assert gpt["reasons"] == {"blocked": 3, "licensed": 1}
    assert gpt["refused"] == 3
    assert gpt["robots_violations"] == 3
    assert gpt["identities"] == {"verified": 4}
    assert snap["crawlers"][1]["identities"] == {"spoofed": 1}
    assert snap["browsers"] == {"requests": 2, "refused": 1}
    # Only AI crawlers' paths are listed; a search engine's are not.
    assert snap["top_paths"] == [{"path": "/a", "requests": 4, "crawlers": ["GPTBot"]}]
    assert snap["licences"] == [{"license": "train", "requests": 1, "licensees": ["acme"]}]
    assert len(snap["per_minute"]) == 60
    assert snap["per_minute"][-1] == {"minute": 6120 // 60 * 60, "browsers": 2,
                                      "crawlers": 2, "refused": 1}


def test_minutes_older_than_the_window_are_forgotten() -> None:
    clock = Clock(0.0)
    activity = Activity(minutes=60, clock=clock)
    activity.record("GPTBot", "ai-training", "blocked", False, "verified", "/a", False)
    clock.now = 59 * 60.0
    assert activity.snapshot()["crawlers"][0]["requests"] == 1
    clock.now = 60 * 60.0
    assert activity.snapshot()["crawlers"] == []
    # The bucket is reused for the new minute, starting from zero.
    activity.record("ClaudeBot", "ai-training", "blocked", False, "verified", "/a", False)
    assert [r["crawler"] for r in activity.snapshot()["crawlers"]] == ["ClaudeBot"]


def test_paths_kept_per_minute_are_bounded() -> None:
    activity = Activity(max_paths=3, clock=Clock(0.0))
    for n in range(10):
        activity.record("GPTBot", "ai-training", "blocked", False, "verified", f"/p{n}", False)
    activity.record("GPTBot", "ai-training", "blocked", False, "verified", "/p0", False)
    paths = {p["path"]: p["requests"] for p in activity.snapshot()["top_paths"]}
    assert paths == {"/p0": 2, "/p1": 1, "/p2": 1}


def _fill(activity: Activity, clock: Clock, minutes: int, paths: int,
          crawlers: list[str]) -> None:
    """Every minute of the window, `paths` distinct 8 KB paths, each requested by
    every crawler in `crawlers` (spoofed, blocked: what an attacker can send)."""
    for minute in range(minutes):
        clock.now = minute * 60.0
        for n in range(paths):
            path = f"/{minute}-{n}/" + "a" * 8000
            for crawler in crawlers:
                activity.record(crawler, "ai-training", "blocked", False, "spoofed", path,
                                False)


def test_the_paths_of_the_hour_stay_within_their_byte_bound_however_long() -> None:
    minutes, max_paths = 5, 1000
    crawlers = [f"AIBot{n}" for n in range(2 * MAX_PATH_CRAWLERS)]
    clock = Clock(0.0)
    tracemalloc.start()
    try:
        activity = Activity(minutes=minutes, max_paths=max_paths, clock=clock)
        _fill(activity, clock, minutes, max_paths, crawlers)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Every bucket is full: the bound is reached in count, so only size keeps it.
    assert sum(p["requests"] for p in activity.snapshot(top_paths=10**6)["top_paths"]) \
        == minutes * max_paths * len(crawlers)
    assert activity.path_bytes_bound == minutes * max_paths * PATH_ENTRY_BYTES
    assert held <= activity.path_bytes_bound, (held, activity.path_bytes_bound)
    # The default hour's bound, the one docs/status-page.md states, is a small part of
    # the 512 MiB the Kubernetes recipe gives a pod.
    assert Activity().path_bytes_bound == 60 * 2000 * 640 < 80 * 2**20


def test_a_long_path_is_kept_cut_and_marked() -> None:
    activity = Activity(clock=Clock(0.0))
    spoofed = "/" + "x" * 8001  # 8,002 characters, as a spoofed GPTBot sent it
    activity.record("GPTBot", "ai-training", "blocked", False, "spoofed", spoofed, False)
    # A different path with the same first 255 characters is counted with it.
    activity.record("GPTBot", "ai-training", "blocked", False, "spoofed", spoofed + "y",
                    False)
    activity.record("GPTBot", "ai-training", "blocked", False, "spoofed", "/short", False)
    (cut, short) = activity.snapshot()["top_paths"]
    assert cut == {"path": spoofed[:MAX_PATH_CHARS - 1] + "…", "requests": 2,
                   "crawlers": ["GPTBot"]}
    assert len(cut["path"]) == MAX_PATH_CHARS
    assert short == {"path": "/short", "requests": 1, "crawlers": ["GPTBot"]}


def test_a_path_of_the_bound_exactly_is_kept_whole() -> None:
    whole = "/" + "b" * (MAX_PATH_CHARS - 1)
    assert bounded_path(whole) == whole
    activity = Activity(clock=Clock(0.0))
    activity.record("GPTBot", "ai-training", "blocked", False, "verified", whole, False)
    assert activity.snapshot()["top_paths"][0]["path"] == whole


@pytest.mark.parametrize(("letters", "shown_tail"), [
    (MAX_PATH_CHARS - 3, "a…"),     # the cut falls after "%": dropped
    (MAX_PATH_CHARS - 4, "a…"),     # after "%E": dropped
    (MAX_PATH_CHARS - 5, "a%E2…"),  # after a whole escape: kept
])
def test_a_cut_never_leaves_half_an_escape(letters: int, shown_tail: str) -> None:
    path = "/" + "a" * letters + "%E2%80%A6" * 10
    activity = Activity(clock=Clock(0.0))
    activity.record("GPTBot", "ai-training", "blocked", False, "verified", path, False)
    shown = activity.snapshot()["top_paths"][0]["path"]
    assert shown.endswith(shown_tail)
    assert shown.removesuffix("…") == path[:len(shown) - 1]
    assert shown == shown_path(bounded_path(path))


def test_a_path_lists_a_bounded_number_of_crawlers() -> None:
    activity = Activity(clock=Clock(0.0))
    names = [f"AIBot{n:02}" for n in range(MAX_PATH_CRAWLERS + 4)]
    for name in names:
        activity.record(name, "ai-training", "blocked", False, "spoofed", "/a", False)
    (row,) = activity.snapshot()["top_paths"]
    assert row["requests"] == len(names)  # every request counted,
    assert row["crawlers"] == names[:MAX_PATH_CRAWLERS]  # the first crawlers named
