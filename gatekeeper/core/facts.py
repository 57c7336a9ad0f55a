"""What the gate knows about one request, decided once at the edge.

An edge adapter builds a `RequestFacts` from the wire: the canonical path it
will forward, the client IP derived through trusted proxies only, and the time.
Everything downstream decides on these values and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Identity(StrEnum):
    """How sure the gate is that a request comes from who its user agent claims."""

    SIGNED = "signed"  # valid Web Bot Auth signature from a known key
    VERIFIED = "verified"  # published IP range or forward-confirmed reverse DNS
    SPOOFED = "spoofed"  # claims a crawler whose operator publishes data, and fails it
    UNVERIFIED = "unverified"  # claims a crawler, nothing could confirm or refute it
    UNKNOWN = "unknown"  # claims no crawler at all


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """One request as the gate decides on it.

    `headers` is any case-insensitive mapping (aiohttp's `CIMultiDictProxy` at
    the edge, `multidict.CIMultiDict` in tests); the core only reads from it.
    `path` is the canonical path, the exact one that is forwarded upstream.
    `now` is wall-clock seconds, stamped by the edge; the core never reads a clock.
    `raw_path` is the path as the client sent it and `scheme` the scheme it used:
    a Web Bot Auth signature covers those, not the canonical form.
    """

    method: str
    host: str
    path: str
    query: str
    headers: Mapping[str, str]
    client_ip: str
    now: float
    raw_path: str = ""
    scheme: str = "http"

    @property
    def user_agent(self) -> str:
        return self.headers.get("User-Agent", "")
