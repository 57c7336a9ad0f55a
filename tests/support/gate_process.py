"""Gatekeeper as a separate process, the way operators run it: `python -m gatekeeper run`.

The black-box suite sees it only from outside: its listening sockets, its JSON log,
its admin listener's `/metrics`, and its process entry in /proc (RSS, open files).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.raw_http import CRAWLER_RANGE, TRUSTED_PROXY

Event = dict[str, Any]


_BIND_ATTEMPTS = 5


class _PortTaken(Exception):
    """The gate exited because another process took one of its ports first."""


def _answers_health(port: int) -> bool:
    """Does Gatekeeper's admin listener answer on `port`? (Not just anyone's socket.)"""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
    try:
        conn.request("GET", "/healthz")
        reply = conn.getresponse()
        return reply.status == 200 and reply.read().startswith(b"ok")
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_crawler_range(cache_dir: Path, cidr: str = CRAWLER_RANGE) -> None:
    """Make `cidr` GPTBot's published list (a cached copy wins over the packaged one)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    doc = {"creationTime": "2026-11-01T00:00:00.000000", "prefixes": [{"ipv4Prefix": cidr}]}
    (cache_dir / "openai-gptbot.json").write_text(json.dumps(doc))


class GateProcess:
    def __init__(self, workdir: Path, upstream: str, policy: str | None = None,
                 env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.upstream = upstream
        self.policy_file = workdir / "policy.yaml"
        if policy is not None:
            self.policy_file.write_text(policy)
        self.log_file = workdir / "gatekeeper.log"
        self.port = free_port()
        self.admin = free_port()
        self.env = {
            "GATEKEEPER_STATE_DIR": str(workdir / "state"),
            "GATEKEEPER_RANGES_CACHE_DIR": str(workdir / "ranges"),
            "GATEKEEPER_RANGES_REFRESH_INTERVAL": "0",
            "GATEKEEPER_POLICY_WATCH_INTERVAL": "0.2",
            "GATEKEEPER_TRUSTED_PROXIES": f"{TRUSTED_PROXY}/32",
            "GATEKEEPER_SITE_HOSTS": "t",
            **(env or {}),
        }
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        write_crawler_range(workdir / "ranges")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # -- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> GateProcess:
        """Start the gate and wait until both listeners answer.

        The ports are picked free before the gate binds them, and another process can
        take one in between: then the gate exits with "address already in use", and it
        is started again on fresh ports (`port` and `admin` change), a few times."""
        for attempt in range(_BIND_ATTEMPTS):
            if attempt:
                self.port, self.admin = free_port(), free_port()
            try:
                return self._start_once(timeout)
            except _PortTaken as exc:
                if attempt + 1 == _BIND_ATTEMPTS:
                    raise RuntimeError(f"gatekeeper found its ports taken {_BIND_ATTEMPTS} "
                                       f"times:\n{exc}") from None
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> GateProcess:
        policy = ("--policy", str(self.policy_file)) if self.policy_file.exists() else ()
        logged = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gatekeeper", "run", "--upstream", self.upstream,
                 "--listen", f"127.0.0.1:{self.port}",
                 "--admin-listen", f"127.0.0.1:{self.admin}", *policy, *self.args],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                with self.log_file.open("rb") as log:
                    log.seek(logged)
                    said = log.read().decode(errors="replace")
                if "address already in use" in said.lower():
                    raise _PortTaken(said)
                raise RuntimeError("gatekeeper exited:\n" + self.log_file.read_text())
            # The admin listener is bound after the main one: when it answers as
            # Gatekeeper's, the main port is the gate's too, not whoever took it.
            if _answers_health(self.admin):
                try:
                    socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                    return self
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("gatekeeper did not start:\n" + self.log_file.read_text())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the process and wait; returns its exit code (killed if it hangs)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    # -- what can be seen from outside ---------------------------------------------------

    def events(self, event: str | None = None) -> list[Event]:
        if not self.log_file.exists():
            return []
        out = []
        for line in self.log_file.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line still being written
                if event is None or record.get("event") == event:
                    out.append(record)
        return out

    async def wait_for(self, predicate: Callable[[list[Event]], bool], event: str = "request",
                       timeout: float = 5.0) -> list[Event]:
        """Request lines are batched for up to a second: poll the log until `predicate`."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(event)
            if predicate(found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"log never satisfied the condition; {event} lines: "
                                     f"{found[-5:]}")
            await asyncio.sleep(0.05)

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with aiohttp.ClientSession() as s, s.get(self.admin_url + "/metrics") as r:
            text = await r.text()
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    async def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        found = await self.metrics()
        return sum(v for (n, ls), v in found.items()
                   if n == name and all((k, val) in ls for k, val in labels.items()))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    async def reload(self, policy: str, *, expect: str = "success") -> None:
        """Replace the policy file and SIGHUP; wait for the reload result `expect`."""
        before = await self.value("gatekeeper_policy_reloads_total", result=expect)
        self.policy_file.write_text(policy)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while await self.value("gatekeeper_policy_reloads_total", result=expect) <= before:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {expect} reload: " + self.log_file.read_text()[-2000:])
            await asyncio.sleep(0.05)

    async def wait_flushed(self, predicate: Callable[[list[Event]], bool],
                           event: str = "request", timeout: float = 5.0) -> list[Event]:
        """`wait_for` without sitting out the request-line batch: any other log line
        flushes it, so while `predicate` fails a SIGHUP is sent (a reload of the
        unchanged policy, logged as `policy_reloaded`), at most every 0.2 s. Not for
        tests that count reloads."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        nudged = 0.0
        while True:
            found = self.events(event)
            if predicate(found):
                return found
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(f"log never satisfied the condition; {event} lines: "
                                     f"{found[-5:]}")
            if now - nudged >= 0.2:
                self.proc.send_signal(signal.SIGHUP)
                nudged = now
            await asyncio.sleep(0.02)
