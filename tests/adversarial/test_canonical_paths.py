"""The path the upstream receives is the path the gate decided on.

Hypothesis generates request targets from the pieces that path tricks are made of
(dot segments plain and encoded, encoded slashes and backslashes, double encoding,
NUL, invalid escapes, `;` parameters, runs of slashes, non-ASCII bytes). Each is
sent as raw bytes by a verified GPTBot, for which /premium is closed. Then, over
all examples:

- whenever the upstream received a request, its path is the canonical path the
  gate logged for it, already canonical, with the query byte for byte as sent;
- nothing under /premium ever reached the upstream;
- a target the gate refused (400) never reached it, and one it allowed (200)
  reached it exactly once.
"""

from __future__ import annotations

import socket
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeeper.edge.target import BadRequest, canonicalize
from tests.adversarial.conftest import Origin
from tests.integration.conftest import GPTBOT
from tests.support.gate_process import GateProcess
from tests.support.raw_http import IN_RANGE, parse_responses

PIECES = [
    "premium", "PREMIUM", "public", "articles", "a", "b", "index.html", "", ".", "..", "%2e",
    "%2E%2e", ".%2e", "%2e.", "%2f", "%2F", "%5c", "%5C", "\\", "%25", "%252e", "%252f",
    "%00", "%ff", "%41", "%7e", "~", ";x=1", "..;", "premium;a", "a%20b", "%", "%g1", "%4",
    "[x]", "|", "*", "%3F", "%23", "\u00e9", "\t", "premium%2fx", "%70remium",
]
QUERIES = ["", "?a=1", "?next=/premium/x", "?a=1;b=2&c=%2F", "?%00", "?x#frag", "?a=%E2%82%AC"]

# Half the targets lead with a trick and then name premium, so the blocked side of
# the property is exercised as often as the forwarded one.
LEADS = ["", ".", "..", "%2e", "a/..", "a/%2e%2e", "public/..", "public/%2e%2e/"]
targets = st.one_of(
    st.builds(
        lambda pieces, slash, query: "/" + "/".join(pieces) + ("/" if slash else "") + query,
        st.lists(st.sampled_from(PIECES), min_size=1, max_size=5), st.booleans(),
        st.sampled_from(QUERIES)),
    st.builds(
        lambda lead, pieces, query: "/" + lead + "/premium/" + "/".join(pieces) + query,
        st.sampled_from(LEADS), st.lists(st.sampled_from(PIECES), max_size=3),
        st.sampled_from(QUERIES)),
)


def _send(port: int, target: str, n: int) -> int:
    data = (f"GET {target} HTTP/1.1\r\nHost: t\r\nUser-Agent: {GPTBOT} probe/{n}\r\n"
            "Connection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), 5, source_address=(IN_RANGE, 0)) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    responses = parse_responses(b"".join(chunks))
    return responses[0].status if responses else 0


def _is_premium(path: str) -> bool:
    return path == "/premium" or path.startswith("/premium/")


def test_the_upstream_only_ever_receives_the_canonical_path_the_gate_decided_on(
    gate: GateProcess, origin: Origin
) -> None:
    sent: dict[int, tuple[str, int]] = {}

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(targets)
    def probe(target: str) -> None:
        n = len(sent)
        sent[n] = (target, _send(gate.port, target, n))

    probe()
    assert {status for _, status in sent.values()} <= {200, 400, 401, 402, 403}, sent
    answered = {n for n, (_, status) in sent.items() if status != 400}
    # The gate's request lines carry the user agent, so each names its probe.
    deadline = time.monotonic() + 10
    decided: dict[int, str] = {}
    while len(decided) < len(answered) and time.monotonic() < deadline:
        for line in gate.events("request"):
            ua = str(line.get("user_agent", ""))
            if " probe/" in ua:
                decided[int(ua.rsplit("/", 1)[1])] = str(line["path"])
        time.sleep(0.05)
    assert set(decided) >= answered

    received: dict[int, list[str]] = {}
    for request in origin.upstream.requests():
        ua = request.header("User-Agent") or ""
        received.setdefault(int(ua.rsplit("/", 1)[1]), []).append(request.target)
    for n, targets_seen in received.items():
        target, status = sent[n]
        assert status == 200, (target, status, targets_seen)
        assert len(targets_seen) == 1, (target, targets_seen)
        path, _, query = targets_seen[0].partition("?")
        assert path == decided[n], (target, path, decided[n])
        assert canonicalize("GET", targets_seen[0]).path == path, (target, path)
        assert not _is_premium(path), (target, path)
        sent_query = target.partition("?")[2]
        assert query == sent_query, (target, targets_seen[0])
    for n, (target, status) in sent.items():
        if status == 200:
            assert n in received, target
        elif status == 400:
            assert n not in received, target
            try:
                canonicalize("GET", target)
            except BadRequest:
                pass  # refused for the reason the target module gives
            else:
                raise AssertionError(f"{target!r} is canonicalisable but got 400")
    # The property was exercised on both sides, not vacuously.
    statuses = [status for _, status in sent.values()]
    assert statuses.count(200) >= 20, statuses
    assert statuses.count(400) >= 20, statuses
    assert statuses.count(403) >= 10, statuses
