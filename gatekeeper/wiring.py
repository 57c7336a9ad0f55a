"""The composition root: settings in, a running gate out.

The only module that names concrete classes: the catalog, the policy holder,
the store, the gate, the recorder, the proxy and the listeners are built here
and handed to each other.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import CollectorRegistry

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.behaviour import BehaviourConfig
from gatekeeper.core.catalog import UNKNOWN, Catalog, Classification
from gatekeeper.core.licence_check import LicenseCheck
from gatekeeper.core.model import Policy
from gatekeeper.edge import server
from gatekeeper.edge.admin import UpstreamProbe, build_admin_app
from gatekeeper.edge.client_ip import TrustedProxies
from gatekeeper.edge.documents import Documents, Endpoints
from gatekeeper.edge.origin_robots import OriginRobots
from gatekeeper.edge.proxy import Upstream
from gatekeeper.edge.server import Listeners, ProxyService
from gatekeeper.errors import PolicyError, Problem, SettingsError
from gatekeeper.gate import Classifier, Gate
from gatekeeper.ledger.file import FileLedger
from gatekeeper.licensing import issued
from gatekeeper.licensing.check import LicenseGate
from gatekeeper.licensing.keys import Keyring, KeyringError
from gatekeeper.licensing.licensees import Licensees
from gatekeeper.licensing.owners_registry import OwnerRegistry
from gatekeeper.licensing.server import licence_server_routes
from gatekeeper.licensing.tokens import LicenseClaims, TokenVerifier
from gatekeeper.observe import logging as gk_logging
from gatekeeper.observe.metrics import Metrics
from gatekeeper.observe.record import Observer, Recorder
from gatekeeper.policy.loader import (
    DEFAULT_POLICY_RESOURCE,
    load_default_policy,
    load_policy_file,
    read_policy_file,
    valid_policy,
)
from gatekeeper.policy.reload import PolicyHolder, ReloadResult, watch
from gatekeeper.settings import Settings, split_hostport
from gatekeeper.store.base import Store
from gatekeeper.store.memory import MemoryStore
from gatekeeper.verify.identity import IdentityVerifier
from gatekeeper.verify.keydir import KeyDirectory
from gatekeeper.verify.range_update import RangeRefresher, UpdateResult
from gatekeeper.verify.ranges import RangeRegistry
from gatekeeper.verify.rdns import ReverseDnsVerifier
from gatekeeper.verify.webbotauth import WebBotAuthVerifier

if TYPE_CHECKING:
    from gatekeeper.ledger.mirror import LedgerMirror
from gatekeeper.vocabulary_loader import load_vocabularies


def load_policy(path: str | None, catalog: Catalog) -> Policy:
    return load_policy_file(path, catalog) if path else load_default_policy(catalog)


class _NoClassification:
    """Benchmark switch (GATEKEEPER_BENCH_NO_CLASSIFY=1): every request is `unknown`,
    so the cost of user-agent classification can be measured by difference."""

    def classify(self, user_agent: str) -> Classification:
        return UNKNOWN


@dataclass
class Ranges:
    """The serving range lists; the background refresher swaps `current`."""

    current: RangeRegistry

    def get(self) -> RangeRegistry:
        return self.current


@dataclass
class Identity:
    """The identity checks and the I/O they own (closed on shutdown)."""

    verifier: IdentityVerifier
    ranges: Ranges
    rdns: ReverseDnsVerifier
    keys: KeyDirectory

    async def close(self) -> None:
        await self.rdns.close()
        await self.keys.close()


def build_identity(settings: Settings, catalog: Catalog, store: Store, *,
                   wait_for_dns: bool = False) -> Identity:
    """Published ranges (snapshot, or the fresher cached copy), reverse DNS and Web
    Bot Auth, wired to `settings`. Nothing here does I/O until a request needs it.
    `wait_for_dns` lets a lookup run to its timeout instead of `rdns_budget`
    (`explain` answers one request and has no next one to hand the answer to)."""
    ranges = Ranges(RangeRegistry.load(settings.ranges_sources_path(),
                                       settings.ranges_cache_path()))
    nameservers = [split_hostport(s, "dns_servers") for s in settings.dns_servers] or None
    rdns = ReverseDnsVerifier(nameservers, timeout=settings.dns_timeout)
    keys = KeyDirectory(verification_session, pinned=pinned_keys(catalog),
                        max_skew=settings.signature_max_skew)
    signatures = WebBotAuthVerifier(keys, store, max_skew=settings.signature_max_skew,
                                    max_age=settings.signature_max_age)
    verifier = IdentityVerifier(catalog, ranges.get, rdns=rdns, signatures=signatures,
                                rdns_budget=None if wait_for_dns else settings.rdns_budget)
    return Identity(verifier, ranges, rdns, keys)


def pinned_keys(catalog: Catalog) -> dict[str, list[dict[str, str]]]:
    """The catalog's pinned Web Bot Auth keys, per signing origin."""
    pinned: dict[str, list[dict[str, str]]] = {}
    for crawler in catalog:
        for origin in crawler.signature_agents:
            for x in crawler.signature_keys:
                pinned.setdefault(origin, []).append({"kty": "OKP", "crv": "Ed25519", "x": x})
    return pinned


