"""The policy as typed, immutable values. No YAML here: `gatekeeper.policy` builds these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from gatekeeper.core.catalog import Purpose
from gatekeeper.core.facts import Identity


class Mode(StrEnum):
    ENFORCE = "enforce"
    MONITOR = "monitor"  # every action becomes a dry run: logged and counted, then forwarded


class LimitKey(StrEnum):
    """What a rate-limit bucket is shared by."""

    CRAWLER = "crawler"
    OPERATOR = "operator"
    CLIENT_IP = "client_ip"
    CLIENT_NETWORK = "client_network"  # /24 for IPv4, /64 for IPv6


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a value came from, so errors and `explain` can point at it."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Allow:
    pass


@dataclass(frozen=True, slots=True)
class Block:
    status: int = 403
    body: str | None = None  # None: the standard machine-readable body
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RateLimit:
    rate: float  # tokens per second
    burst: int
    key: LimitKey = LimitKey.CRAWLER


@dataclass(frozen=True, slots=True)
class RequireLicense:
    any_of: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Monitor:
    """Log and count the request under this rule, then let it through."""


Action = Allow | Block | RateLimit | RequireLicense | Monitor


def action_name(action: Action) -> str:
    """The action's policy keyword; also its metric label."""
    return _ACTION_NAMES[type(action)]


_ACTION_NAMES: dict[type, str] = {
    Allow: "allow",
    Block: "block",
    RateLimit: "rate_limit",
    RequireLicense: "require_license",
    Monitor: "monitor",
}

# A compiled matcher for one string: returns True when it matches. Globs and
# header patterns are compiled by the loader (linear-time), the core only calls them.
Matcher = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Pattern:
    """A compiled glob or regex that remembers its source text for `explain`."""

    text: str
    match: Matcher = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    name: str
    present: bool = True
    # When set, the header must be present and its value must match.
    value: Pattern | None = None


@dataclass(frozen=True, slots=True)
class Match:
    """All given conditions must hold (AND); within one condition any value may (OR).

    `None` means the condition is absent and always holds.
    """

    crawlers: frozenset[str] | None = None
    operators: frozenset[str] | None = None  # compared case-insensitively
    purposes: frozenset[Purpose] | None = None
    kinds: frozenset[str] | None = None  # "crawler", "other-bot", "unknown"
    identities: frozenset[Identity] | None = None
    paths: tuple[Pattern, ...] | None = None
    methods: frozenset[str] | None = None
    hosts: tuple[Pattern, ...] | None = None
    headers: tuple[HeaderMatch, ...] = ()
    # True: the origin's robots.txt disallows this path for the crawler's token;
    # False: it allows it. A request with no robots verdict matches neither.
    robots_disallowed: bool | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    match: Match
    action: Action
    source: SourceRef | None = None


class PricePer(StrEnum):
    """What a price is charged for: each request, or a period of access."""

    REQUEST = "request"
    DAY = "day"
    MONTH = "month"
    YEAR = "year"


@dataclass(frozen=True, slots=True)
class Price:
    amount: Decimal  # exact: prices are money
    currency: str  # ISO 4217, upper case ("USD")
    per: PricePer = PricePer.REQUEST


@dataclass(frozen=True, slots=True)
class LicenseLimits:
    """What one licensee may take under the licence in each period."""

    period: PricePer = PricePer.MONTH  # day, month or year (never "request")
    requests: int | None = None
    bytes: int | None = None


@dataclass(frozen=True, slots=True)
class License:
    """A named licence offer: what it permits, where, at what price, for how long.

    No price and no `contact` means the licence is free (a token is still needed,
    so the use is known and metered). `contact` without a price means terms are
    agreed by asking ("contact us"): tokens are issued only to licensees the
    operator added for it.
    """

    name: str
    usages: tuple[str, ...] = ()  # RSL usage values: all, ai-all, ai-train, ai-input, ...
    description: str = ""
    source: SourceRef | None = None
    paths: tuple[Pattern, ...] | None = None  # None: every path the rule covers
    price: Price | None = None
    contact: str = ""  # a mailto: or https: URL for terms agreed by asking
    validity: float = 30 * 86400.0  # seconds a token for it stays valid
    limits: LicenseLimits | None = None

    def covers(self, path: str) -> bool:
        return self.paths is None or any(p.match(path) for p in self.paths)


@dataclass(frozen=True, slots=True)
class HostSection:
    """Rules for a group of hosts, evaluated before the top-level rules."""

    hosts: tuple[Pattern, ...]
    rules: tuple[Rule, ...]


class RobotsMode(StrEnum):
    """How `/robots.txt` is answered (see docs/declarations.md)."""

    MERGE = "merge"  # the origin's file plus groups generated from the policy
    REPLACE = "replace"  # only what the policy generates
    OFF = "off"  # the origin's file, forwarded untouched


@dataclass(frozen=True, slots=True)
class UsageStatement:
    """Usage preferences the operator states for some paths, beyond what rules enforce.

    `words` are aipref words with True for "y". A statement can only make a
    declaration stricter: where the policy refuses a use, "n" is declared whatever
    is stated (`gatekeeper check` reports the contradiction).
    """

    paths: tuple[Pattern, ...]
    words: tuple[tuple[str, bool], ...]
    source: SourceRef | None = None


@dataclass(frozen=True, slots=True)
class DeclarationSettings:
    robots_txt: RobotsMode = RobotsMode.MERGE
    tdmrep: bool = True  # /.well-known/tdmrep.json and tdm-* response headers
    content_usage: bool = True  # Content-Usage headers, robots.txt usage lines
    usage: tuple[UsageStatement, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...]
    mode: Mode = Mode.ENFORCE
    default: Action = Allow()
    host_sections: tuple[HostSection, ...] = ()
    licenses: tuple[License, ...] = ()
    # Where a 402 tells crawler vendors to read licence terms (absolute URL or path).
    license_terms_url: str = "/.well-known/gatekeeper/licenses"
    # The RSL document and the licence server's token endpoint, as crawlers reach
    # them on the main listener (see docs/licensing.md).
    rsl_url: str = "/license.xml"
    token_url: str = "/.well-known/gatekeeper/token"
    declarations: DeclarationSettings = DeclarationSettings()
    version: int = 1
    source: str = "<embedded>"
