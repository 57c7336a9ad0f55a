"""The ledger in real processes: SIGTERM loses no acknowledged record, one writer
per file, and a torn tail left by a crash is trimmed with a warning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gatekeeper.ledger.file import FileLedger, read_chained, verify
from gatekeeper.ledger.record import UsageRecord, encode

ROOT = Path(__file__).resolve().parents[2]

# argv: mode ("write", "hold" or "open"), ledger path, flush interval.
# write: append continuously, printing each seq once append has returned, until
#        SIGTERM; then print how many records were still buffered and await close().
# hold:  open the ledger, print "ready", wait for SIGTERM, close.
# open:  open and close; a LedgerError is printed and exits 3.
CHILD = r"""
import asyncio, signal, sys
from pathlib import Path
from gatekeeper.ledger.file import FileLedger
from gatekeeper.ledger.record import LedgerError, UsageRecord

async def main(mode, path, interval):
    try:
        ledger = FileLedger(Path(path), flush_interval=interval, max_batch=10**9)
    except LedgerError as exc:
        print(f"error: {exc}", flush=True)
        sys.exit(3)
    await ledger.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    i = 0
    while mode == "write" and not stop.is_set():
        ledger.append(UsageRecord(
            time=1793491200.0 + i, licensee="acme", license="lic-1", crawler="GPTBot",
            path=f"/a/{i}", status=200, bytes=i, price="0.001", currency="USD"))
        print(ledger.last_seq, flush=True)
        i += 1
        await asyncio.sleep(0.0002)
    if mode == "hold":
        await stop.wait()
    print(f"pending {ledger.pending}", flush=True)
    await ledger.close()
    print("closed", flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
"""


class Child:
    def __init__(self, tmp: Path, mode: str, ledger: Path, interval: float) -> None:
        self.out = tmp / f"{mode}-{time.monotonic_ns()}.out"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, mode, str(ledger), str(interval)],
            stdout=self.out.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
        )

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        pytest.fail(f"child did not get there; its output:\n{self.out.read_text()[-2000:]}")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)

    def acknowledged(self) -> list[int]:
        return [int(line) for line in self.lines() if line.isdigit()]


@pytest.fixture
def children(tmp_path: Path) -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()


def start(children: list[Child], tmp: Path, mode: str, ledger: Path, interval: float) -> Child:
    child = Child(tmp, mode, ledger, interval)
    children.append(child)
    return child


def test_sigterm_loses_no_acknowledged_record_across_restarts(
    tmp_path: Path, children: list[Child]
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    acked: list[int] = []
    for _ in range(2):  # the second run continues the first one's chain
        before = ledger.stat().st_size if ledger.exists() else 0
        writer = start(children, tmp_path, "write", ledger, 1.0)
        # Wait for one background flush, then stop mid-interval so that records are
        # still buffered when SIGTERM arrives: only close() can save them.
        # The lambda is called only within this iteration, so `before` is the right one.
        writer.wait_for(lambda: ledger.exists() and ledger.stat().st_size > before)  # noqa: B023
        time.sleep(0.3)
        assert writer.terminate() == 0
        out = writer.lines()
        assert out[-1] == "closed"
        pending = next(int(line.split()[1]) for line in out if line.startswith("pending"))
        assert pending > 0
        run = writer.acknowledged()
        assert run == list(range(len(acked) + 1, len(acked) + len(run) + 1))
        acked += run
    on_disk = [c.seq for c in read_chained(ledger)]
    # The child prints before it yields to the loop, where SIGTERM is handled, so
    # every record it appended was acknowledged.
    assert on_disk == acked
    result = verify(ledger)
    assert result.ok, result.detail
    assert result.records == len(on_disk)


def test_a_second_process_cannot_open_a_ledger_another_one_holds(
    tmp_path: Path, children: list[Child]
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    holder = start(children, tmp_path, "hold", ledger, 0.5)
    holder.wait_for(lambda: "ready" in holder.lines())
    second = start(children, tmp_path, "open", ledger, 0.5)
    assert second.proc.wait(timeout=15) == 3
    (message,) = second.lines()
    assert f"already open for writing by process {holder.proc.pid}" in message
    assert "one process writes a ledger file" in message
    assert holder.terminate() == 0
    third = start(children, tmp_path, "open", ledger, 0.5)
    assert third.proc.wait(timeout=15) == 0, third.lines()


async def test_a_torn_tail_from_a_crash_is_trimmed_with_a_warning(
    tmp_path: Path, children: list[Child]
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    first = FileLedger(ledger)
    for i in range(3):
        first.append(UsageRecord(float(i), "acme", "lic-1", "GPTBot", "/a", 200, 1))
    await first.close()
    intact = ledger.read_bytes()
    torn, _ = encode(UsageRecord(3.0, "acme", "lic-1", "GPTBot", "/a", 200, 1), 4, "0" * 64)
    with ledger.open("ab") as f:
        f.write(torn[:50])
    opener = start(children, tmp_path, "open", ledger, 0.5)
    assert opener.proc.wait(timeout=15) == 0, opener.lines()
    assert any("ledger_torn_tail_trimmed" in line for line in opener.lines())
    assert ledger.read_bytes() == intact
    assert verify(ledger).ok
    assert os.stat(ledger).st_size == len(intact)


# A file size limit makes write() stop part-way through a batch, as a full disk does.
FULL_DISK = r"""
import asyncio, resource, signal, sys
from pathlib import Path
from gatekeeper.ledger.file import FileLedger
from gatekeeper.ledger.record import LedgerError, UsageRecord

async def main(path):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    ledger = FileLedger(Path(path))
    for i in range(10):
        ledger.append(UsageRecord(float(i), "acme", "lic-1", "GPTBot", f"/a/{i}", 200, i))
    ledger.flush_now()
    first = Path(path).stat().st_size
    print(f"first {first}", flush=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (first + 1000, hard))
    for i in range(10, 20):
        ledger.append(UsageRecord(float(i), "acme", "lic-1", "GPTBot", f"/a/{i}", 200, i))
    try:
        ledger.flush_now()
    except LedgerError as exc:
        print(f"failed: {exc}", flush=True)
    print(f"size {Path(path).stat().st_size} pending {ledger.pending}", flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    await ledger.close()

asyncio.run(main(sys.argv[1]))
"""


def test_a_write_cut_short_is_undone_and_the_whole_batch_retried(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(ledger)],
        capture_output=True, text=True, cwd=ROOT, timeout=30, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first, failed, state = proc.stdout.splitlines()
    assert failed.startswith("failed: cannot write ledger")
    assert "free disk space" in failed
    size, pending = int(state.split()[1]), int(state.split()[3])
    assert pending == 10
    assert size == int(first.split()[1]) + 1000  # part of the batch got in before the limit
    assert [c.seq for c in read_chained(ledger)] == list(range(1, 21))
    assert verify(ledger).ok
