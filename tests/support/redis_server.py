"""A real redis-server on loopback for tests, in its own temporary directory.

The server listens on a free port of 127.0.0.1 with persistence off, runs in the
foreground as a child process, and can be stopped and started again on the same
port (a restart loses every key and every loaded script) or paused with SIGSTOP
and resumed with SIGCONT (the kernel still accepts connections; nothing answers).
`scripts/test.sh` installs Debian's redis-server through `scripts/setup.sh`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class RedisTestServer:
    """`start()`, use `url`, `stop()`; also a context manager (started on entry)."""

    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not on PATH: the Redis store tests need a real server. "
                "Run the tests with scripts/test.sh, which installs Debian's redis-server "
                "(or run scripts/setup.sh redis-server once).")
        self._binary = binary
        self.port = port if port is not None else _free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self._dir = Path(tempfile.mkdtemp(prefix="gk-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (again, on the same port) and wait until it answers PING."""
        if self._proc is not None:
            raise RuntimeError("redis test server already running")
        log = (self._dir / "redis.log").open("ab")
        try:
            self._proc = subprocess.Popen(
                [self._binary, "--port", str(self.port), "--bind", HOST, "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--dir", str(self._dir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not self._answers_ping():
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"redis-server exited at start on port {self.port}:\n"
                                   + self.log())
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING within {timeout} s:\n"
                                   + self.log())
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server; its keys are gone (persistence is off)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self._paused:  # a stopped process would not act on SIGTERM
            os.kill(proc.pid, signal.SIGCONT)
            self._paused = False
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted, nothing is answered."""
        if self._proc is None:
            raise RuntimeError("redis test server is not running")
        os.kill(self._proc.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        if self._proc is not None and self._paused:
            os.kill(self._proc.pid, signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def log(self) -> str:
        path = self._dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> RedisTestServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
