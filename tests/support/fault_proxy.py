"""A small asyncio TCP proxy that misbehaves on demand, between the gate and its upstream.

toxiproxy is not packaged here; these are the faults the black-box suite needs, set
with `proxy.fault = Fault(...)` before a request:

- `pass`: relay both ways;
- `refuse`: accept and reset at once (a connect that fails);
- `blackhole`: accept, read nothing, answer nothing;
- `reset_after`: relay `n` bytes of the response, then reset;
- `stall_after`: relay `n` bytes of the response, then go silent;
- `trickle`: relay the response one byte every `delay` seconds;
- `garbage`: answer `data` instead of the upstream's response, then close;
- `inject`: relay the response, then append `data` on the same connection;
- `latency`: hold the response for `delay` seconds before relaying it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Literal

from tests.support.loopback_server import LoopbackServer
from tests.support.recording_upstream import reset

Mode = Literal["pass", "refuse", "blackhole", "reset_after", "stall_after", "trickle",
               "garbage", "inject", "latency"]


@dataclass(frozen=True)
class Fault:
    mode: Mode = "pass"
    n: int = 0
    delay: float = 0.0
    data: bytes = b""


class FaultProxy(LoopbackServer):
    def __init__(self, target_port: int) -> None:
        super().__init__()
        self.target_port = target_port
        self.fault = Fault()
        self.accepted = 0
        self.open = 0

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        fault = self.fault
        try:
            if fault.mode == "refuse":
                reset(writer)
                return
            if fault.mode == "blackhole":
                await asyncio.sleep(3600)
                return
            if fault.mode == "garbage":
                await reader.read(65536)
                writer.write(fault.data)
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            try:
                await asyncio.gather(self._pipe(reader, up_writer),
                                     self._respond(up_reader, writer, fault))
            finally:
                up_writer.close()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            with contextlib.suppress(Exception):
                writer.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
        with contextlib.suppress(OSError):
            dst.write_eof()

    async def _respond(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       fault: Fault) -> None:
        sent = 0
        while data := await src.read(65536):
            if fault.mode == "latency" and sent == 0:
                await asyncio.sleep(fault.delay)
            if fault.mode in ("reset_after", "stall_after") and sent + len(data) >= fault.n:
                dst.write(data[:fault.n - sent])
                await dst.drain()
                if fault.mode == "reset_after":
                    reset(dst)
                else:
                    await asyncio.sleep(3600)
                return
            if fault.mode == "trickle":
                for i in range(len(data)):
                    dst.write(data[i:i + 1])
                    await dst.drain()
                    await asyncio.sleep(fault.delay)
            else:
                # One write for the response and the injected bytes: written apart, the
                # proxy's thread could be held between them long enough for the gate to
                # reuse the connection first, and the test would measure the scheduler.
                dst.write(data + fault.data if fault.mode == "inject" else data)
                await dst.drain()
            sent += len(data)
        with contextlib.suppress(OSError):
            dst.write_eof()
