"""The black-box harness itself: a gate whose port another process takes between the
harness picking it and the gate binding it is started again on fresh ports, and never
reported started while someone else holds one of its ports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.adversarial.conftest import Origin
from tests.support.gate_process import GateProcess


@pytest.mark.parametrize("taken", ["port", "admin"])
def test_a_port_taken_before_the_gate_binds_it_is_replaced_by_a_fresh_one(
    shared_origin: Origin, tmp_path: Path, taken: str
) -> None:
    gate = GateProcess(tmp_path / "gate", shared_origin.faults.url)
    with socket.socket() as squatter:
        held = gate.port if taken == "port" else gate.admin
        squatter.bind(("127.0.0.1", held))
        squatter.listen()  # it accepts connections too, as a real squatter would
        gate.start()
        try:
            assert held not in (gate.port, gate.admin)
            assert gate.proc is not None
            assert gate.proc.poll() is None
            [started] = gate.events("started")
            assert started["listen"] == f"127.0.0.1:{gate.port}"
            assert started["admin_listen"] == f"127.0.0.1:{gate.admin}"
        finally:
            gate.stop()
    assert "address already in use" in gate.log_file.read_text().lower()
