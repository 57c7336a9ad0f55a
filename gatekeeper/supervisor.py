"""`gatekeeper run --workers N`: N worker processes on one port, and their supervisor.

Each worker is an ordinary `gatekeeper run` with the same settings, listening on the
shared port with SO_REUSEPORT (the kernel spreads connections over them), and with
its own admin listener on a loopback port it reports back. This process starts them,
restarts one that dies (after a second, so a crash loop cannot spin), passes SIGHUP
on, and on SIGTERM or SIGINT passes that on and waits for them to drain.

It also serves the admin listener (`admin_listen`) for all of them:

- `/metrics` scrapes every worker and merges the families: counters, histograms and
  summaries are summed per label set; gauges take the largest value (Gatekeeper's
  gauges describe shared state, such as a range list's age, which every worker
  sees the same way, or a ledger position, where the furthest is the answer).
  prometheus_client's own multiprocess mode is not used: it cannot carry gauges
  computed at scrape time, which Gatekeeper's are, and it wants every process to
  agree on a shared directory before the first metric exists.
- `/healthz` answers while this process runs, and says how many workers are up.
- `/readyz` is ready when every worker's `/readyz` is.

Limits that must hold across all workers (rate limits keyed on anything, licence
quotas) need a shared store: with the memory store each worker would count alone,
so `workers > 1` with `store: memory` is refused when the policy has any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import aiohttp
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gatekeeper.core.model import Policy, RateLimit, RequireLicense
from gatekeeper.errors import SettingsError
from gatekeeper.observe import logging as gk_logging
from gatekeeper.settings import Settings

_RESTART_DELAY: Final = 1.0
_START_TIMEOUT: Final = 30.0
_SCRAPE_TIMEOUT: Final = 5.0
_SUMMED: Final = frozenset({"counter", "histogram", "summary"})
_NO_STORE: Final = {"Cache-Control": "no-store"}

_log = gk_logging.get_logger("gatekeeper.supervisor")


def check_shared_limits(settings: Settings, policy: Policy) -> None:
    """Refuse several workers counting global limits each on their own."""
    if settings.workers <= 1 or settings.store != "memory":
        return
    rules = [*policy.rules, *(r for s in policy.host_sections for r in s.rules)]
    counted = [r.name for r in rules if isinstance(r.action, RateLimit)]
    counted += [r.name for r in rules if isinstance(r.action, RequireLicense)
                and any(lic.limits is not None for lic in policy.licenses
                        if lic.name in r.action.any_of)]
    if counted:
        raise SettingsError(
            f"workers: {settings.workers} workers with store: memory would each keep their "
            f"own count for {', '.join(counted)}, multiplying the limits; set store: redis "
            "(and redis_url) so they share one count, or run one worker")


@dataclasses.dataclass
class _Worker:
    index: int
    report: Path
    proc: subprocess.Popen[bytes] | None = None
    admin_port: int = 0
    restarts: int = 0


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._dir = Path(tempfile.mkdtemp(prefix="gatekeeper-workers-"))
        self._config = self._dir / "settings.yaml"
        self._workers = [_Worker(i, self._dir / f"worker-{i}.port")
                         for i in range(settings.workers)]
        self._stopping = False

    async def run(self) -> int:
        self._write_config()
        for worker in self._workers:
            self._spawn(worker)
        await asyncio.gather(*(self._wait_started(w) for w in self._workers))
        runner = web.AppRunner(self._admin_app(), access_log=None)
        await runner.setup()
        host, _, port = self._settings.admin_listen.rpartition(":")
        site = web.TCPSite(runner, host.strip("[]") or "0.0.0.0", int(port),
                           reuse_address=True)
        await site.start()
        _log.info("workers_started", workers=len(self._workers),
                  listen=self._settings.listen, admin_listen=self._settings.admin_listen)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._signal_all(signal.SIGHUP))
        watcher = asyncio.create_task(self._watch())
        try:
            await stop.wait()
        finally:
            self._stopping = True
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await self._stop_all()
            await runner.cleanup()
        _log.info("workers_stopped")
        return 0

    # -- processes -----------------------------------------------------------------

    def _write_config(self) -> None:
        values: dict[str, Any] = {}
        for field in dataclasses.fields(self._settings):
            value = getattr(self._settings, field.name)
            values[field.name] = list(value) if isinstance(value, tuple) else value
        self._config.write_text(yaml.safe_dump(values), encoding="utf-8")

    def _spawn(self, worker: _Worker) -> None:
        worker.report.unlink(missing_ok=True)
        # The worker's settings are this process's, resolved once and written out: the
        # environment's GATEKEEPER_* variables were part of that resolution already.
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
        env.update({
            "GATEKEEPER_WORKERS": "1",
            "GATEKEEPER_REUSE_PORT": "true",
            "GATEKEEPER_WORKER_ID": str(worker.index),
            "GATEKEEPER_ADMIN_LISTEN": "127.0.0.1:0",
            "GATEKEEPER_WORKER_REPORT": str(worker.report),
        })
        worker.proc = subprocess.Popen(
            [sys.executable, "-m", "gatekeeper", "run", "--config", str(self._config)],
            env=env)
        _log.info("worker_started", worker=worker.index, pid=worker.proc.pid)

    async def _wait_started(self, worker: _Worker) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if worker.report.exists() and worker.report.read_text().strip():
                worker.admin_port = int(worker.report.read_text())
                return
            assert worker.proc is not None
            if worker.proc.poll() is not None:
                raise SettingsError(f"worker {worker.index} exited with status "
                                    f"{worker.proc.returncode} while starting")
            await asyncio.sleep(0.05)
        raise SettingsError(f"worker {worker.index} did not start within {_START_TIMEOUT:g} s")

    async def _watch(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            for worker in self._workers:
                if worker.proc is None or worker.proc.poll() is None or self._stopping:
                    continue
                _log.error("worker_died", worker=worker.index, status=worker.proc.returncode)
                await asyncio.sleep(_RESTART_DELAY)
                if self._stopping:
                    return
                worker.restarts += 1
                self._spawn(worker)
                with contextlib.suppress(SettingsError):
                    await self._wait_started(worker)

    def _signal_all(self, sig: signal.Signals) -> None:
        for worker in self._workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(sig)

    async def _stop_all(self) -> None:
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self._settings.shutdown_timeout + 5.0
        for worker in self._workers:
            proc = worker.proc
            if proc is None:
                continue
            try:
                await asyncio.to_thread(proc.wait, max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                _log.error("worker_killed", worker=worker.index)
                proc.kill()
                await asyncio.to_thread(proc.wait)

    # -- admin -----------------------------------------------------------------------

    def _admin_app(self) -> web.Application:
        async def metrics(request: web.Request) -> web.Response:
            texts = await self._gather("/metrics")
            body = merge_metrics(t for _, t in texts if t is not None)
            return web.Response(text=body, headers={
                "Content-Type": "text/plain; version=0.0.4; charset=utf-8", **_NO_STORE})

        async def healthz(request: web.Request) -> web.Response:
            alive = sum(1 for w in self._workers if w.proc is not None and w.proc.poll() is None)
            return web.Response(text=f"ok, {alive} of {len(self._workers)} workers up\n",
                                headers=_NO_STORE)

        async def readyz(request: web.Request) -> web.Response:
            answers = await self._gather("/readyz")
            workers = {str(i): text is not None for i, text in answers}
            ok = all(workers.values())
            body = {"ready": ok, "workers": workers}
            return web.Response(status=200 if ok else 503, text=json.dumps(body) + "\n",
                                content_type="application/json", headers=_NO_STORE)

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        return app

    async def _gather(self, path: str) -> list[tuple[int, str | None]]:
        timeout = aiohttp.ClientTimeout(total=_SCRAPE_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def one(worker: _Worker) -> tuple[int, str | None]:
                try:
                    url = f"http://127.0.0.1:{worker.admin_port}{path}"
                    async with session.get(url) as r:
                        text = await r.text()
                        return worker.index, text if r.status == 200 else None
                except (aiohttp.ClientError, TimeoutError):
                    return worker.index, None
            return list(await asyncio.gather(*(one(w) for w in self._workers)))


def merge_metrics(texts: Iterable[str]) -> str:
    """Prometheus text expositions merged into one (see the module docstring)."""
    families: dict[str, tuple[str, str]] = {}  # name -> (type, help)
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name.endswith("_created"):
                continue  # when each worker's series began: no sum of them means anything
            families.setdefault(family.name, (family.type, family.documentation))
            into = values.setdefault(family.name, {})
            summed = family.type in _SUMMED
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                known = into.get(key)
                if known is None:
                    into[key] = sample.value
                else:
                    into[key] = known + sample.value if summed else max(known, sample.value)
    lines: list[str] = []
    for name, (kind, doc) in families.items():
        if not values[name]:
            continue
        # The text format names a counter by its sample (`x_total`); the parser strips it.
        shown = f"{name}_total" if kind == "counter" else name
        lines.append(f"# HELP {shown} {_escape_help(doc)}")
        lines.append(f"# TYPE {shown} {kind}")
        for (series, labels), value in values[name].items():
            rendered = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
            lines.append(f"{series}{{{rendered}}} {_number(value)}" if rendered
                         else f"{series} {_number(value)}")
    return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value != value:  # NaN
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def run(settings: Settings) -> int:
    from gatekeeper.edge import server

    return server.run(Supervisor(settings).run())
