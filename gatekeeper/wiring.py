"""The composition root: settings in, a running gate out.

The only module that names concrete classes: the catalog, the policy holder,
the store, the gate, the recorder, the proxy and the listeners are built here
and handed to each other.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.catalog import UNKNOWN, Catalog, Classification
from gatekeeper.core.model import Policy
from gatekeeper.edge import server
from gatekeeper.edge.admin import UpstreamProbe, build_admin_app
from gatekeeper.edge.client_ip import TrustedProxies
from gatekeeper.edge.proxy import Upstream
from gatekeeper.edge.server import Listeners, ProxyService
from gatekeeper.errors import PolicyError, SettingsError
from gatekeeper.gate import Classifier, Gate
from gatekeeper.observe import logging as gk_logging
from gatekeeper.observe.metrics import Metrics
from gatekeeper.observe.record import Recorder
from gatekeeper.policy.loader import load_default_policy, load_policy_file
from gatekeeper.policy.reload import PolicyHolder, ReloadResult, watch
from gatekeeper.settings import Settings
from gatekeeper.store.memory import MemoryStore


def load_policy(path: str | None, catalog: Catalog) -> Policy:
    return load_policy_file(path, catalog) if path else load_default_policy(catalog)


class _NoClassification:
    """Benchmark switch (GATEKEEPER_BENCH_NO_CLASSIFY=1): every request is `unknown`,
    so the cost of user-agent classification can be measured by difference."""

    def classify(self, user_agent: str) -> Classification:
        return UNKNOWN


@dataclass
class Components:
    settings: Settings
    catalog: Catalog
    holder: PolicyHolder
    store: MemoryStore
    gate: Gate
    registry: CollectorRegistry
    recorder: Recorder
    upstream: Upstream
    trusted: TrustedProxies


def build(settings: Settings, registry: CollectorRegistry | None = None) -> Components:
    if not settings.upstream:
        raise SettingsError("upstream: required, e.g. --upstream http://127.0.0.1:8000")
    catalog = load_catalog()
    policy = load_policy(settings.policy or None, catalog)
    holder = PolicyHolder(policy, settings.policy or None, catalog)
    store = MemoryStore()
    classifier: Classifier = catalog
    if os.environ.get("GATEKEEPER_BENCH_NO_CLASSIFY") == "1":
        classifier = _NoClassification()
    gate = Gate(classifier, holder.get, store)
    registry = registry if registry is not None else CollectorRegistry()
    metrics = Metrics(registry, catalog.names, store=settings.store)
    recorder = Recorder(metrics, gk_logging.get_logger("gatekeeper"))
    recorder.reload_result(True, policy.source, [], time.time(), policy=policy)
    try:
        upstream = Upstream(settings.upstream)
        trusted = TrustedProxies.from_cidrs(settings.trusted_proxies)
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc
    return Components(settings, catalog, holder, store, gate, registry, recorder, upstream,
                      trusted)


def proxy_app(c: Components) -> ProxyService:
    """The main listener: aiohttp's low-level server with the proxy, no router."""
    return ProxyService(c.gate, c.recorder, c.settings, c.upstream, c.trusted)


def admin_app(c: Components) -> web.Application:
    probe = UpstreamProbe(c.upstream.host, c.upstream.port or _default_port(c.upstream))

    async def ready() -> dict[str, bool]:
        return {"policy_loaded": c.holder.current is not None, "upstream_reachable": await probe()}

    return build_admin_app(c.registry, ready)


def _discard(_: object) -> None:
    """SIGHUP handlers return nothing; the result is recorded by `reload_policy`."""


def _default_port(upstream: Upstream) -> int:
    return 443 if upstream.scheme == "https" else 80


def reload_policy(c: Components) -> ReloadResult:
    result = c.holder.reload()
    record_reload(c, result)
    return result


def record_reload(c: Components, result: ReloadResult) -> None:
    policy = c.holder.current if result.ok else None
    c.recorder.reload_result(result.ok, result.source, result.problems, time.time(),
                             policy=policy)


async def serve(c: Components) -> None:
    log = gk_logging.get_logger("gatekeeper")
    watcher = asyncio.create_task(watch(
        c.holder, c.settings.policy_watch_interval, lambda r: record_reload(c, r)
    ))

    def started(listeners: Listeners) -> None:
        (lh, lp), (ah, ap) = listeners.addresses
        log.info("started", listen=f"{lh}:{lp}", admin_listen=f"{ah}:{ap}",
                 upstream=c.settings.upstream, policy=c.holder.current.source)

    try:
        await server.serve(
            proxy_app(c), c.settings, admin=admin_app(c),
            on_reload=lambda: _discard(reload_policy(c)), on_started=started,
        )
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await c.store.close()
        log.info("stopped")


def run(settings: Settings) -> int:
    gk_logging.configure(settings.log_format, settings.log_level)
    server.require_c_parser()
    try:
        components = build(settings)
    except PolicyError as exc:
        raise SettingsError("the policy is invalid:\n" + str(exc)) from exc
    server.run(serve(components))
    return 0
