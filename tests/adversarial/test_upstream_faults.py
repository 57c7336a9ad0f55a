"""C1-C5 and C11 (reliability study §5 C): the upstream refuses, never connects,
answers late, stalls, resets, breaks HTTP or fails with a 5xx; the client hangs up
halfway through an exchange.

The module's gate has short upstream timeouts and reads no robots.txt, so every
upstream connection is a client's. The origin closes its connection after each
answer unless a test says otherwise: a fault (set per connection in the fault
proxy) then always applies to the next request, never to a pooled connection. A
second gate (`direct_gate`) has the default, long timeouts and talks to the upstream
without the fault proxy between: what the upstream sees of it is what it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.adversarial.conftest import POLICY, Origin, StartGate
from tests.support.fault_proxy import Fault
from tests.support.gate_process import GateProcess
from tests.support.loop_thread import LoopThread
from tests.support.raw_http import PUBLIC, Reply, exchange, request
from tests.support.recording_upstream import Connection, Received, RecordingUpstream, respond

CONNECT_TIMEOUT = 0.5
READ_TIMEOUT = 1.0
FAST = {
    "GATEKEEPER_UPSTREAM_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
    "GATEKEEPER_UPSTREAM_READ_TIMEOUT": str(READ_TIMEOUT),
    "GATEKEEPER_ROBOTS_COMPLIANCE": "false",
}
UA = {"User-Agent": "fault-suite/1.0"}
BIG = 1_000_000
VECTORS = Path(__file__).parents[1] / "vectors" / "adversarial" / "upstream_faults.yaml"
VIOLATIONS: list[dict[str, Any]] = yaml.safe_load(VECTORS.read_text())["cases"]
INJECTED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED"
KINDS = ("refused", "reset", "timeout", "protocol", "other")


@pytest.fixture(scope="module")
def gate_env() -> dict[str, str]:
    return FAST


@pytest.fixture(scope="module")
def direct_gate(shared_origin: Origin,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateProcess]:
    process = GateProcess(tmp_path_factory.mktemp("direct"), shared_origin.upstream.url, POLICY,
                          {"GATEKEEPER_ROBOTS_COMPLIANCE": "false"})
    process.start()
    yield process
    process.stop()


async def _echo_and_close(received: Received, writer: asyncio.StreamWriter,
                          upstream: RecordingUpstream) -> bool:
    await respond(writer, 200, received.target.encode(), [("Connection", "close")])
    return False


async def _echo(received: Received, writer: asyncio.StreamWriter,
                upstream: RecordingUpstream) -> bool:
    await respond(writer, 200, received.target.encode())
    return True


@pytest.fixture(autouse=True)
def _closing_origin(origin: Origin) -> None:
    origin.upstream.routes["/"] = _echo_and_close


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def never_accepting_port() -> Iterator[int]:
    """A listener whose accept queue is full: the kernel leaves further SYNs
    unanswered, as for a host that is down or firewalled."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(full.getsockname())
            fillers.append(filler)
        yield int(full.getsockname()[1])
    finally:
        for sock in (*fillers, full):
            sock.close()


