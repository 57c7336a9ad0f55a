"""The benchmark's upstream: nginx serving one 10 KB page on 127.0.0.1.

nginx, not Python, so the origin is never the bottleneck: on a 2-core machine it
answers about ten times faster than any Python proxy in front of it. It runs as
an ordinary foreground process (`nginx -c CONF -g 'daemon off;'`) with a config,
pid file, logs and temp directories generated in a scratch directory; nothing of
the system's nginx setup is used or touched.

Standalone: `python bench/origin.py --port 8000` serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

PAGE_SIZE = 10 * 1024
PAGE_PATH = "/page"
# Debian package names, tried in this order; the first one apt knows is installed.
NGINX_PACKAGES = ("nginx-light", "nginx")
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0


def page_body(size: int = PAGE_SIZE) -> bytes:
    """An HTML page of exactly `size` bytes."""
    head, tail = b"<!doctype html><title>bench</title><p>", b"</p>\n"
    return head + b"x" * (size - len(head) - len(tail)) + tail


def nginx_main_conf(workdir: Path, http: str) -> str:
    """A self-contained nginx.conf around `http` (the http block's own lines): one
    worker, every path inside `workdir`.

    One worker because the machine has two cores and the proxy under test and wrk
    need them more; nginx still answers at tens of thousands of requests/s.
    """
    temp = workdir / "temp"
    # Started as root, nginx runs its worker as nobody, who may not enter `workdir`.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_timeout 60s;
    keepalive_requests 10000000;
{http}}}
"""


def nginx_config(port: int, workdir: Path) -> str:
    """The origin: the 10 KB page on `port`."""
    return nginx_main_conf(workdir, f"""\
    default_type text/html;
    sendfile on;
    tcp_nodelay on;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        root {workdir}/www;
        location / {{ try_files /page.html =404; }}
    }}
""")


def find_nginx() -> str | None:
    """The nginx binary on PATH or in the usual sbin directories (not always on PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def apt_install(packages: Sequence[str]) -> bool:
    """Install the first of `packages` that apt has a candidate for. Runs apt-get update
    once if apt knows none of them. False when apt, root or every candidate is missing."""
    apt = shutil.which("apt-get")
    if apt is None:
        return False
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if sudo is None:
            return False
        prefix = [sudo, "-n"]
    for attempt in range(2):  # the second pass only after an apt-get update
        for package in packages:
            if _apt_has_candidate(package):
                print(f"bench: installing {package} with apt-get", flush=True)
                result = subprocess.run(
                    [*prefix, apt, "install", "-y", "-qq", package],
                    env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                    stdout=subprocess.DEVNULL, check=False,
                )
                return result.returncode == 0
        if attempt == 0:
            subprocess.run([*prefix, apt, "update", "-qq"], stdout=subprocess.DEVNULL,
                           check=False)
    return False


def _apt_has_candidate(package: str) -> bool:
    out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True,
                         check=False).stdout
    for line in out.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Candidate":
            return value.strip() not in ("", "(none)")
    return False


def ensure_nginx() -> str:
    """The nginx binary, installed with apt if it is missing."""
    nginx = find_nginx()
    if nginx is None and apt_install(NGINX_PACKAGES):
        nginx = find_nginx()
    if nginx is None:
        raise RuntimeError(
            "nginx is not installed and could not be installed "
            f"(apt-get install {' or '.join(NGINX_PACKAGES)})"
        )
    return nginx


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None,
                  timeout: float = _START_TIMEOUT) -> None:
    """Return once 127.0.0.1:`port` accepts connections; raise if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process for port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing accepted connections on 127.0.0.1:{port} in {timeout:.0f}s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited after a while."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(_STOP_TIMEOUT)


@contextlib.contextmanager
def nginx_origin(port: int, workdir: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """nginx serving the page on 127.0.0.1:`port` for the duration of the block.

    Started as root, nginx's workers run as an unprivileged user, which must be able
    to reach `workdir`: without one, a fresh scratch directory is made for that."""
    nginx = ensure_nginx()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gk-origin-")))
        (workdir / "www").mkdir(parents=True, exist_ok=True)
        (workdir / "temp").mkdir(exist_ok=True)
        (workdir / "www" / "page.html").write_bytes(page_body())
        # A scratch directory is created private; the workers must read through it.
        for path in (workdir, workdir / "www", workdir / "www" / "page.html"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        conf = workdir / "nginx.conf"
        conf.write_text(nginx_config(port, workdir), encoding="utf-8")
        yield stack.enter_context(nginx_running(nginx, workdir, conf, port))


@contextlib.contextmanager
def nginx_running(nginx: str, workdir: Path, conf: Path, port: int,
                  ) -> Iterator[subprocess.Popen[bytes]]:
    """nginx in the foreground with `conf`, once it listens on `port`; stopped after."""
    # -p keeps nginx from looking at its compiled-in prefix; -e (nginx >= 1.19.5)
    # keeps it from opening the system error log before it reads the config.
    cmd = [nginx, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf),
           "-g", "daemon off;"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        try:
            wait_for_port(port, proc)
        except RuntimeError as exc:
            stop_process(proc)
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            log = workdir / "error.log"
            if log.exists():
                err += log.read_text(errors="replace")
            raise RuntimeError(f"nginx did not start: {exc}\n{err.strip()}") from exc
        yield proc
    finally:
        stop_process(proc)
        if proc.stderr is not None:
            proc.stderr.close()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so the nginx started here is stopped too."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with nginx_origin(args.port) as proc:
        print(f"origin: nginx serving {PAGE_SIZE} bytes at "
              f"http://127.0.0.1:{args.port}{PAGE_PATH} (Ctrl-C stops)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
