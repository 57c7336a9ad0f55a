"""`gatekeeper run --workers N`: N worker processes on one port, and their supervisor.

Each worker is an ordinary `gatekeeper run` with the same settings, listening on the
shared port with SO_REUSEPORT (the kernel spreads connections over them), and with
its own admin listener on a loopback port it reports back. This process starts them,
restarts one that dies (after a second, so a crash loop cannot spin), passes SIGHUP
on, and on SIGTERM or SIGINT passes that on and waits for them to drain.

It also serves the admin listener (`admin_listen`) for all of them:

- `/metrics` scrapes every worker and merges the families (`observe/merge.py`).
- `/healthz` answers while this process runs, and says how many workers are up.
- `/readyz` is ready when every worker's `/readyz` is.
- `/status` is the workers' status page, and `/status.json` merges theirs
  (`observe/merge.py`).
- `/owners` (the content-owner API) is relayed to the first worker that answers.

State that must be shared across all workers needs a shared store. With the memory
store each worker would count rate limits and licence quotas alone, and would keep
its own Web Bot Auth replay cache, so a signature replayed to another worker would
be taken as fresh: `workers > 1` with `store: memory` is refused when the policy has
limits, or rules a signature changes the outcome of (`check_shared_limits`). Behaviour
windows kept per worker are only warned about: most policies have a rule on undeclared
bots, and refusing them would leave the memory store no use for several workers.

Whichever way the supervisor ends (a signal, a worker that cannot start, the admin
port taken) it stops every worker it started and removes its scratch directory.
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp
import yaml
from aiohttp import web

from gatekeeper.core.catalog import UNDECLARED_BOT, UNKNOWN, Catalog
from gatekeeper.core.evaluate import can_match
from gatekeeper.core.facts import Identity
from gatekeeper.core.model import Policy, RateLimit, RequireLicense, Rule
from gatekeeper.edge.admin import status_routes
from gatekeeper.errors import SettingsError
from gatekeeper.observe import logging as gk_logging
from gatekeeper.observe.merge import merge_metrics, merge_status
from gatekeeper.settings import Settings, split_hostport

_RESTART_DELAY: Final = 1.0
_START_TIMEOUT: Final = 30.0
_SCRAPE_TIMEOUT: Final = 5.0
_NO_STORE: Final = {"Cache-Control": "no-store"}
# The workers' admin listeners take at most this much (edge/admin.py).
_OWNERS_BODY_LIMIT: Final = 64 * 1024

_log = gk_logging.get_logger("gatekeeper.supervisor")


def check_shared_limits(settings: Settings, policy: Policy,
                        catalog: Catalog | None = None, *, warn: bool = True,
                        ) -> tuple[str, ...]:
    """Refuse several workers keeping state each on their own that the policy needs
    shared: limits counted per worker, or a Web Bot Auth replay cache per worker when
    a signature decides something. Returns (and logs) the warnings for what is kept
    per worker and only weakens a decision: a replay cache no rule depends on, and
    behaviour windows that rules on undeclared bots read. `catalog` tells whether any
    crawler signs its requests; None assumes one does, as in the packaged catalog."""
    if settings.workers <= 1 or settings.store != "memory":
        return ()
    rules = [*policy.rules, *(r for s in policy.host_sections for r in s.rules)]
    counted = [r.name for r in rules if isinstance(r.action, RateLimit)]
    counted += [r.name for r in rules if isinstance(r.action, RequireLicense)
                and any(lic.limits is not None for lic in policy.licenses
                        if lic.name in r.action.any_of)]
    signers = catalog is None or any(c.signature_agents for c in catalog)
    trusting = _trusting_signatures(settings, rules) if signers else []
    problems = []
    if counted:
        problems.append(f"their own count for {', '.join(counted)}, multiplying the limits")
    if trusting:
        problems.append(
            "their own Web Bot Auth replay cache, so a signed request replayed to another "
            f"worker would pass as signed again for {', '.join(trusting)}")
    if problems:
        raise SettingsError(
            f"workers: {settings.workers} workers with store: memory would each keep "
            f"{'; and '.join(problems)}; set store: redis (and redis_url) so they share "
            "one store, or run one worker")
    warnings: list[tuple[str, str]] = []
    if signers:
        warnings.append(("replay_cache_per_worker", (
            f"workers: {settings.workers} workers with store: memory each keep their own "
            "Web Bot Auth replay cache: a signed request replayed to another worker is "
            "counted and logged as signed again. No rule of this policy depends on a "
            "signature, so no decision changes; set store: redis to catch every replay")))
    scoring = _scoring_undeclared_bots(rules) if settings.behaviour else []
    if scoring:
        warnings.append(("behaviour_windows_per_worker", (
            f"workers: {settings.workers} workers with store: memory each keep their own "
            "behaviour windows, so each scores undeclared bots on the requests it alone "
            f"sees: a client's rate is split over the {settings.workers} workers, and a "
            "crawler refused by one worker that comes back to another as a browser is not "
            f"recognised. That weakens {', '.join(scoring)}; set store: redis (with "
            "behaviour_store: shared, the default) so the workers score clients together, "
            "or run one worker")))
    if warn:
        for event, warning in warnings:
            _log.warning(event, detail=warning)
    return tuple(warning for _, warning in warnings)


def _scoring_undeclared_bots(rules: list[Rule]) -> list[str]:
    """The rules that treat an undeclared bot differently from a client claiming
    nothing, so whose outcome the behaviour score changes: behaviour scoring turns an
    `unknown` client (no crawler, no purpose) into an `undeclared-bot` one."""
    # Conditions on the request aside: the request is the same either way.
    return [r.name for r in rules
            if can_match(r.match, UNDECLARED_BOT, Identity.UNKNOWN)
            != can_match(r.match, UNKNOWN, Identity.UNKNOWN)]


def _trusting_signatures(settings: Settings, rules: list[Rule]) -> list[str]:
    """The rules whose outcome a valid signature changes: those that match on identity
    (a replay another worker has not seen stays `signed` instead of falling back to what
    its user agent and address show: `spoofed` for a crawler that signs everything),
    and, when licence tokens are accepted, those that require a licence (a token bound
    to a crawler's key is proven by the request's signature)."""
    every = frozenset(Identity)
    names = [r.name for r in rules
             if r.match.identities is not None and r.match.identities != every]
    if settings.site_hosts:
        names += [r.name for r in rules if isinstance(r.action, RequireLicense)
                  and r.name not in names]
    return names


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
        self._workers: list[_Worker] = []
        self._stopping = False

    async def run(self) -> int:
        """Start the workers and serve until SIGTERM or SIGINT. Whichever way this
        ends (a signal, a worker that cannot start, an admin port taken), every worker
        started is stopped and the scratch directory is gone before it returns."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        # Before the first worker: a signal while they start stops them, instead of
        # killing this process and leaving them running.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._signal_all(signal.SIGHUP))
        try:
            with tempfile.TemporaryDirectory(prefix="gatekeeper-workers-") as scratch:
                try:
                    await self._serve(Path(scratch), stop)
                finally:
                    self._stopping = True
                    await self._stop_all()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        _log.info("workers_stopped")
        return 0

    async def _serve(self, scratch: Path, stop: asyncio.Event) -> None:
        config = scratch / "settings.yaml"
        self._write_config(config)
        self._workers = [_Worker(i, scratch / f"worker-{i}.port")
                         for i in range(self._settings.workers)]
        for worker in self._workers:
            self._spawn(worker, config)
        if not await self._all_started(stop):
            return
        runner = web.AppRunner(self._admin_app(), access_log=None)
        await runner.setup()
        try:
            host, port = split_hostport(self._settings.admin_listen, "admin_listen")
            site = web.TCPSite(runner, host, port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                raise SettingsError(f"admin_listen: cannot listen on "
                                    f"{self._settings.admin_listen}: {exc.strerror}") from exc
            _log.info("workers_started", workers=len(self._workers),
                      listen=self._settings.listen, admin_listen=self._settings.admin_listen)
            watcher = asyncio.create_task(self._watch(config))
            try:
                await stop.wait()
            finally:
                self._stopping = True
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
        finally:
            await runner.cleanup()

    # -- processes -----------------------------------------------------------------

    def _write_config(self, config: Path) -> None:
        values: dict[str, Any] = {}
        for field in dataclasses.fields(self._settings):
            value = getattr(self._settings, field.name)
            values[field.name] = list(value) if isinstance(value, tuple) else value
        config.write_text(yaml.safe_dump(values), encoding="utf-8")

    def _spawn(self, worker: _Worker, config: Path) -> None:
        worker.report.unlink(missing_ok=True)
        # The worker's settings are this process's, resolved once and written out: the
        # environment's GATEKEEPER_* variables were part of that resolution already.
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
        env.update({
            "GATEKEEPER_WORKERS": "1",
            "GATEKEEPER_REUSE_PORT": "true",
            "GATEKEEPER_WORKER_ID": str(worker.index),
            "GATEKEEPER_WORKER_COUNT": str(len(self._workers)),
            "GATEKEEPER_ADMIN_LISTEN": "127.0.0.1:0",
            "GATEKEEPER_WORKER_REPORT": str(worker.report),
        })
        worker.proc = subprocess.Popen(
            [sys.executable, "-m", "gatekeeper", "run", "--config", str(config)], env=env)
        _log.info("worker_started", worker=worker.index, pid=worker.proc.pid)

    async def _all_started(self, stop: asyncio.Event) -> bool:
        """True once every worker has started; False if `stop` is set first. Raises
        SettingsError for the first worker that exits or does not start in time."""
        starting = [asyncio.create_task(self._wait_started(w)) for w in self._workers]
        stopped = asyncio.create_task(stop.wait())
        try:
            pending: set[asyncio.Task[Any]] = {*starting, stopped}
            while any(not task.done() for task in starting):
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if stopped in done:
                    return False
                for task in done:
                    task.result()
            return True
        finally:
            for task in (*starting, stopped):
                task.cancel()
            await asyncio.gather(*starting, stopped, return_exceptions=True)

    async def _wait_started(self, worker: _Worker) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if worker.report.exists() and worker.report.read_text().strip():
                worker.admin_port = int(worker.report.read_text())
                return
            assert worker.proc is not None
            if worker.proc.poll() is not None:
                raise SettingsError(f"worker {worker.index} exited with status "
                                    f"{worker.proc.returncode} while starting (its log "
                                    "line above says why)")
            await asyncio.sleep(0.05)
        raise SettingsError(f"worker {worker.index} did not start within {_START_TIMEOUT:g} s")

    async def _watch(self, config: Path) -> None:
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
                self._spawn(worker, config)
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

        async def status() -> dict[str, Any]:
            docs: dict[str, Mapping[str, Any]] = {}
            workers: dict[str, bool] = {}
            for index, text in await self._gather("/status.json"):
                doc = _json_object(text)
                workers[str(index)] = doc is not None
                if doc is not None:
                    docs[str(index)] = doc
            if not docs:
                raise web.HTTPServiceUnavailable(
                    text=json.dumps({"error": "no_worker_answered", "workers": workers}),
                    content_type="application/json", headers=_NO_STORE)
            merged = merge_status(docs)
            merged["workers"] = workers
            return merged

        async def owners(request: web.Request) -> web.Response:
            # The workers share state_dir/owners.json and each reads it once a second:
            # one worker's admin API changing it is enough for all of them.
            body = await request.read()
            return await self._relay(request.method, request.path_qs, body,
                                     request.headers.get("Content-Type"))

        app = web.Application(client_max_size=_OWNERS_BODY_LIMIT)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/owners", owners)
        app.router.add_put("/owners/{name}", owners)
        app.router.add_delete("/owners/{name}", owners)
        status_routes(app, status)
        return app

    async def _relay(self, method: str, path: str, body: bytes,
                     content_type: str | None) -> web.Response:
        """`method path` on the first worker whose admin listener answers; 503 when
        none does."""
        timeout = aiohttp.ClientTimeout(total=_SCRAPE_TIMEOUT)
        headers = {"Content-Type": content_type} if content_type else {}
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for worker in self._workers:
                url = f"http://127.0.0.1:{worker.admin_port}{path}"
                try:
                    async with session.request(method, url, data=body or None,
                                               headers=headers) as r:
                        return web.Response(
                            status=r.status, body=await r.read(),
                            content_type=r.content_type, headers=_NO_STORE)
                except (aiohttp.ClientError, TimeoutError):
                    continue
        return web.json_response({"error": "no_worker_answered"}, status=503,
                                 headers=_NO_STORE)

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


def _json_object(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def run(settings: Settings) -> int:
    from gatekeeper.edge import server

    return server.run(Supervisor(settings).run())
