"""B8 and B9: path normalisation and allowlisted-path abuse.

The gate decides on one canonical path and forwards exactly that path, or refuses the
target as ambiguous. Every target in tests/vectors/adversarial/paths.yaml is sent by
GPTBot from its published range (verified; /premium is closed to AI crawlers): the
upstream receives nothing for a refused one, and exactly one well-framed request for
the path the gate logged for a forwarded one. Header-supplied targets are never read
and never reach the upstream.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.adversarial.conftest import POLICY, Origin, StartGate
from tests.integration.conftest import BROWSER_HEADERS, GPTBOT
from tests.support.gate_process import GateProcess
from tests.support.raw_http import IN_RANGE, exchange

VECTORS = yaml.safe_load(
    (Path(__file__).parents[1] / "vectors" / "adversarial" / "paths.yaml").read_text())
TARGET_HEADERS = ("x-original-uri", "x-forwarded-uri", "x-rewrite-url", "x-original-url")


def raw_request(target: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: t",
             *(f"{k}: {v}" for k, v in headers.items()), "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def test_b8_b9_every_target_is_refused_or_decided_and_forwarded_as_its_canonical_path(
    gate: GateProcess, origin: Origin
) -> None:
    decided: list[str] = []  # the canonical paths the gate must log, in order
    before = len(gate.events("request"))
    for case in VECTORS["targets"]:
        origin.upstream.clear()
        target = case["target"]
        reply = await exchange(gate.port, raw_request(
            target, {"User-Agent": GPTBOT, **case.get("headers", {})}), source=IN_RANGE)
        assert reply.status == case["status"], target
        body = reply.responses[0].body
        received = origin.upstream.requests()
        if case["status"] == 200:
            query = case.get("query")
            assert [r.target for r in received] == [
                case["path"] + (f"?{query}" if query else "")], target
            assert (received[0].complete, received[0].framing) == (True, "none"), target
            names = {name.lower() for name, _ in received[0].headers}
            assert not names & set(TARGET_HEADERS), target
        else:
            assert origin.upstream.client_bytes() == b"", target
        if case["status"] == 400:
            assert json.loads(body)["error"] == case["reason"], target
        else:
            decided.append(case["path"])
        if case["status"] == 403:
            assert json.loads(body)["rule"] == "premium-closed-to-ai", target
    lines = await gate.wait_flushed(lambda es: len(es) >= before + len(decided))
    assert [e["path"] for e in lines[before:]] == decided
    assert {e["identity"] for e in lines[before:]} == {"verified"}


async def test_b8_a_case_insensitive_origin_gets_one_lower_case_spelling_of_every_path(
    own_origin: Origin, start_gate: StartGate
) -> None:
    gate = start_gate(own_origin.faults.url, POLICY, env={"GATEKEEPER_PATH_CASE": "insensitive"})
    sent: list[tuple[str, dict[str, str], int, str]] = [
        ("/PREMIUM/x", {"User-Agent": GPTBOT}, 403, "/premium/x"),
        ("/Premium/../PREMIUM/%58", {"User-Agent": GPTBOT}, 403, "/premium/x"),
        ("/ARTICLES/1", {"User-Agent": GPTBOT}, 401, "/articles/1"),  # licence required
        ("/Public/Caf%c3%89?Q=A", BROWSER_HEADERS, 200, "/public/caf%C3%89"),
    ]
    for target, headers, status, _ in sent:
        reply = await exchange(gate.port, raw_request(target, headers), source=IN_RANGE)
        assert reply.status == status, target
    received = own_origin.upstream.requests()
    assert [r.target for r in received] == ["/public/caf%C3%89?Q=A"]  # the query is kept
    lines = await gate.wait_flushed(lambda es: len(es) >= len(sent))
    assert [e["path"] for e in lines] == [path for *_, path in sent]
