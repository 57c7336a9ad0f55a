"""B13: hostile policy reloads and regular-expression denial of service.

A gate of this module's own reloads only on SIGHUP (no file watcher), so each bad
reload counts exactly once. Its policy has a marker rule (`/marker/**` answered 451)
that every bad policy would change: a 451 after the reload shows the old policy still
serving. Header limits are raised so that a 50,000-character user agent reaches the
policy's regular expression instead of the 431 at the header limit.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp

from tests.adversarial.conftest import POLICY, Origin, StartGate
from tests.support.gate_process import GateProcess
from tests.support.raw_http import PUBLIC, exchange, request

SERVING = POLICY + """
  - name: marker
    match: {paths: ["/marker/**"]}
    action: {block: {status: 451}}
"""
CHANGED = SERVING.replace("status: 451", "status: 452")  # what each bad file also says
REDOS = SERVING + """
  - name: all-a-user-agents
    match: {headers: {User-Agent: {regex: "^(a+)+$"}}}
    action: {block: {status: 429}}
"""


def alias_bomb(levels: int, width: int) -> str:
    """`levels` nested lists of `width` aliases each: width**levels leaves."""
    lines = ["a0: &a0 [" + ", ".join(['"/x"'] * width) + "]"]
    lines += [f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * width) + "]"
              for n in range(1, levels)]
    return CHANGED + "\n".join(lines) + "\n"


def nested_alias_bomb(width: int) -> str:
    """Aliases where the loader accepts them: hosts x rules x paths, width each."""
    lines = ["hosts:", "  - &h", "    hosts: [a.example]", "    rules:", "      - &r",
             "        match: {paths: [&p /x" + ", *p" * (width - 1) + "]}",
             "        action: allow"]
    return CHANGED + "\n".join([*lines, *["      - *r"] * (width - 1),
                                *["  - *h"] * (width - 1)]) + "\n"


async def marker_status(gate: GateProcess) -> int:
    reply = await exchange(gate.port, request("GET", "/marker/x", [
        ("User-Agent", "curl/8.0"), ("Connection", "close")]), source=PUBLIC)
    return reply.status


async def healthz_times(gate: GateProcess, stop: asyncio.Event) -> list[float]:
    """Seconds each /healthz took, asked one after another until `stop`."""
    times: list[float] = []
    async with aiohttp.ClientSession() as s:
        while not stop.is_set() and len(times) < 500:
            started = time.perf_counter()
            async with s.get(gate.admin_url + "/healthz") as r:
                assert r.status == 200
            times.append(time.perf_counter() - started)
    return times


async def warm_up(gate: GateProcess, origin: Origin) -> None:
    for n in range(2):
        reply = await exchange(gate.port, request("GET", f"/warm/{n}", [
            ("User-Agent", "curl/8.0"), ("Connection", "close")]), source=PUBLIC)
        assert reply.status == 200
        deadline = time.monotonic() + 5
        while not any(r.internal for c in origin.upstream.connections for r in c.requests):
            assert time.monotonic() < deadline, "the origin's robots.txt was never fetched"
            await asyncio.sleep(0.02)
    origin.upstream.clear()


async def test_b13_hostile_policies_are_refused_and_the_old_policy_keeps_serving(
    own_origin: Origin, start_gate: StartGate, tmp_path: Path
) -> None:
    gate = start_gate(own_origin.faults.url, SERVING,
                      env={"GATEKEEPER_POLICY_WATCH_INTERVAL": "0"})
    marker = tmp_path / "marker"
    huge = CHANGED + "# " + "x" * (50 * 1024 * 1024) + "\n"  # valid YAML, 50 MiB
    bad = {
        "python_tag": CHANGED + f'extra: !!python/object/apply:os.system ["touch {marker}"]\n',
        "python_tag_in_a_rule": SERVING.replace(
            "action: {block: {status: 451}}",
            f'action: !!python/object/apply:os.system ["touch {marker}"]'),
        "alias_bomb_9_levels_of_10": alias_bomb(9, 10),
        "alias_bomb_the_loader_walks": nested_alias_bomb(60),
        "backreference_regex": SERVING + """
  - match: {headers: {User-Agent: {regex: "^(a+)\\\\1$"}}}
    action: block
""",
        "fifty_mib": huge,
    }
    assert await marker_status(gate) == 451
    loaded = await gate.value("gatekeeper_policy_reloads_total", result="success")
    for name, text in bad.items():
        before = await gate.value("gatekeeper_policy_reloads_total", result="failure")
        stop = asyncio.Event()
        probe = asyncio.create_task(healthz_times(gate, stop))
        started = time.perf_counter()
        await gate.reload(text, expect="failure")
        took = time.perf_counter() - started
        stop.set()
        slowest = max(await probe, default=0.0)
        assert await gate.value("gatekeeper_policy_reloads_total",
                                result="failure") - before == 1, name
        assert await marker_status(gate) == 451, name
        assert took < 5, (name, took)
        assert slowest < 1, (name, slowest)
    assert not marker.exists()
    assert await gate.value("gatekeeper_policy_reloads_total", result="success") == loaded
    failures = [e for e in gate.events() if e.get("event") == "policy_reload_failed"]
    assert len(failures) == len(bad)
    assert "extra: unknown key" in json.dumps(failures[0])
    assert "YAML tags are not allowed" in json.dumps(failures[1])
    assert "more than 100 aliases" in json.dumps(failures[3])
    assert "larger than 1024 KiB" in json.dumps(failures[-1])
    assert own_origin.upstream.client_bytes() == b""


async def test_b13_a_backtracking_regex_on_a_huge_user_agent_runs_in_linear_time(
    own_origin: Origin, start_gate: StartGate
) -> None:
    gate = start_gate(own_origin.faults.url, REDOS, env={
        "GATEKEEPER_POLICY_WATCH_INTERVAL": "0", "GATEKEEPER_MAX_HEADER_SIZE": "65536",
        "GATEKEEPER_MAX_HEADER_BLOCK_SIZE": "131072"})
    evil = "a" * 50_000 + "!"  # exponential for a backtracking engine on ^(a+)+$
    # Forwarded responses carry the policy's declaration headers, built once per
    # policy and origin robots.txt (some hundreds of milliseconds): built before
    # anything is measured, with the origin's robots.txt fetched.
    await warm_up(gate, own_origin)
    stop = asyncio.Event()
    probe = asyncio.create_task(healthz_times(gate, stop))
    await asyncio.sleep(0.05)  # /healthz is being asked while the gate decides
    replies = []
    for n, ua in enumerate((evil, "a" * 50_000, evil)):
        replies.append(await exchange(gate.port, request("GET", f"/redos/{n}", [
            ("User-Agent", ua), ("Connection", "close")]), source=PUBLIC, timeout=10))
    stop.set()
    healthz = await probe
    # No match: forwarded; all a's: the rule's answer.
    assert [r.status for r in replies] == [200, 429, 200]
    assert sorted(r.target for r in own_origin.upstream.requests()) == [
        "/redos/0", "/redos/2"]
    lines = await gate.wait_flushed(lambda es: len(es) >= 5)
    worst = max(e["duration_ms"] for e in lines if e["path"].startswith("/redos/"))
    print(f"B13 worst decision latency: {worst:.3f} ms; slowest /healthz "
          f"{max(healthz) * 1000:.1f} ms of {len(healthz)}")
    assert worst < 1000  # milliseconds; a backtracking match would take years
    assert healthz
    assert max(healthz) < 1.0
