"""Behaviour signals and the undeclared-bot score.

Most cases are request sequences in tests/vectors/behaviour/*.yaml. Each case has
`steps` and an `expect` checked against the score of its last request. A step is
`repeat` requests (default 1), `every` seconds apart (default 1), starting at `at`
seconds into the case (default 0 for the first step), or else `every` seconds after the
previous step. Its fields:
`path` and `ip` are templates: `{n}` is the request's number in the step, `{k}` counts
1..`ip_pool` round robin. `headers` is browser (the default), bare, no-language or
no-accept. `claims` names the catalog crawler the user agent claims (none by default).
`disallowed` marks paths robots.txt forbids. `refused` makes the gate refuse each
request, as it refuses a blocked crawler. `assets_per_page` images follow each request
within a second. `expect` holds `undeclared`, `reasons` (in order), `scope`, `value`,
and `ip` with the same keys for the IP's own score.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatekeeper.core.behaviour import (
    PATH_BITS,
    BehaviourConfig,
    Reason,
    Score,
    Signals,
    UnknownReason,
    Window,
    client_keys,
    describe,
    looks_like_asset,
    looks_like_page,
    note_refusal,
    record,
    score,
    score_client,
    signals_for,
)
from gatekeeper.errors import GatekeeperError, SettingsError

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "behaviour"
CFG = BehaviourConfig()
# A multiple of the 60 s window: a case's first minute is one fixed window, so the
# counts in the vectors are exact. The sliding estimate has its own tests below.
T0 = 1_800_000_000.0
HEADERS: dict[str, dict[str, str]] = {
    "browser": {"Accept": "text/html,*/*;q=0.8", "Accept-Language": "en-GB,en;q=0.7"},
    "bare": {},
    "no-language": {"Accept": "text/html,*/*;q=0.8"},
    "no-accept": {"Accept-Language": "en"},
}
STEP_KEYS = {"at", "repeat", "every", "path", "ip", "ip_pool", "headers", "claims",
             "disallowed", "refused", "assets_per_page"}


class Client:
    """The store and the gate reduced to what scoring needs: windows per key."""

    def __init__(self) -> None:
        self.windows: dict[str, Window] = {}
        self.last: tuple[Score, Score] | None = None  # (combined, by IP)

    def request(self, ip: str, signals: Signals, now: float) -> None:
        ip_key, net_key = client_keys(ip)
        by_ip = self.windows[ip_key] = record(self.windows.get(ip_key), signals, now, CFG)
        by_net = self.windows[net_key] = record(self.windows.get(net_key), signals, now, CFG)
        self.last = (score_client(by_ip, by_net, signals, now, CFG),
                     score(by_ip, signals, now, CFG))

    def refuse(self, ip: str, crawler: str, now: float) -> None:
        for key in client_keys(ip):
            note_refusal(self.windows[key], crawler, now)


def run(steps: list[dict[str, Any]]) -> tuple[Score, Score]:
    client = Client()
    previous: float | None = None
    for step in steps:
        assert set(step) <= STEP_KEYS, set(step) - STEP_KEYS
        every = float(step.get("every", 1.0))
        if previous is not None and "at" not in step:
            start = previous + every
        else:
            start = T0 + step.get("at", 0.0)
        headers = HEADERS[step.get("headers", "browser")]
        claims = step.get("claims", "")
        for n in range(step.get("repeat", 1)):
            now = start + n * every
            ip = step.get("ip", "198.51.100.7").format(k=n % step.get("ip_pool", 1) + 1)
            path = step["path"].format(n=n)
            client.request(ip, signals_for(path, headers, claims, step.get("disallowed", False)),
                           now)
            if step.get("refused", False):
                client.refuse(ip, claims, now)
            for j in range(step.get("assets_per_page", 0)):
                client.request(ip, signals_for(f"/img/{n}-{j}.png", headers, claims),
                               now + 0.01 * (j + 1))
            previous = now
    assert client.last is not None
    return client.last


def check(got: Score, expect: dict[str, Any]) -> None:
    if "undeclared" in expect:
        assert got.undeclared is expect["undeclared"], got
    if "reasons" in expect:
        assert list(got.reasons) == expect["reasons"], got
    if "scope" in expect:
        assert got.scope == expect["scope"], got
    if "value" in expect:
        assert got.value == pytest.approx(expect["value"]), got


def load_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for file in sorted(VECTORS.glob("*.yaml")):
        doc = yaml.safe_load(file.read_text())
        if "steps" in (doc.get("cases") or [{}])[0]:
            cases.extend({"file": file.stem, **case} for case in doc["cases"])
    return cases


CASES = load_cases()
VECTOR_FILE = yaml.safe_load((VECTORS / "paths.yaml").read_text())
KEY_CASES = yaml.safe_load((VECTORS / "client_keys.yaml").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[f"{c['file']}:{c['name']}" for c in CASES])
def test_behaviour_vector(case: dict[str, Any]) -> None:
    combined, by_ip = run(case["steps"])
    expect = dict(case["expect"])
    check(combined, expect)
    check(by_ip, expect.pop("ip", {}))


def test_vectors_cover_every_reason() -> None:
    seen = {r for case in CASES for r in case["expect"].get("reasons", [])}
    assert seen == {r.value for r in Reason}


@pytest.mark.parametrize("path", VECTOR_FILE["pages"])
def test_page_paths_look_like_pages(path: str) -> None:
    assert looks_like_page(path)
    assert not looks_like_asset(path)


@pytest.mark.parametrize("path", VECTOR_FILE["assets"])
def test_asset_paths_look_like_assets(path: str) -> None:
    assert looks_like_asset(path)
    assert not looks_like_page(path)


@pytest.mark.parametrize("path", VECTOR_FILE["neither"])
def test_other_paths_are_neither_page_nor_asset(path: str) -> None:
    assert not looks_like_page(path)
    assert not looks_like_asset(path)


@pytest.mark.parametrize(("ip", "ip_key", "net_key"), KEY_CASES, ids=[c[0] for c in KEY_CASES])
def test_client_keys_are_canonical_address_and_network(ip: str, ip_key: str, net_key: str) -> None:
    assert client_keys(ip) == (ip_key, net_key)


def test_signals_for_reads_path_and_headers() -> None:
    signals = signals_for("/robots.txt", {"Accept": "*/*", "Accept-Language": ""}, "GPTBot",
                          robots_disallowed=True)
    assert signals == Signals("/robots.txt", is_html_like=False, is_asset=False,
                              is_robots_txt=True, robots_disallowed=True, has_accept=True,
                              has_accept_language=False, claimed_crawler="GPTBot")


def test_every_reason_has_a_description_and_unknown_codes_raise() -> None:
    for reason in Reason:
        assert describe(reason.value)
    with pytest.raises(UnknownReason) as error:
        describe("sneaky")
    assert isinstance(error.value, GatekeeperError)


@pytest.mark.parametrize("bad", [{"window": 0.0}, {"threshold": -1.0},
                                 {"network_scale": 0.5}, {"weight_ua_switch": 9.0}])
def test_config_refuses_values_that_break_the_score(bad: dict[str, float]) -> None:
    with pytest.raises(SettingsError):
        BehaviourConfig(**bad)


def test_a_request_scores_nothing_unless_a_reason_applies() -> None:
    page = Signals("/a", is_html_like=True)
    window = record(None, page, T0, CFG)
    assert score(window, page, T0, CFG) == Score(0.0, (), False, "ip")
    assert score(window, page, T0, CFG, network=True).scope == "network"


def page_burst(count: int, now: float, window: Window | None = None) -> Window:
    for n in range(count):
        window = record(window, Signals(f"/p/{n}", is_html_like=True), now, CFG)
    assert window is not None
    return window


def test_previous_window_counts_fade_as_the_sliding_window_moves_past_them() -> None:
    window = page_burst(100, T0)  # all at the start of one fixed window
    page = Signals("/p/0", is_html_like=True)
    assert Reason.RATE in score(window, page, T0 + 59, CFG).reasons
    # 100 in the previous window, 30 s into the next: 100 * 0.5 = 50, under the 60 limit.
    assert Reason.RATE not in score(window, page, T0 + 90, CFG).reasons
    assert score(window, page, T0 + 120, CFG).value == 0.0


def test_counts_carry_into_the_next_fixed_window() -> None:
    window = page_burst(100, T0 + 50)
    window = page_burst(1, T0 + 65, window)  # 5 s into the next window: 1 + 100 * 55/60
    assert Reason.RATE in score(window, Signals("/p/0", is_html_like=True), T0 + 65, CFG).reasons
    assert window.p_pages == 100
    assert window.pages == 1


def test_a_clock_going_back_keeps_counting_in_the_current_window() -> None:
    window = page_burst(100, T0 + 61)
    window = page_burst(1, T0 + 10, window)
    assert window.pages == 101
    assert Reason.RATE in score(window, Signals("/p", is_html_like=True), T0 + 10, CFG).reasons


def test_the_distinct_path_estimate_is_close_below_saturation() -> None:
    page = Signals("/p", is_html_like=True)
    few = page_burst(25, T0)
    many = page_burst(40, T0)
    assert Reason.MANY_PATHS not in score(few, page, T0, CFG).reasons
    assert Reason.MANY_PATHS in score(many, page, T0, CFG).reasons
    # Estimated count for 200 distinct paths within 15 % (linear counting over 256 bits).
    bits = page_burst(200, T0).paths
    estimate = PATH_BITS * math.log(PATH_BITS / (PATH_BITS - bits.bit_count()))
    assert estimate == pytest.approx(200, rel=0.15)


def test_assets_are_not_counted_as_distinct_paths() -> None:
    window = None
    for n in range(300):
        window = record(window, Signals(f"/img/{n}.png", is_asset=True), T0, CFG)
    assert window is not None
    assert window.paths == 0
    assert window.assets == 300


def test_a_refused_signal_remembers_the_refusal_when_recorded() -> None:
    window = record(None, Signals("/a", claimed_crawler="GPTBot", refused=True), T0, CFG)
    assert (window.last_refused_crawler, window.last_refused_at) == ("GPTBot", T0)
    switched = Signals("/a", is_html_like=True)
    record(window, switched, T0 + 3, CFG)
    assert score(window, switched, T0 + 3, CFG).reasons == (Reason.UA_SWITCH,)


def test_robots_txt_counts_for_the_horizon_only() -> None:
    window = record(None, Signals("/robots.txt", is_robots_txt=True), T0, CFG)
    later = T0 + CFG.robots_horizon + 60
    window = page_burst(25, later, window)
    reasons = score(window, Signals("/p", is_html_like=True), later, CFG).reasons
    assert Reason.NO_ROBOTS in reasons


def test_the_network_window_needs_network_scale_times_the_counts() -> None:
    page = Signals("/p", is_html_like=True)
    window = page_burst(100, T0)  # rate 100: over 60 per IP, under 120 per network
    assert Reason.RATE in score(window, page, T0, CFG).reasons
    assert Reason.RATE not in score(window, page, T0, CFG, network=True).reasons


def test_signals_init_takes_the_fields_in_order() -> None:
    parameters = list(inspect.signature(Signals.__init__).parameters)[1:]
    assert parameters == [f.name for f in dataclasses.fields(Signals)]
    values = ("/p", True, True, True, True, False, False, "GPTBot", True)
    signals = Signals(*values)
    assert tuple(getattr(signals, name) for name in parameters) == values
    with pytest.raises(dataclasses.FrozenInstanceError):
        signals.path = "/q"  # type: ignore[misc]


def test_config_scores_sum_the_weights_of_their_reasons() -> None:
    cfg = BehaviourConfig(threshold=7.0, weight_rate=1.5, weight_no_accept=0.25,
                          weight_ua_switch=7.0)
    window = None
    for n in range(70):
        page = Signals(f"/p/{n % 5}", is_html_like=True, has_accept=False)
        window = record(window, page, T0, cfg)
    assert window is not None
    got = score(window, page, T0, cfg)
    assert got == Score(6.75, ("rate", "no-assets", "no-robots", "no-accept"), False, "ip")
    assert score(window, page, T0, cfg, network=True).scope == "network"


def test_skipping_a_network_window_of_one_client_never_changes_the_score() -> None:
    rng = random.Random(7)
    for _ in range(50):
        client = Client()
        now = T0 + rng.uniform(0, 60)
        for _ in range(rng.randrange(1, 150)):
            now += rng.expovariate(2.0)
            ip = f"198.51.100.{rng.choice([7, 7, 7, 8])}"
            claims = rng.choice(["", "", "", "GPTBot"])
            signals = signals_for(
                rng.choice(["/a/{}", "/img/{}.png", "/robots.txt"]).format(rng.randrange(60)),
                HEADERS[rng.choice(list(HEADERS))], claims, rng.random() < 0.1)
            client.request(ip, signals, now)
            ip_key, net_key = client_keys(ip)
            by_ip, by_net = client.windows[ip_key], client.windows[net_key]
            full = max(score(by_ip, signals, now, CFG),
                       score(by_net, signals, now, CFG, network=True), key=lambda s: s.value)
            assert score_client(by_ip, by_net, signals, now, CFG).value == full.value
            if claims and rng.random() < 0.5:
                client.refuse(ip, claims, now)