def verification_session() -> aiohttp.ClientSession:
    # Separate from the upstream pool: these go to the crawler operators' sites.
    return aiohttp.ClientSession(trust_env=False, cookie_jar=aiohttp.DummyCookieJar())


@dataclass
class Licensing:
    """Licence tokens: the keys that sign them, who may obtain them, the check."""

    keyring: Keyring | None
    licensees: Licensees
    gate: LicenseGate | None  # None: `site_hosts` is not set, tokens are not accepted
    owners: OwnerRegistry


def build_licensing(settings: Settings, store: Store) -> Licensing:
    state = settings.state_path()
    # No key directory yet means no tokens yet (`gatekeeper keys generate`); a directory
    # that is there but broken (a bad PEM, a key others can read) stops the start-up
    # with the file named, rather than quietly failing every token.
    keys = state / "keys"
    keyring = Keyring.load(keys) if keys.exists() else None
    licensees = Licensees(state / "licensees.json")
    owners = OwnerRegistry(state / "owners.json")
    if not settings.site_hosts:
        return Licensing(keyring, licensees, None, owners)

    def public_keys() -> Mapping[str, Ed25519PublicKey]:
        return keyring.public_keys() if keyring is not None else {}

    verifier = TokenVerifier(public_keys, issuer=settings.token_issuer(),
                             audience=settings.site_hosts)
    def active(subject: str) -> bool:
        licensee = licensees.get(subject)
        return licensee is not None and not licensee.disabled

    return Licensing(keyring, licensees,
                     LicenseGate(verifier, licensees.is_revoked, store, active), owners)


@dataclass
class Components:
    settings: Settings
    catalog: Catalog
    holder: PolicyHolder
    store: Store
    gate: Gate
    registry: CollectorRegistry
    recorder: Recorder
    upstream: Upstream
    trusted: TrustedProxies
    identity: Identity
    licensing: Licensing


def build_store(settings: Settings) -> Store:
    """The configured store: this process's memory, or Redis shared by replicas."""
    if settings.store == "redis":
        from gatekeeper.store.redis import RedisStore

        return RedisStore(settings.redis_url, prefix=settings.redis_prefix,
                          timeout=settings.store_timeout,
                          max_connections=settings.redis_max_connections,
                          retry_interval=settings.store_retry_interval)
    return MemoryStore()


