"""C8 and C9 (reliability study §5 C): bad policy reloads, and reloads under load.

A reload that fails keeps the serving policy: the same decisions, the same
generation (`gatekeeper_policy_last_reload_success_timestamp_seconds`, the time the
serving policy was loaded; it moves only on a successful reload), the failure
counted, and one error line naming the file and, where the format has one, the
line. A valid file written afterwards is applied. Two gates: one reloads on SIGHUP
only, the other only through its file watcher (every 0.2 s).

C9 alternates two valid policies (every 0.1 s, not the study's 2 s: the bounded load
lasts about a second) while clients keep requesting: each response is
attributable to one policy (its status and header, and the rule its log line
names), and no request fails.

Not applicable here: the study's "CIDR 10.0.0.0/33" case (policies have no address
fields; client addresses are settings, checked at start). As root, mode 000 does not
make a file unreadable: the case then expects the reload to succeed with the same
decisions.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.adversarial.conftest import POLICY, Origin
from tests.support.gate_process import GateProcess
from tests.support.raw_http import exchange, request

ALLOW = "allow"
BLOCK_451 = "{block: {status: 451}}"
ANSWER = {ALLOW: 200, BLOCK_451: 451}
GENERATION = "gatekeeper_policy_last_reload_success_timestamp_seconds"
RELOADS = "gatekeeper_policy_reloads_total"


def valid(c8: str) -> str:
    """The harness policy plus a rule whose answer tells which file is serving."""
    return POLICY + f"""
  - name: c8-probe
    match: {{paths: ["/c8/**"]}}
    action: {c8}
"""


VALID_LINES = len(valid(ALLOW).splitlines())


@dataclass(frozen=True)
class Bad:
    """A way to break the policy file: `apply(path)`; the problem's line in the file
    (None where there is none) and a fragment of its message."""

    name: str
    apply: Callable[[Path], None]
    line: int | None
    says: str
    watched: bool = True  # a change the file watcher can see


def _append(snippet: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(valid(ALLOW) + snippet)


def _truncate_in_place(path: Path) -> None:
    text = valid(ALLOW).encode()
    cut = text.index(b"rate_limit:") + len(b"rate_limit:")  # a mapping with no value
    with path.open("r+b") as f:  # the same file, not a renamed new one
        f.write(text[:cut])
        f.truncate(cut)


BAD = [
    Bad("yaml-syntax-error", _append('  - name: broken\n    match: {paths: ["/x"\n'
                                     "    action: block\n"), VALID_LINES + 3, "YAML syntax"),
    Bad("unknown-action", _append('  - name: strange\n    match: {paths: ["/x/**"]}\n'
                                  "    action: obliterate\n"), VALID_LINES + 3,
        "unknown action 'obliterate'"),
    Bad("uncompilable-regex", _append('  - name: regex\n'
                                      '    match: {headers: {X-Probe: {regex: "(unclosed"}}}\n'
                                      "    action: block\n"), VALID_LINES + 2,
        "RE2 cannot compile"),
    Bad("duplicate-rule-names", _append('  - name: public\n    match: {paths: ["/y/**"]}\n'
                                        "    action: block\n"), VALID_LINES + 1,
        "rule name 'public' is already used"),
    Bad("truncated-in-place", _truncate_in_place,
        valid(ALLOW)[:valid(ALLOW).index("rate_limit:")].count("\n") + 1,
        "expected a mapping"),
    Bad("empty-file", lambda path: path.write_text(""), None, "the policy file is empty"),
    Bad("deleted", lambda path: path.unlink(), None, "cannot read policy file"),
    # chmod changes neither content, size, mtime nor inode: nothing for a watcher.
    Bad("mode-000", lambda path: path.chmod(0), None, "cannot read policy file",
        watched=False),
]


def _gate(shared_origin: Origin, tmp: Path, watch: str) -> Iterator[GateProcess]:
    process = GateProcess(tmp, shared_origin.faults.url, valid(ALLOW), {
        "GATEKEEPER_POLICY_WATCH_INTERVAL": watch, "GATEKEEPER_ROBOTS_COMPLIANCE": "false"})
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def sighup_gate(shared_origin: Origin,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateProcess]:
    yield from _gate(shared_origin, tmp_path_factory.mktemp("sighup"), "0")


@pytest.fixture(scope="module")
def watched_gate(shared_origin: Origin,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateProcess]:
    yield from _gate(shared_origin, tmp_path_factory.mktemp("watched"), "0.2")


async def _answer(gate: GateProcess) -> int:
    reply = await exchange(gate.port, request("GET", "/c8/probe", {
        "User-Agent": "c8/1.0", "Connection": "close"}))
    return reply.status


async def _until(check: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def _sighup(gate: GateProcess) -> None:
    assert gate.proc is not None
    gate.proc.send_signal(signal.SIGHUP)


async def _case(gate: GateProcess, bad: Bad, *, sighup: bool) -> None:
    path = gate.policy_file
    before = await _answer(gate)
    assert before in (200, 451)
    generation = await gate.value(GENERATION)
    failures = await gate.value(RELOADS, result="failure")
    successes = await gate.value(RELOADS, result="success")
    logged = len(gate.events("policy_reload_failed"))
    try:
        bad.apply(path)
        unreadable = path.exists() and not os.access(path, os.R_OK)
        if sighup:
            _sighup(gate)
        if bad.name == "mode-000" and not unreadable:
            # Root reads a mode 000 file: the same policy is loaded again.
            await _until(lambda: _moved(gate, "success", successes), "no reload")
            assert await _answer(gate) == before
            assert await gate.value(RELOADS, result="failure") == failures
            return
        await _until(lambda: _moved(gate, "failure", failures), "the failure was not counted")
        if sighup:  # one signal, one attempt
            assert await gate.value(RELOADS, result="failure") == failures + 1
        # Decisions and generation unchanged, nothing answered 5xx.
        assert await _answer(gate) == before
        assert await gate.value(GENERATION) == generation
        assert await gate.value(RELOADS, result="success") == successes
        lines = gate.events("policy_reload_failed")[logged:]
        assert lines
        assert all(e["level"] == "error" for e in lines)
        where = f"{path}:{bad.line}:" if bad.line else f"{path}:"
        assert any(e["source"] == str(path) and any(
            p.startswith(where) and bad.says in p for p in e["problems"]) for e in lines), lines
    finally:
        if path.exists():
            path.chmod(0o644)
    # A valid file is applied again, whichever answer it gives.
    after = BLOCK_451 if before == 200 else ALLOW
    path.write_text(valid(after))
    if sighup:
        _sighup(gate)
    await _until(lambda: _answers(gate, ANSWER[after]), "the valid file was not applied")
    assert await gate.value(GENERATION) > generation


async def _moved(gate: GateProcess, result: str, before: float) -> bool:
    return await gate.value(RELOADS, result=result) > before


async def _answers(gate: GateProcess, status: int) -> bool:
    return await _answer(gate) == status


@pytest.mark.parametrize("bad", BAD, ids=[b.name for b in BAD])
async def test_bad_policy_on_sighup_keeps_serving_the_last_good_one(
    sighup_gate: GateProcess, bad: Bad
) -> None:
    await _case(sighup_gate, bad, sighup=True)


@pytest.mark.parametrize("bad", [b for b in BAD if b.watched],
                         ids=[b.name for b in BAD if b.watched])
async def test_bad_policy_seen_by_the_watcher_keeps_serving_the_last_good_one(
    watched_gate: GateProcess, bad: Bad
) -> None:
    await _case(watched_gate, bad, sighup=False)


# -- C9 ---------------------------------------------------------------------------------

CLIENTS, REQUESTS = 8, 150
PACE = 0.005  # seconds between a client's requests: the load lasts through several reloads
RELOAD_EVERY = 0.1
POLICY_A = POLICY + """
  - name: c9-a
    match: {paths: ["/c9/**"]}
    action: {block: {status: 403, headers: {X-Policy: a}}}
