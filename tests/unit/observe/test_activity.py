"""The status page's last hour: minute buckets summed, bounded, and forgotten."""

from __future__ import annotations

from gatekeeper.observe.activity import Activity


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