def build(settings: Settings, registry: CollectorRegistry | None = None) -> Components:
    if not settings.upstream:
        raise SettingsError("upstream: required, e.g. --upstream http://127.0.0.1:8000")
    catalog = load_catalog(settings.catalog or None)
    # Read once: the holder keeps the files read, for the watcher and the digest.
    read = read_policy_file(settings.policy, catalog) if settings.policy else None
    policy = valid_policy(read) if read is not None else load_default_policy(catalog)
    accept = _policy_check(settings, catalog)
    if accept is not None and (refused := accept(policy)):
        # The check every reload is held to (and a worker restarted after the policy
        # file changed meets it here).
        raise SettingsError(_refusal(refused))
    holder = PolicyHolder(policy, settings.policy or None, catalog, accept,
                          files=read.files if read is not None else None)
    store = build_store(settings)
    classifier: Classifier = catalog
    if os.environ.get("GATEKEEPER_BENCH_NO_CLASSIFY") == "1":
        classifier = _NoClassification()
    identity = build_identity(settings, catalog, store)
    behaviour = BehaviourConfig() if settings.behaviour else None
    licensing = build_licensing(settings, store)
    gate = Gate(classifier, holder.get, store, identity=identity.verifier, behaviour=behaviour,
                licenses=licensing.gate, owners=licensing.owners.current,
                fail_open=settings.rate_limit_fallback == "open",
                windows=MemoryStore() if settings.behaviour_store == "local" else None)
    registry = registry if registry is not None else CollectorRegistry()
    metrics = Metrics(registry, catalog.names, store=settings.store)
    recorder = Recorder(metrics, gk_logging.get_logger("gatekeeper"))
    recorder.reload_result(True, policy.source, [], time.time(), policy=policy,
                           digest=policy_digest(holder))
    metrics.ranges_loaded(identity.ranges.current)
    metrics.revocations(lambda: len(licensing.licensees.revocations()))
    try:
        upstream = Upstream(settings.upstream)
        trusted = TrustedProxies.from_cidrs(settings.trusted_proxies)
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc
    return Components(settings, catalog, holder, store, gate, registry, recorder, upstream,
                      trusted, identity, licensing)


def public_documents(c: Components) -> Documents:
    """The public documents every front end serves or lets through ungated."""
    keyring = c.licensing.keyring
    return Documents(c.holder.get, lambda: keyring.jwks() if keyring is not None else None,
                     c.holder.get().token_url, c.licensing.owners.current,
                     crawlers=c.catalog, vocab=load_vocabularies(),
                     robots_compliance=c.settings.robots_compliance,
                     # A plan lives until the policy or the origin's robots.txt changes:
                     # out of the collector's way, like the policy itself.
                     on_new_plan=freeze_long_lived)


def proxy_app(c: Components, gate: Gate | None = None,
              observer: Observer | None = None) -> ProxyService:
    """The main listener: aiohttp's low-level server with the proxy, no router.

    When robots.txt compliance is on, the origin's robots.txt is read through the
    proxy's own upstream pool."""
    gate = gate or c.gate
    robots: list[OriginRobots] = []
    documents = public_documents(c)

    def attach(session: aiohttp.ClientSession) -> None:
        # One reader of the origin's robots.txt: the gate judges compliance with it and
        # the served robots.txt merges it.
        robots.append(OriginRobots(session, c.settings.upstream, ttl=c.settings.robots_ttl))
        documents.attach_origin(robots[-1])
        if c.settings.robots_compliance:
            gate.attach_robots(robots[-1])

    async def detach() -> None:
        gate.attach_robots(None)
        documents.attach_origin(None)
        for source in robots:
            await source.close()

    return ProxyService(gate, observer or c.recorder, c.settings, c.upstream, c.trusted,
                        on_session=attach, on_close=detach, documents=documents,
                        endpoints=licence_endpoints(c))


LICENCE_SERVER_PREFIX = "/.well-known/gatekeeper"


def _issued(c: Components, claims: LicenseClaims) -> None:
    c.recorder.metrics.token_issued(claims.license)
    issued.record(c.settings.state_path() / "issued.jsonl", claims)


def licence_endpoints(c: Components) -> Endpoints | None:
    """The licence server's token and introspection endpoints on the main listener,
    where crawler vendors reach them; None until there is a key and the site's hosts."""
    keyring, settings = c.licensing.keyring, c.settings
    if keyring is None or not settings.site_hosts:
        return None
    router = web.UrlDispatcher()
    licence_server_routes(router, policy=c.holder.get, licensees=c.licensing.licensees,
                          keyring=keyring, issuer=settings.token_issuer(),
                          audience=settings.site_hosts, trusted_proxies=c.trusted,
                          prefix=LICENCE_SERVER_PREFIX, jwks_path=None,
                          on_issued=lambda claims: _issued(c, claims))
    paths = frozenset({LICENCE_SERVER_PREFIX + "/token", LICENCE_SERVER_PREFIX + "/introspect"})
    return Endpoints(router, paths)


