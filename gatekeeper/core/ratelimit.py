"""Token-bucket arithmetic on a bucket-state value; stores only persist the state."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gatekeeper.core.catalog import Classification
from gatekeeper.core.facts import RequestFacts
from gatekeeper.core.model import LimitKey, RateLimit


@dataclass(frozen=True, slots=True)
class Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True, slots=True)
class LimitResult:
    allowed: bool
    remaining: float
    retry_after: float  # seconds until one token is available; 0 when allowed


def take(bucket: Bucket | None, rate: float, burst: int, now: float) -> tuple[Bucket, LimitResult]:
    """Spend one token from `bucket` (a new bucket starts full)."""
    if bucket is None:
        tokens = float(burst)
    else:
        elapsed = max(0.0, now - bucket.updated)
        tokens = min(float(burst), bucket.tokens + elapsed * rate)
    if tokens >= 1.0:
        tokens -= 1.0
        return Bucket(tokens, now), LimitResult(True, tokens, 0.0)
    wait = (1.0 - tokens) / rate if rate > 0 else float("inf")
    return Bucket(tokens, now), LimitResult(False, tokens, wait)


def bucket_key(rule_name: str, limit: RateLimit, facts: RequestFacts, cls: Classification) -> str:
    """The key a request's bucket is stored under: one bucket per rule and per subject."""
    subject: str
    if limit.key is LimitKey.CRAWLER:
        subject = cls.name
    elif limit.key is LimitKey.OPERATOR:
        subject = cls.crawler.operator if cls.crawler is not None else cls.name
    elif limit.key is LimitKey.CLIENT_IP:
        subject = facts.client_ip
    else:
        subject = client_network(facts.client_ip)
    return f"{rule_name}|{limit.key.value}|{subject}"


def client_network(ip: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) a client address belongs to."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))
