"""Typed runtime settings and where they come from.

Precedence, lowest to highest: built-in defaults < `--config` YAML file <
`GATEKEEPER_*` environment variables < command-line flags. Every field has an
environment variable named `GATEKEEPER_<FIELD>` in upper case.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from gatekeeper.errors import SettingsError

LogFormat = Literal["json", "console"]
StoreKind = Literal["memory", "redis"]
RateLimitFallback = Literal["local", "open"]
RunMode = Literal["proxy", "forward-auth"]
PathCase = Literal["sensitive", "insensitive"]


@dataclass(frozen=True, slots=True)
class Settings:
    upstream: str = ""
    listen: str = "0.0.0.0:8080"
    admin_listen: str = "127.0.0.1:9108"
    policy: str = ""  # empty: the embedded default policy
    catalog: str = ""  # empty: the packaged crawler catalog
    trusted_proxies: tuple[str, ...] = ()
    # Where rate limits, behaviour windows, replay and quota counters and revocations
    # live (docs/scaling-out.md): "memory" (this process) or "redis" (shared).
    store: StoreKind = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "gk:"
    # Names this replica's ledger stream in Redis (`{prefix}ledger:<name>:<file>`);
    # empty: the hostname. Keep it stable across restarts (docs/redis-store.md).
    replica_name: str = ""
    store_timeout: float = 0.25  # seconds a store call may take before its fallback
    # Seconds after a store call found Redis down during which calls fall back at once
    # instead of each waiting out store_timeout; 0: every call tries Redis.
    store_retry_interval: float = 1.0
    # Connections to Redis per process; a call finding them all busy waits for one
    # (within store_timeout) rather than failing.
    redis_max_connections: int = 50
    rate_limit_fallback: RateLimitFallback = "local"  # store down: per-process buckets, or open
    # Behaviour windows in the configured store ("shared"), or in each process
    # ("local": two fewer store round trips per request; each replica scores alone).
    behaviour_store: Literal["shared", "local"] = "shared"
    # "proxy": the reverse proxy; "forward-auth": decisions for nginx/Traefik/Envoy.
    mode: RunMode = "proxy"
    forward_auth_cache_ttl: float = 5.0  # seconds a front proxy may cache a fixed decision
    forward_auth_path_prefix: str = ""  # Envoy ext_authz `path_prefix`, stripped from checks
    workers: int = 1  # processes sharing the listening port (SO_REUSEPORT)
    reuse_port: bool = False  # listen with SO_REUSEPORT (set for each worker by `workers`)
    worker_id: str = ""  # set for each worker by `workers`: names its ledger file
    # Set for each worker by `workers`: how many share the port, so that a reloaded
    # policy is held to the same shared-state check as the one they started with.
    worker_count: int = 0
    # Limits (bytes)
    max_header_size: int = 8190  # one request line or header field
    max_headers: int = 100
    # The request line and all header fields together (431 above it). aiohttp bounds
    # each line and their number, not their sum: 100 fields of 8 KiB would pass.
    max_header_block_size: int = 32 * 1024
    max_body_size: int = 100 * 1024 * 1024  # enforced while streaming: 413
    # Timeouts (seconds)
    client_header_timeout: float = 15.0  # also the keep-alive idle timeout
    client_body_timeout: float = 30.0  # idle time between two body chunks
    client_send_timeout: float = 60.0  # seconds a client may take to accept part of a response
    client_body_min_rate: int = 500  # bytes/s a body must average past its timeout; 0: off
    max_in_flight_per_client: int = 32  # requests one client may have forwarded at once; 0: off
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 60.0  # idle time waiting for upstream bytes
    upstream_pool_size: int = 100
    shutdown_timeout: float = 30.0  # SIGTERM: time given to in-flight requests
    policy_watch_interval: float = 2.0  # seconds between policy file checks; 0 disables
    log_format: LogFormat = "json"
    log_level: str = "info"
    # Identity (docs/identity.md)
    ranges_sources: str = ""  # empty: the packaged ip-ranges/sources.json
    ranges_cache_dir: str = ""  # empty: $XDG_CACHE_HOME/gatekeeper/ip-ranges (or ~/.cache/...)
    ranges_refresh_interval: float = 21600.0  # seconds between range-list refreshes; 0 disables
    dns_servers: tuple[str, ...] = ()  # HOST:PORT resolvers for reverse DNS; empty: the system's
    rdns_budget: float = 0.05  # seconds a request may wait for DNS; 0: decide now, look up behind
    dns_timeout: float = 2.0  # seconds a whole lookup may take before it counts as failed
    signature_max_skew: float = 60.0  # seconds of clock difference allowed on `created`/`expires`
    signature_max_age: float = 300.0  # seconds a Web Bot Auth signature stays usable
    robots_compliance: bool = True  # read the origin's robots.txt and count violations
    robots_ttl: float = 3600.0  # seconds the origin's robots.txt is cached
    behaviour: bool = True  # score clients that claim no crawler (undeclared bots)
    # Licensing (docs/licensing.md)
    state_dir: str = ""  # keys, licensees, ledger; empty: $XDG_STATE_HOME/gatekeeper
    site_hosts: tuple[str, ...] = ()  # the hosts licence tokens are for; empty: no tokens
    issuer: str = ""  # the `iss` of issued tokens; empty: https://<first site host>
    forward_license_tokens: bool = False  # pass `Authorization: License ...` upstream
    # "insensitive" for an origin that ignores case (IIS): paths are lower-cased outside
    # %XX escapes before the decision and forwarded so; policy globs are then lower case.
    path_case: PathCase = "sensitive"

    def with_overrides(self, values: Mapping[str, Any], origin: str) -> Settings:
        """A copy with `values` applied; unknown names or bad types raise SettingsError."""
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for name, raw in values.items():
            key = name.replace("-", "_")
            if key not in known:
                raise SettingsError(f"{origin}: unknown setting {name!r}")
            changes[key] = _coerce(key, raw, getattr(self, key), origin)
        result = dataclasses.replace(self, **changes)
        result.validate()
        return result

    def validate(self) -> None:
        for cidr in self.trusted_proxies:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise SettingsError(f"trusted_proxies: {cidr!r} is not an IP network") from exc
        for name in ("listen", "admin_listen"):
            split_hostport(getattr(self, name), name)
        if self.upstream and not self.upstream.startswith(("http://", "https://")):
            raise SettingsError(f"upstream: {self.upstream!r} must start with http:// or https://")
        for server in self.dns_servers:
            split_hostport(server, "dns_servers")
        _one_of("store", self.store, ("memory", "redis"))
        _one_of("rate_limit_fallback", self.rate_limit_fallback, ("local", "open"))
        _one_of("mode", self.mode, ("proxy", "forward-auth"))
        _one_of("behaviour_store", self.behaviour_store, ("shared", "local"))
        _one_of("path_case", self.path_case, ("sensitive", "insensitive"))
        if self.store == "redis" and not self.redis_url.startswith(
                ("redis://", "rediss://", "unix://")):
            raise SettingsError(f"redis_url: {self.redis_url!r} must start with redis://, "
                                "rediss:// or unix://")
        if self.workers < 1:
            raise SettingsError("workers: must be at least 1")
        if self.store_timeout <= 0:
            raise SettingsError("store_timeout: must be greater than 0")
        if self.redis_max_connections < 1:
            raise SettingsError("redis_max_connections: must be at least 1")
        for name in ("rdns_budget", "dns_timeout", "signature_max_skew", "signature_max_age",
                     "ranges_refresh_interval", "robots_ttl", "forward_auth_cache_ttl",
                     "client_body_min_rate", "client_send_timeout", "max_in_flight_per_client",
                     "store_retry_interval"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name}: must not be negative")

    def state_path(self) -> Path:
        """Where the signing keys, the licensee registry and the ledger live."""
        if self.state_dir:
            return Path(self.state_dir)
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "gatekeeper"

    def token_issuer(self) -> str:
        if self.issuer:
            return self.issuer
        return f"https://{self.site_hosts[0]}" if self.site_hosts else ""

    def ranges_sources_path(self) -> Path | None:
        """The range-list sources file; None for the packaged one."""
        return Path(self.ranges_sources) if self.ranges_sources else None

    def ranges_cache_path(self) -> Path:
        """Where fetched range lists are kept (`gatekeeper crawlers update` writes here)."""
        if self.ranges_cache_dir:
            return Path(self.ranges_cache_dir)
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "gatekeeper" / "ip-ranges"


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SettingsError(f"{name}: {value!r} is not one of {', '.join(choices)}")


def split_hostport(value: str, name: str = "listen") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{name}: {value!r} must be HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def _coerce(key: str, raw: Any, current: Any, origin: str) -> Any:
    try:
        if isinstance(current, bool):
            if isinstance(raw, str):
                return raw.strip().lower() in {"1", "true", "yes", "on"}
            return bool(raw)
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, tuple):
            if isinstance(raw, str):
                return tuple(p.strip() for p in raw.split(",") if p.strip())
            return tuple(str(p) for p in raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{origin}: {key}: cannot use {raw!r}: {exc}") from exc


def from_file(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read settings file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: a settings file must be a mapping of setting: value")
    return data


def from_env(environ: Mapping[str, str]) -> dict[str, str]:
    names = {f.name for f in fields(Settings)}
    out: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("GATEKEEPER_"):
            name = key[len("GATEKEEPER_"):].lower()
            if name in names:
                out[name] = value
    return out


def resolve(
    config_file: str | None,
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults < config file < GATEKEEPER_* environment < flags (None flags are unset)."""
    settings = Settings()
    if config_file:
        settings = settings.with_overrides(from_file(config_file), config_file)
    env = os.environ if environ is None else environ
    settings = settings.with_overrides(from_env(env), "environment")
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    return settings.with_overrides(given, "command line")