def _policy_check(settings: Settings, catalog: Catalog,
                  ) -> Callable[[Policy], list[Problem]] | None:
    """What a valid policy must also satisfy to be served by this process, at start
    and at every reload (`PolicyHolder`'s `accept`): what the mode can enforce, and
    what several workers can share. None when nothing is to check."""
    checks: list[Callable[[Policy], list[Problem]]] = []
    if settings.mode == "forward-auth":
        checks.append(forward_auth_problems)
    workers = _worker_check(settings, catalog)
    if workers is not None:
        checks.append(workers)
    if not checks:
        return None

    def check(policy: Policy) -> list[Problem]:
        return [problem for one in checks for problem in one(policy)]

    return check


def _refusal(problems: list[Problem]) -> str:
    # The workers' check points at no field of the file: its message stands alone.
    return "\n".join(str(p) if p.field else p.message for p in problems)


def forward_auth_problems(policy: Policy) -> list[Problem]:
    """What forward-auth cannot enforce: a licence's byte limit. The front proxy asks
    before the origin answers, so the size of the response is never seen here and no
    byte would ever be counted against the limit."""
    problems = []
    for index, lic in enumerate(policy.licenses):
        if lic.limits is None or lic.limits.bytes is None:
            continue
        where = lic.source
        problems.append(Problem(
            where.file if where is not None else policy.source,
            where.line if where is not None else 0,
            f"licenses[{index}].limits.bytes",
            f"licence {lic.name!r} limits the bytes a licensee may take, which forward-auth "
            "cannot count: the front proxy asks Gatekeeper before the origin answers, so "
            "the size of a response is never seen. Remove bytes from its limits (a "
            "requests limit is counted), or serve this site through Gatekeeper's reverse "
            "proxy (--mode proxy) or the mitmproxy front end, which count response bytes"))
    return problems


def _worker_check(settings: Settings, catalog: Catalog,
                  ) -> Callable[[Policy], list[Problem]] | None:
    """For a worker of several on the memory store: the supervisor's start-up check
    (`supervisor.check_shared_limits`), applied to every policy it loads, so that a
    reload cannot bring in limits each worker would count on its own."""
    if settings.worker_count <= 1 or settings.store != "memory":
        return None
    from gatekeeper import supervisor

    shared = replace(settings, workers=settings.worker_count)

    def check(policy: Policy) -> list[Problem]:
        try:
            supervisor.check_shared_limits(shared, policy, catalog, warn=False)
        except SettingsError as exc:
            return [Problem(policy.source, 0, "", str(exc))]
        return []

    return check