"""
POLICY_B = POLICY + """
  - name: c9-b
    match: {paths: ["/c9/**"]}
    action: allow
"""


@dataclass
class Answer:
    target: str
    status: int
    policy: str | None  # the X-Policy header
    body: bytes


async def _client(gate: GateProcess, n: int) -> list[Answer]:
    """One keep-alive connection, `REQUESTS` requests in turn; any socket error fails."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.port,
                                                   local_addr=(f"127.0.4.{n + 1}", 0))
    out = []
    try:
        for i in range(REQUESTS):
            target = f"/c9/{n}/{i}"
            writer.write(request("GET", target, {"User-Agent": "c9/1.0"}))
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                fields = {k.lower(): v.strip() for k, _, v in
                          (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(fields["content-length"]))
            assert "close" not in fields.get("connection", ""), (target, head)
            out.append(Answer(target, int(lines[0].split()[1]), fields.get("x-policy"), body))
            await asyncio.sleep(PACE)
    finally:
        writer.close()
    return out


async def test_reloads_under_load_answer_every_request_by_one_whole_policy(
    sighup_gate: GateProcess, shared_origin: Origin
) -> None:
    gate = sighup_gate
    await gate.reload(POLICY_A)
    shared_origin.upstream.clear()
    successes = await gate.value(RELOADS, result="success")
    load = asyncio.gather(*(_client(gate, n) for n in range(CLIENTS)))
    reloads = 0
    while not load.done() and reloads < 60:  # bounded: the load ends far sooner
        await asyncio.sleep(RELOAD_EVERY)
        await gate.reload(POLICY_B if reloads % 2 == 0 else POLICY_A)
        reloads += 1
    answers = [a for client in await load for a in client]
    assert len(answers) == CLIENTS * REQUESTS  # no socket error, nothing missing
    assert await gate.value(RELOADS, result="success") == successes + reloads
    assert reloads >= 4
    by_status = {status: [a for a in answers if a.status == status] for status in (200, 403)}
    assert len(by_status[200]) + len(by_status[403]) == len(answers)  # no other status
    assert by_status[200]  # both policies answered
    assert by_status[403]
    for a in by_status[403]:  # policy A, whole
        assert a.policy == "a"
        assert json.loads(a.body)["status"] == 403
    for a in by_status[200]:  # policy B, whole: the upstream's own answer
        assert a.policy is None
        assert json.loads(a.body)["target"] == a.target
    # Every 200, and nothing else, reached the upstream, once.
    forwarded = sorted(r.target for r in shared_origin.upstream.requests())
    assert forwarded == sorted(a.target for a in by_status[200])
    # The request log names the rule of the policy that answered.
    lines = await gate.wait_for(lambda found: sum(
        e["path"].startswith("/c9/") for e in found) >= len(answers), timeout=10)
    rule = {e["path"]: e["rule"] for e in lines if e["path"].startswith("/c9/")}
    for a in answers:
        assert rule[a.target] == ("c9-a" if a.status == 403 else "c9-b"), a.target
