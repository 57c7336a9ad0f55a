"""The black-box harness: Gatekeeper as a process, a recording upstream behind a
fault proxy, and raw-socket clients on 127.0.0.0/8.

    client (127.0.0.x) -> Gatekeeper -> fault proxy -> recording upstream

One gate per test module (`gate`) serves the cases that leave it as it was; tests
that need other settings, or that stop or overload it, start their own
(`start_gate`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.gate_process import GateProcess
from tests.support.loop_thread import LoopThread
from tests.support.recording_upstream import RecordingUpstream

POLICY = (Path(__file__).parent / "policy.yaml").read_text()


@dataclass
class Origin:
    """The recording upstream and the fault proxy in front of it."""

    upstream: RecordingUpstream
    faults: FaultProxy
    servers: LoopThread

    def reset(self) -> None:
        self.faults.fault = Fault()
        self.upstream.routes.clear()
        self.upstream.clear()


@pytest.fixture(scope="session")
def servers() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


def _origin(servers: LoopThread) -> Origin:
    upstream = RecordingUpstream()
    servers.run(upstream.start())
    faults = FaultProxy(upstream.port)
    servers.run(faults.start())
    return Origin(upstream, faults, servers)


def _close(origin: Origin) -> None:
    origin.servers.run(origin.faults.stop())
    origin.servers.run(origin.upstream.stop())


@pytest.fixture(scope="module")
def shared_origin(servers: LoopThread) -> Iterator[Origin]:
    origin = _origin(servers)
    yield origin
    _close(origin)


@pytest.fixture(scope="module")
def gate_policy() -> str:
    """The module gate's policy; a module overrides this fixture for another one."""
    return POLICY


@pytest.fixture(scope="module")
def gate_env() -> dict[str, str]:
    """The module gate's GATEKEEPER_* settings; a module overrides this fixture."""
    return {}


@pytest.fixture(scope="module")
def gate(shared_origin: Origin, tmp_path_factory: pytest.TempPathFactory, gate_policy: str,
         gate_env: dict[str, str]) -> Iterator[GateProcess]:
    process = GateProcess(tmp_path_factory.mktemp("gate"), shared_origin.faults.url,
                          gate_policy, gate_env)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def origin(shared_origin: Origin) -> Iterator[Origin]:
    """The module's origin, reset for this test: no fault, default routes, empty log."""
    shared_origin.reset()
    yield shared_origin
    shared_origin.reset()


StartGate = Callable[..., GateProcess]


@pytest.fixture
def own_origin(servers: LoopThread) -> Iterator[Origin]:
    origin = _origin(servers)
    yield origin
    _close(origin)


@pytest.fixture
def start_gate(tmp_path: Path) -> Iterator[StartGate]:
    """Start a gate of this test's own: `start_gate(upstream_url, policy=..., env=...)`."""
    started: list[GateProcess] = []

    def start(upstream: str, policy: str | None = POLICY, env: dict[str, str] | None = None,
              args: tuple[str, ...] = ()) -> GateProcess:
        process = GateProcess(tmp_path / f"gate-{len(started)}", upstream, policy, env, args)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()