def policy_digest(holder: PolicyHolder) -> str:
    """Which policy text serves, in 12 hex digits: the start of the sha256 of the bytes
    the last load read (`sha256sum policy.yaml` agrees). With includes, of the files'
    sha256 digests, one a line in load order. Taken right after a successful load:
    after a failed one the holder describes the files that failed."""
    files = holder.watched_files()
    if not files:
        return _default_policy_digest()
    if len(files) == 1:
        return (files[0].digest or "")[:12]
    lines = "".join(f"{f.digest}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()[:12]


@functools.cache
def _default_policy_digest() -> str:
    """The embedded policy never changes while the process runs."""
    text = resources.files("gatekeeper.data").joinpath(DEFAULT_POLICY_RESOURCE).read_bytes()
    return hashlib.sha256(text).hexdigest()[:12]


def status_document(c: Components) -> dict[str, object]:
    """What the status page shows: the last hour of activity and the policy's state."""
    operators = {crawler.name: crawler.operator for crawler in c.catalog}
    doc: dict[str, object] = c.recorder.activity.snapshot(lambda name: operators.get(name, ""))
    policy = c.holder.current
    reloads = c.recorder.reloads
    serving = reloads.get("serving")
    doc["policy"] = {
        "source": policy.source, "mode": policy.mode.value,
        "rules": len(policy.rules) + sum(len(s.rules) for s in policy.host_sections),
        "licences": [lic.name for lic in policy.licenses],
        "serving_since": serving.get("since") if isinstance(serving, dict) else None,
        "digest": serving.get("digest") if isinstance(serving, dict) else None,
        "last_reload": reloads.get("last"),
    }
    return doc


def admin_app(c: Components) -> web.Application:
    probe = UpstreamProbe(c.upstream.host, c.upstream.port or _default_port(c.upstream))

    async def ready() -> dict[str, bool]:
        return {"policy_loaded": c.holder.current is not None, "upstream_reachable": await probe()}

    app = build_admin_app(c.registry, ready, c.recorder.metrics.flush,
                          owners=c.licensing.owners, status=lambda: status_document(c))
    keyring, settings = c.licensing.keyring, c.settings
    if keyring is not None and settings.site_hosts:
        # The licence server on the admin listener too (POST /token, /introspect, the
        # JWKS), for licensees reached over a private network.
        licence_server_routes(app, policy=c.holder.get, licensees=c.licensing.licensees,
                              keyring=keyring, issuer=settings.token_issuer(),
                              audience=settings.site_hosts,
                              on_issued=lambda claims: _issued(c, claims))
    return app


# Tasks started from a signal handler: held here so they are not collected mid-run.
_reloads: set[asyncio.Task[ReloadResult]] = set()


def _reload_in_background(c: Components) -> None:
    """SIGHUP: start `reload_policy` without waiting (a signal handler cannot)."""
    task = asyncio.get_running_loop().create_task(reload_policy(c))
    _reloads.add(task)
    task.add_done_callback(_reloads.discard)


def _default_port(upstream: Upstream) -> int:
    return 443 if upstream.scheme == "https" else 80


async def reload_policy(c: Components) -> ReloadResult:
    """SIGHUP: the policy, and the signing keys (key rotation without a restart).

    The policy is read and validated in a worker thread, as the file watcher does:
    a large policy takes seconds to load, and requests must not wait for it. The
    new policy replaces the old one atomically once it is valid."""
    result = await asyncio.to_thread(c.holder.reload)
    record_reload(c, result)
    reload_keys(c)
    return result


def reload_keys(c: Components) -> None:
    keyring = c.licensing.keyring
    if keyring is None:
        return
    log = gk_logging.get_logger("gatekeeper")
    try:
        keyring.reload()
    except KeyringError as exc:
        log.error("keys_reload_failed", error=str(exc), kept="the keys loaded before")
        return
    log.info("keys_reloaded", keys=len(keyring.public_keys()))


def record_reload(c: Components, result: ReloadResult) -> None:
    policy = c.holder.current if result.ok else None
    c.recorder.reload_result(result.ok, result.source, result.problems, time.time(),
                             policy=policy, digest=policy_digest(c.holder) if result.ok else None)


async def serve(c: Components) -> None:
    log = gk_logging.get_logger("gatekeeper")
    watcher = asyncio.create_task(watch(
        c.holder, c.settings.policy_watch_interval, lambda r: record_reload(c, r)
    ))
    refresher = range_refresher(c)
    if refresher is not None:
        refresher.start()
    ledger = await open_ledger(c)
    mirror = ledger_mirror(c, ledger)

    def started(listeners: Listeners) -> None:
        (lh, lp), (ah, ap) = listeners.addresses
        report = os.environ.get("GATEKEEPER_WORKER_REPORT")
        if report:
            # A worker of `--workers N`: tell the supervisor where its admin listener is.
            Path(report).write_text(str(ap), encoding="utf-8")
        freeze_long_lived()
        log.info("started", listen=f"{lh}:{lp}", admin_listen=f"{ah}:{ap}",
                 mode=c.settings.mode, upstream=c.settings.upstream,
                 policy=c.holder.current.source)

    try:
        if c.settings.mode == "forward-auth":
            from gatekeeper.edge.forward_auth import forward_auth_app

            main: ProxyService | web.Application = forward_auth_app(
                c, path_prefix=c.settings.forward_auth_path_prefix)
        else:
            main = proxy_app(c)
        await server.serve(
            main, c.settings, admin=admin_app(c),
            on_reload=lambda: _reload_in_background(c), on_started=started,
        )
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        if refresher is not None:
            await refresher.stop()
        # After the listeners drained: every licensed request that finished is in it.
        c.recorder.ledger = None
        await ledger.close()
        if mirror is not None:
            await mirror.close()  # after the file's last flush: the copy is complete
        await c.identity.close()
        await c.store.close()
        log.info("stopped")


def ledger_mirror(c: Components, ledger: FileLedger) -> LedgerMirror | None:
    """With the Redis store, the ledger file is copied into it for every replica to
    read (`gatekeeper.ledger.mirror`); None with the memory store."""
    if c.settings.store != "redis":
        return None  # and redis-py, an optional extra, is never imported
    from gatekeeper.ledger.mirror import LedgerMirror
    from gatekeeper.store.redis import RedisStore

    if not isinstance(c.store, RedisStore):
        return None
    mirror = LedgerMirror(c.store.client, ledger.path, prefix=c.settings.redis_prefix,
                          replica=c.settings.replica_name)
    mirror.start()
    return mirror


def ledger_name(settings: Settings) -> str:
    """Each worker of `--workers N` appends to a ledger file of its own (the file is
    locked by its writer); `gatekeeper ledger` reads them all."""
    return f"ledger-{settings.worker_id}.jsonl" if settings.worker_id else "ledger.jsonl"


async def open_ledger(c: Components) -> FileLedger:
    """The usage ledger in the state directory, appended to by the recorder."""
    state = c.settings.state_path()
    state.mkdir(parents=True, exist_ok=True)
    ledger = FileLedger(state / ledger_name(c.settings))
    await ledger.start()
    c.recorder.ledger = ledger
    c.recorder.metrics.ledger_opened(lambda: ledger.durable_seq)
    gate = c.licensing.gate
    if gate is not None:
        pending: set[asyncio.Future[None]] = set()

        def count_bytes(check: LicenseCheck, sent: int, now: float) -> None:
            if check.license is not None and sent:
                task = asyncio.ensure_future(
                    gate.record_bytes(check.license, check.licensee, sent, now))
                pending.add(task)  # held until done, so it is not collected mid-flight
                task.add_done_callback(pending.discard)
        c.recorder.count_licensed_bytes = count_bytes
    c.recorder.metrics.licensees = frozenset(x.id for x in c.licensing.licensees.list())
    return ledger


def freeze_long_lived() -> None:
    """Move everything alive now out of the garbage collector's reach.

    The catalog, the compiled policy, the range lists and the module objects live
    as long as the process, and every full collection would walk them again: with
    them frozen, a collection only looks at what requests allocate. Measured with
    bench/run.sh: allow-path p99 from 2.3x the bare pass-through's to 0.96x.
    Called after start-up, after each range-list reload and after a new declarations
    plan (a policy reload, a new origin robots.txt): unfrozen first, so what was just
    replaced is collected (one full collection each time, a few an hour at most), then
    everything still alive is frozen again.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def range_refresher(c: Components) -> RangeRefresher | None:
    """Refreshes the range lists in the background; None when switched off."""
    interval = c.settings.ranges_refresh_interval
    if interval <= 0:
        return None

    def reloaded(registry: RangeRegistry, results: list[UpdateResult]) -> None:
        c.identity.ranges.current = registry
        c.recorder.ranges_refreshed(registry, results)
        freeze_long_lived()

    # The first round waits a moment after startup, but never longer than the
    # interval itself: an interval of a second means lists a second old at most.
    return RangeRefresher(c.settings.ranges_sources_path(), c.settings.ranges_cache_path(),
                          interval,
                          verification_session, reloaded, initial_delay=min(5.0, interval))


def run(settings: Settings) -> int:
    gk_logging.configure(settings.log_format, settings.log_level)
    server.require_c_parser()
    try:
        components = build(settings)
    except PolicyError as exc:
        raise SettingsError("the policy is invalid:\n" + str(exc)) from exc
    if settings.workers > 1:
        from gatekeeper import supervisor

        supervisor.check_shared_limits(settings, components.holder.current,
                                       components.catalog)
        return supervisor.run(settings)
    server.run(serve(components))
    return 0