async def get(gate: GateProcess, target: str, *, method: str = "GET", body: bytes = b"",
              close: bool = True, timeout: float = 5.0) -> Reply:
    headers = {**UA, "Connection": "close"} if close else UA
    return await exchange(gate.port, request(method, target, headers, body), timeout=timeout)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    """Poll until `predicate` holds; the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def errors(gate: GateProcess) -> dict[str, float]:
    found = await gate.metrics()
    return {kind: found.get(("gatekeeper_upstream_errors_total", (("kind", kind),)), 0.0)
            for kind in KINDS}


async def counted(gate: GateProcess, before: dict[str, float], **expected: int) -> None:
    """The upstream error counters moved by exactly `expected` (the observation is
    written when the gate has finished with the request, a moment after the client
    saw its end)."""
    either = expected.pop("refused_or_reset", 0)  # a reset racing the connect: either kind

    def matches(now: dict[str, float]) -> bool:
        moved = {kind: now[kind] - before[kind] for kind in KINDS}
        if either:
            moved["refused"] += moved.pop("reset")
            want = {**expected, "refused": either}
        else:
            want = expected
        return all(moved.get(kind, 0) == want.get(kind, 0) for kind in KINDS)

    deadline = time.monotonic() + 5
    while not matches(now := await errors(gate)):
        if time.monotonic() > deadline:
            raise AssertionError(f"upstream errors {now}, before {before}, expected {expected}")
        await asyncio.sleep(0.05)


def error_of(reply: Reply) -> str:
    return str(json.loads(reply.responses[0].body)["error"])


def connection_with(upstream: RecordingUpstream, target: bytes) -> Connection:
    return next(c for c in upstream.connections if target in c.raw)


# -- C1: refused --------------------------------------------------------------------------


async def test_refused_upstream_port_gives_502_at_once_counted_as_refused(
    start_gate: StartGate,
) -> None:
    gate = start_gate(f"http://127.0.0.1:{closed_port()}", env=FAST)
    before = await errors(gate)
    for method, body in (("GET", b""), ("POST", b"form=1")):
        reply = await get(gate, "/public/form", method=method, body=body)
        assert reply.status == 502, method
        assert error_of(reply) == "refused"
        assert reply.elapsed < 1.0  # no waiting on a refused connect (about 5 ms here)
    await counted(gate, before, refused=2)


async def test_upstream_resetting_every_connection_gets_a_get_tried_at_most_twice_a_post_once(
    gate: GateProcess, origin: Origin
) -> None:
    origin.faults.fault = Fault("refuse")
    before = await errors(gate)
    accepted = origin.faults.accepted
    reply = await get(gate, "/public/x")
    get_tries = origin.faults.accepted - accepted
    assert reply.status == 502
    assert 1 <= get_tries <= 2
    accepted = origin.faults.accepted
    reply = await get(gate, "/public/form", method="POST", body=b"form=1")
    assert reply.status == 502
    assert origin.faults.accepted - accepted == 1  # never sent twice
    # Accepted and reset at once: "refused" or "reset", as the reset races the
    # request's first write.
    assert error_of(reply) in ("refused", "reset")
    await counted(gate, before, refused_or_reset=2)
    assert origin.upstream.requests() == []


# -- C2: timeouts -------------------------------------------------------------------------


async def test_upstream_connect_that_never_completes_gives_504_at_the_connect_timeout(
    start_gate: StartGate,
) -> None:
    with never_accepting_port() as port:
        gate = start_gate(f"http://127.0.0.1:{port}", env=FAST)
        before = await errors(gate)
        reply = await get(gate, "/public/x")
        assert reply.status == 504
        assert error_of(reply) == "timeout"
        assert CONNECT_TIMEOUT * 0.8 <= reply.elapsed < CONNECT_TIMEOUT + 4
        await counted(gate, before, timeout=1)


async def test_upstream_head_later_than_the_read_timeout_gives_504_and_the_connection_is_dropped(
    gate: GateProcess, origin: Origin, servers: LoopThread
) -> None:
    release = asyncio.Event()  # waited on and set on the servers' loop only

    async def late(received: Received, writer: asyncio.StreamWriter,
                   upstream: RecordingUpstream) -> bool:
        await release.wait()
        await respond(writer, 200, b"LATE")
        return True  # keep reading: only the gate's close ends this connection

    origin.upstream.routes["/late/"] = late
    before = await errors(gate)
    reply = await get(gate, "/late/x")
    servers.loop.call_soon_threadsafe(release.set)
    assert reply.status == 504
    assert error_of(reply) == "timeout"
    assert READ_TIMEOUT * 0.8 <= reply.elapsed < READ_TIMEOUT + 4
    await counted(gate, before, timeout=1)
    # Closed, not pooled: the late answer goes nowhere and the next request is
    # a fresh exchange.
    late_connection = connection_with(origin.upstream, b"/late/x")
    await until(lambda: late_connection.closed)
    after = await get(gate, "/public/after")
    assert after.status == 200
    assert after.responses[0].body == b"/public/after"
    assert b"LATE" not in after.raw


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_upstream_stalling_the_body_after_the_head_aborts_the_client_connection(
    gate: GateProcess, origin: Origin, framing: str
) -> None:
    async def big(received: Received, writer: asyncio.StreamWriter,
                  upstream: RecordingUpstream) -> bool:
        if framing == "chunked":
            chunk = b"%x\r\n%s\r\n" % (10_000, b"x" * 10_000)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + chunk * 10 + b"0\r\n\r\n")
            await writer.drain()
        else:
            await respond(writer, 200, b"x" * 100_000)
        return False

    origin.upstream.routes["/big/"] = big
    origin.faults.fault = Fault("stall_after", n=30_000)
    before = await errors(gate)
    reply = await get(gate, "/big/x", close=False, timeout=READ_TIMEOUT + 5)
    assert reply.closed  # by the gate, not by this client's timeout
    assert reply.status == 200
    response = reply.responses[0]
    assert not response.complete
    assert 0 < len(response.body) < 100_000
    assert b"\r\n0\r\n\r\n" not in reply.raw
    assert reply.elapsed >= READ_TIMEOUT * 0.8
    await counted(gate, before, timeout=1)


# -- C3: reset mid-response -------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_upstream_reset_mid_response_truncates_and_closes_the_client_connection(
    gate: GateProcess, origin: Origin, framing: str
) -> None:
    async def big(received: Received, writer: asyncio.StreamWriter,
                  upstream: RecordingUpstream) -> bool:
        if framing == "chunked":
            chunk = b"%x\r\n%s\r\n" % (50_000, b"x" * 50_000)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + chunk * (BIG // 50_000) + b"0\r\n\r\n")
            await writer.drain()
        else:
            await respond(writer, 200, b"x" * BIG)
        return False

    origin.upstream.routes["/big/"] = big
    origin.faults.fault = Fault("reset_after", n=400_000)
    before = await errors(gate)
    # A keep-alive request: only the gate cutting the connection ends the reply.
    reply = await get(gate, "/big/x", close=False, timeout=5)
    assert reply.closed
    assert reply.statuses == [200]
    response = reply.responses[0]
    assert not response.complete
    assert 0 < len(response.body) < BIG
    assert set(response.body) == {ord("x")}
    assert b"\r\n0\r\n\r\n" not in reply.raw
    await counted(gate, before, reset=1)


# -- C4: protocol violations -------------------------------------------------------------


@pytest.mark.parametrize("case", VIOLATIONS, ids=[c["name"] for c in VIOLATIONS])
async def test_upstream_protocol_violation_never_reaches_the_client(
    gate: GateProcess, origin: Origin, case: dict[str, Any]
) -> None:
    text = str(case["response"])
    if "repeat" in case:
        text = text.replace("{repeat}", case["repeat"]["text"] * case["repeat"]["count"])
    raw = text.encode("latin-1")

    async def violate(received: Received, writer: asyncio.StreamWriter,
                      upstream: RecordingUpstream) -> bool:
        writer.write(raw)
        await writer.drain()
        return False

    origin.upstream.routes["/violation/"] = violate
    before = await errors(gate)
    reply = await get(gate, f"/violation/{case['name']}")
    assert b"LEAKED" not in reply.raw
    assert len(reply.responses) == 1
    response = reply.responses[0]
    if case["expect"] == 502:
        assert (response.status, response.reason) == (502, "Bad Gateway")
        assert error_of(reply) == "protocol"
        await counted(gate, before, protocol=1)
    else:
        assert case["expect"] == "sanitised"
        assert (response.status, response.reason, response.body) == (200, "OK", b"ok")
        await counted(gate, before)


async def test_bytes_injected_right_after_a_valid_response_never_reach_the_next_client(
    gate: GateProcess, origin: Origin
) -> None:
    origin.upstream.routes["/kept/"] = _echo  # keep-alive: the gate may pool it
    origin.faults.fault = Fault("inject", data=INJECTED)
    first = await get(gate, "/kept/first")
    assert first.statuses == [200]
    assert first.responses[0].body == b"/kept/first"
    origin.faults.fault = Fault()
    second = await get(gate, "/kept/second")  # a new client connection
    assert second.statuses == [200]
    assert second.responses[0].body == b"/kept/second"
    assert b"INJECTED" not in first.raw + second.raw
    # A fresh exchange: the upstream itself answered the second request.
    assert [r.target for r in origin.upstream.requests()] == ["/kept/first", "/kept/second"]
    await get(gate, "/close-the-pooled-connection")


async def test_a_response_sent_on_an_idle_pooled_connection_never_reaches_the_next_client(
    direct_gate: GateProcess, origin: Origin, servers: LoopThread
) -> None:
    """The upstream speaks out of turn once its connection is back in the gate's
    pool: the next request must not take that for its answer. (Straight to the
    upstream, no fault proxy: once the upstream has written, the bytes are at the
    gate's socket, before the next request is even sent.)"""
    gate = direct_gate
    finished, injected = asyncio.Event(), asyncio.Event()  # on the servers' loop

    async def answer_then_inject(received: Received, writer: asyncio.StreamWriter,
                                 upstream: RecordingUpstream) -> bool:
        await respond(writer, 200, received.target.encode())
        await finished.wait()
        writer.write(INJECTED)
        await writer.drain()
        injected.set()
        return True

    origin.upstream.routes["/kept/"] = answer_then_inject
    first = await get(gate, "/kept/first")
    # The client's exchange is over: the upstream connection is idle in the pool.
    assert first.responses[0].body == b"/kept/first"
    servers.loop.call_soon_threadsafe(finished.set)
    servers.run(injected.wait())
    origin.upstream.routes["/kept/"] = _echo
    second = await get(gate, "/kept/second")
    assert second.statuses == [200]
    assert second.responses[0].body == b"/kept/second"
    assert b"INJECTED" not in second.raw
    assert [r.target for r in origin.upstream.requests()] == ["/kept/first", "/kept/second"]
    await get(gate, "/close-the-pooled-connection")


# -- C5: upstream 5xx --------------------------------------------------------------------


async def test_upstream_503_passes_through_unchanged_and_is_counted_as_the_upstreams(
    gate: GateProcess, origin: Origin
) -> None:
    body = b"origin overloaded, come back later\n"
    end_to_end = [("Retry-After", "7"), ("Content-Type", "text/plain; charset=utf-8"),
                  ("X-Origin-Trace", "abc-123"), ("Cache-Control", "no-store")]

    async def unavailable(received: Received, writer: asyncio.StreamWriter,
                          upstream: RecordingUpstream) -> bool:
        await respond(writer, 503, body, [*end_to_end, ("Keep-Alive", "timeout=5")],
                      reason="Origin Busy")
        return True

    origin.upstream.routes["/down/"] = unavailable
    before = await errors(gate)
    from_upstream = await gate.value("gatekeeper_responses_total", code="5xx", source="upstream")
    reply = await get(gate, "/down/page")
    response = reply.responses[0]
    assert (response.status, response.reason) == (503, "Origin Busy")
    assert response.body == body
    for name, value in end_to_end:
        assert response.header(name) == value, name
    assert response.header("Content-Length") == str(len(body))
    assert response.header("Keep-Alive") is None  # hop-by-hop
    await counted(gate, before)  # not the gate's failure
    deadline = time.monotonic() + 5
    while await gate.value("gatekeeper_responses_total", code="5xx",
                           source="upstream") != from_upstream + 1:
        assert time.monotonic() < deadline, "the 503 was not counted as the upstream's"
        await asyncio.sleep(0.05)
    lines = await gate.wait_for(lambda found: any(e["path"] == "/down/page" for e in found))
    line = next(e for e in lines if e["path"] == "/down/page")
    assert (line["status"], line["upstream_error"]) == (503, None)
    await get(gate, "/close-the-pooled-connection")


# -- C11: the client hangs up ------------------------------------------------------------


async def _hold(received: Received, writer: asyncio.StreamWriter,
                upstream: RecordingUpstream) -> bool:
    return True  # no answer; the next read sees the gate's close


async def test_client_hanging_up_mid_proxy_makes_the_gate_drop_the_upstream_exchange(
    direct_gate: GateProcess, origin: Origin
) -> None:
    gate = direct_gate  # default upstream timeouts (60 s): only the client's going away ends it
    origin.upstream.routes["/hold/"] = _hold
    baseline = gate.open_fds()
    _, writer = await asyncio.open_connection("127.0.0.1", gate.port, local_addr=(PUBLIC, 0))
    writer.write(request("GET", "/hold/x", UA))
    await until(lambda: any(r.path == "/hold/x" for r in origin.upstream.requests()))
    held = connection_with(origin.upstream, b"/hold/x")
    writer.transport.abort()
    took = await until(lambda: held.closed)
    assert took < 3.0  # about 5 ms here
    await until(lambda: gate.open_fds() <= baseline)
    lines = await gate.wait_for(lambda found: any(e["path"] == "/hold/x" for e in found))
    assert next(e for e in lines if e["path"] == "/hold/x")["upstream_error"] \
        == "client_disconnect"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_client_hanging_up_halfway_through_an_upload_never_completes_it_upstream(
    direct_gate: GateProcess, origin: Origin, framing: str
) -> None:
    gate = direct_gate
    baseline = gate.open_fds()
    declared, piece = 8 * 1024 * 1024, b"u" * 65536
    if framing == "chunked":
        head = request("POST", "/upload/x", {**UA, "Transfer-Encoding": "chunked"})
        piece = b"%x\r\n%s\r\n" % (len(piece), piece)
    else:
        head = request("POST", "/upload/x", {**UA, "Content-Length": str(declared)})
    _, writer = await asyncio.open_connection("127.0.0.1", gate.port, local_addr=(PUBLIC, 0))
    writer.write(head)
    for _ in range(declared // 2 // 65536):  # half of it
        writer.write(piece)
        await writer.drain()
    await until(lambda: any(len(c.raw) > 1024 * 1024 for c in origin.upstream.connections))
    writer.transport.abort()
    upload = connection_with(origin.upstream, b"/upload/x")
    await until(lambda: upload.closed)
    [received] = [r for r in origin.upstream.requests() if r.path == "/upload/x"]
    assert received.framing == framing
    assert not received.complete
    assert len(received.body) < declared
    assert not upload.raw.endswith(b"0\r\n\r\n")
    await until(lambda: gate.open_fds() <= baseline)
