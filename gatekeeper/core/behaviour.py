"""Behaviour signals per client and the score that names an undeclared bot.

A crawler that hides behind a browser user agent (or sends none) still behaves
like a crawler: it asks for many pages quickly, never for the stylesheets and
images a browser loads, skips robots.txt or walks into what it forbids, and
leaves out headers every browser sends. When a declared crawler is refused and
the same client comes back seconds later as "Chrome", that alone gives it away.

The edge turns each request into `Signals`; the store keeps one `Window` per
client key (the IP and its /24 or /64, see `client_keys`) and calls `record`;
the gate calls `score_client` and, after deciding, `note_refusal` when it
refused a declared crawler. Everything here is pure: time is an argument.

Only requests whose user agent claims no catalog crawler are candidates for
`undeclared-bot`; the gate decides that (a browser-like or empty user agent)
before it looks at the score. `score` itself never reads the user agent: it
only knows whether the request claimed a crawler (`Signals.claimed_crawler`).

The window is a sliding-window counter: counts for the current fixed window of
`BehaviourConfig.window` seconds and for the one before, and an estimate
"over the last `window` seconds" that adds the previous counts weighted by how
much of the previous window the sliding window still covers. This was chosen
over sub-buckets and over exponential decay because it needs two plain ints
per signal, no clock-dependent loop and no `exp`, keeps the counts in the units
the thresholds are written in (per window, not a decayed mass), and maps one to
one onto two hash fields in a shared store. Its error assumes requests in the
previous window were spread evenly, which is fine for thresholds.
"""

from __future__ import annotations

import ipaddress
import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache

from gatekeeper.errors import GatekeeperError, SettingsError

# Distinct page paths are counted in a linear-counting bitmap of this many bits per
# fixed window (a Python int): 32 bytes whatever the traffic, accurate well past the
# thresholds used here, saturating near PATH_BITS * ln(PATH_BITS) paths (about 1400).
PATH_BITS = 256
_PATH_SHIFT = PATH_BITS.bit_length() - 1  # log2(PATH_BITS)
_PATHS_SATURATED = PATH_BITS * math.log(PATH_BITS)

_PAGE_EXTENSIONS = frozenset({
    "html", "htm", "xhtml", "shtml", "php", "asp", "aspx", "jsp", "jspx", "cfm", "cgi", "pl",
})
_ASSET_EXTENSIONS = frozenset({
    "css", "js", "mjs", "map", "png", "jpg", "jpeg", "gif", "webp", "avif", "svg", "ico", "bmp",
    "tif", "tiff", "woff", "woff2", "ttf", "otf", "eot", "mp4", "webm", "mp3", "ogg", "wav",
    "m4a", "m4v", "wasm",
})
_NEVER = -math.inf
# Canonical dotted-quad IPv4: the common case is handled without `ipaddress`, which
# costs microseconds per address.
_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                   r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


class UnknownReason(GatekeeperError):
    """A reason code that this version of Gatekeeper does not define."""


class Reason(StrEnum):
    """Why a client scored: short stable codes, written as is to logs and explain."""

    RATE = "rate"
    NO_ASSETS = "no-assets"
    NO_ROBOTS = "no-robots"
    ROBOTS_DISALLOWED = "robots-disallowed"
    NO_ACCEPT_LANGUAGE = "no-accept-language"
    NO_ACCEPT = "no-accept"
    MANY_PATHS = "many-paths"
    UA_SWITCH = "ua-switch-after-refusal"


_DESCRIPTIONS = {
    Reason.RATE: "more non-asset requests per window than a person makes",
    Reason.NO_ASSETS: "many pages fetched but almost no stylesheets, scripts or images",
    Reason.NO_ROBOTS: "many pages fetched and robots.txt never read",
    Reason.ROBOTS_DISALLOWED: "repeatedly fetched paths that robots.txt disallows",
    Reason.NO_ACCEPT_LANGUAGE: "requests without the Accept-Language header browsers send",
    Reason.NO_ACCEPT: "requests without the Accept header browsers send",
    Reason.MANY_PATHS: "many distinct pages in a short time",
    Reason.UA_SWITCH: "a declared crawler was refused and the same client came back "
                      "without declaring itself",
}


# One bit per reason, in `Reason` order, the order reasons are listed in a `Score`.
_ORDER = tuple(Reason)
_RATE, _NO_ASSETS, _NO_ROBOTS, _DISALLOWED, _NO_LANG, _NO_ACCEPT, _MANY_PATHS, _UA_SWITCH = (
    1 << i for i in range(len(_ORDER)))


def describe(reason: str) -> str:
    """One line of text for a reason code, for explain and for people reading logs."""
    try:
        return _DESCRIPTIONS[Reason(reason)]
    except ValueError:
        raise UnknownReason(f"unknown behaviour reason {reason!r}") from None


def _extension(path: str) -> str:
    """The lower-cased extension of the last path segment; "" when it has none."""
    dot = path.rfind(".")
    if dot <= path.rfind("/"):
        return ""
    return path[dot + 1:].lower()


def looks_like_page(path: str) -> bool:
    """True for what a browser navigates to: no extension, or an HTML-producing one."""
    ext = _extension(path)
    return not ext or ext in _PAGE_EXTENSIONS


def looks_like_asset(path: str) -> bool:
    """True for what a browser loads to render a page: styles, scripts, images, fonts, media."""
    return _extension(path) in _ASSET_EXTENSIONS


_SET = object.__setattr__  # how a frozen dataclass sets its own fields


@dataclass(frozen=True, slots=True, init=False)
class Signals:
    """What the edge observed about one request, as far as behaviour is concerned.

    `path` is the canonical path. `robots_disallowed` is true when robots.txt
    disallows the path for the user agent's robots token, or for `*` when it
    claims no crawler. `claimed_crawler` is the catalog name the user agent
    claims, "" for none. `refused` is for callers that record after deciding;
    the gate records first and calls `note_refusal` instead.
    """

    path: str
    is_html_like: bool
    is_asset: bool
    is_robots_txt: bool
    robots_disallowed: bool
    has_accept: bool
    has_accept_language: bool
    claimed_crawler: str
    refused: bool

    # Written out because the generated frozen __init__ costs twice as much, and one
    # of these is made per request. tests check it against the fields.
    def __init__(self, path: str, is_html_like: bool = False, is_asset: bool = False,
                 is_robots_txt: bool = False, robots_disallowed: bool = False,
                 has_accept: bool = True, has_accept_language: bool = True,
                 claimed_crawler: str = "", refused: bool = False) -> None:
        set_ = _SET
        set_(self, "path", path)
        set_(self, "is_html_like", is_html_like)
        set_(self, "is_asset", is_asset)
        set_(self, "is_robots_txt", is_robots_txt)
        set_(self, "robots_disallowed", robots_disallowed)
        set_(self, "has_accept", has_accept)
        set_(self, "has_accept_language", has_accept_language)
        set_(self, "claimed_crawler", claimed_crawler)
        set_(self, "refused", refused)


def signals_for(path: str, headers: Mapping[str, str], claimed_crawler: str = "",
                robots_disallowed: bool = False) -> Signals:
    """The signals of one request, from its canonical path and its (case-insensitive) headers."""
    ext = _extension(path)
    return Signals(
        path,
        not ext or ext in _PAGE_EXTENSIONS,
        ext in _ASSET_EXTENSIONS,
        path == "/robots.txt",
        robots_disallowed,
        bool(headers.get("Accept")),
        bool(headers.get("Accept-Language")),
        claimed_crawler,
    )


@dataclass(frozen=True, slots=True)
class Score:
    """How much a client looks like an undeclared bot, and why.

    `reasons` are `Reason` codes in a fixed order; `scope` says which window the
    score came from: "ip" or "network" (the /24 or /64).
    """

    value: float
    reasons: tuple[str, ...]
    undeclared: bool
    scope: str = "ip"


@dataclass(frozen=True, slots=True)
class BehaviourConfig:
    """Weights and thresholds. Counts are per `window` seconds for one IP; the window of
    a client network (/24, /64) holds many clients, so its count thresholds are
    `network_scale` times higher. Shares (of assets, of missing headers) apply unscaled.
    docs/behaviour.md has the table and the reasoning behind each default.
    """

    window: float = 60.0
    threshold: float = 10.0
    network_scale: float = 2.0
    # "rate": more than this many non-asset requests in the window.
    rate_limit: float = 60.0
    weight_rate: float = 4.0
    # "no-assets": at least `min_pages` pages, and assets are under this share of requests.
    min_pages: float = 10.0
    min_asset_share: float = 0.1
    weight_no_assets: float = 3.0
    # "no-robots": at least this many pages and no robots.txt within `robots_horizon`.
    no_robots_pages: float = 20.0
    robots_horizon: float = 3600.0
    weight_no_robots: float = 2.0
    # "robots-disallowed": at least this many requests to disallowed paths.
    disallowed_hits: float = 3.0
    weight_robots_disallowed: float = 5.0
    # "no-accept-language" / "no-accept": at least this share of requests lacked the header.
    missing_share: float = 0.5
    weight_no_accept_language: float = 2.0
    weight_no_accept: float = 2.0
    # "many-paths": more distinct page paths than this in the window.
    many_paths: float = 30.0
    weight_many_paths: float = 3.0
    # "ua-switch-after-refusal": claims no crawler within this many seconds of a refusal
    # of a declared crawler. Its weight must reach the threshold on its own.
    switch_window: float = 30.0
    weight_ua_switch: float = 10.0

    # Every score there can be, at index (reasons mask) * 2 + (1 for a network window):
    # a score depends only on which reasons apply, and a shared one allocates nothing.
    scores: tuple[Score, ...] = field(init=False, repr=False, compare=False)
    # The count thresholds (rate, min pages, no-robots pages, disallowed hits, many paths)
    # for an IP window and for a network window, scaled once here.
    limits: tuple[tuple[float, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("window", "threshold", "robots_horizon"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"behaviour.{name}: must be greater than 0")
        if not self.network_scale >= 1:
            raise SettingsError("behaviour.network_scale: must be at least 1, a network "
                                "holds at least the one client")
        if self.weight_ua_switch < self.threshold:
            raise SettingsError("behaviour.weight_ua_switch: must be at least the threshold, "
                                "a user-agent switch after a refusal decides on its own")
        weights = (self.weight_rate, self.weight_no_assets, self.weight_no_robots,
                   self.weight_robots_disallowed, self.weight_no_accept_language,
                   self.weight_no_accept, self.weight_many_paths, self.weight_ua_switch)
        scores = []
        for index in range(2 << len(_ORDER)):
            mask, network = index >> 1, bool(index & 1)
            chosen = [i for i in range(len(_ORDER)) if mask >> i & 1]
            value = sum(weights[i] for i in chosen)
            scores.append(Score(value, tuple(_ORDER[i].value for i in chosen),
                                bool(chosen) and value >= self.threshold,
                                "network" if network else "ip"))
        _SET(self, "scores", tuple(scores))
        counts = (self.rate_limit, self.min_pages, self.no_robots_pages, self.disallowed_hits,
                  self.many_paths)
        _SET(self, "limits", (counts, tuple(c * self.network_scale for c in counts)))


class Window:
    """Sliding-window state for one client key; mutated in place by `record`.

    Counters come in pairs: the current fixed window (`epoch`) and the previous
    one (`p_` prefix). `paths` is a bitmap of hashed page paths. Times are the
    caller's `now`; `-inf` means never. `epoch` -1 marks a window with no counts.
    """

    __slots__ = (
        "assets", "disallowed", "epoch", "last_refused_at", "last_refused_crawler", "last_seen",
        "no_accept", "no_lang", "p_assets", "p_disallowed", "p_no_accept", "p_no_lang", "p_pages",
        "p_paths", "p_requests", "pages", "paths", "requests", "robots_at",
    )

    def __init__(self, epoch: int, now: float) -> None:
        self.epoch = epoch
        self.requests = self.pages = self.assets = 0
        self.disallowed = self.no_accept = self.no_lang = self.paths = 0
        self.p_requests = self.p_pages = self.p_assets = 0
        self.p_disallowed = self.p_no_accept = self.p_no_lang = self.p_paths = 0
        self.robots_at: float = _NEVER
        self.last_refused_at: float = _NEVER
        self.last_refused_crawler = ""
        self.last_seen = now

    def __repr__(self) -> str:
        return (f"Window(epoch={self.epoch}, requests={self.requests}+{self.p_requests}, "
                f"pages={self.pages}+{self.p_pages}, assets={self.assets}+{self.p_assets}, "
                f"last_seen={self.last_seen})")


def _advance(window: Window, epoch: int) -> None:
    """Move the window to fixed window `epoch`: the current counts become the previous."""
    lag = epoch - window.epoch
    if lag <= 0:  # same window, or the clock went back: keep counting where we are
        return
    if lag == 1:
        window.p_requests, window.p_pages, window.p_assets = (
            window.requests, window.pages, window.assets)
        window.p_disallowed, window.p_no_accept, window.p_no_lang, window.p_paths = (
            window.disallowed, window.no_accept, window.no_lang, window.paths)
    else:
        window.p_requests = window.p_pages = window.p_assets = 0
        window.p_disallowed = window.p_no_accept = window.p_no_lang = window.p_paths = 0
    window.requests = window.pages = window.assets = 0
    window.disallowed = window.no_accept = window.no_lang = window.paths = 0
    window.epoch = epoch


def _path_bit(path: str) -> int:
    """The bitmap position of a page path. A stable hash, not `hash()`: str hashes are
    salted per process, and replicas sharing one window (the Redis store) must set the
    same bit for one path. CRC-32 is linear, so similar paths differ in structured
    ways; a multiplicative (Fibonacci) step spreads them over the top bits."""
    mixed = (zlib.crc32(path.encode("utf-8", "surrogatepass")) * 0x9E3779B1) & 0xFFFFFFFF
    return mixed >> (32 - _PATH_SHIFT)


def record(window: Window | None, signals: Signals, now: float, cfg: BehaviourConfig) -> Window:
    """Count one request in `window` (a new one when None) and return it."""
    epoch = int(now / cfg.window)
    if window is None:
        window = Window(epoch, now)
    elif epoch != window.epoch:
        _advance(window, epoch)
    window.requests += 1
    if signals.is_asset:
        window.assets += 1
    elif signals.is_html_like:
        window.pages += 1
        window.paths |= 1 << _path_bit(signals.path)
    if signals.is_robots_txt:
        window.robots_at = now
    if signals.robots_disallowed:
        window.disallowed += 1
    if not signals.has_accept:
        window.no_accept += 1
    if not signals.has_accept_language:
        window.no_lang += 1
    if now > window.last_seen:
        window.last_seen = now
    if signals.refused and signals.claimed_crawler:
        note_refusal(window, signals.claimed_crawler, now)
    return window


def note_refusal(window: Window, crawler: str, now: float) -> None:
    """Remember that the gate refused `crawler` (block, 402, 429) for this client at `now`."""
    if crawler:
        window.last_refused_at = now
        window.last_refused_crawler = crawler
    if now > window.last_seen:
        window.last_seen = now


def _distinct(bits: int) -> float:
    """Linear-counting estimate of how many distinct paths set `bits`."""
    zeros = PATH_BITS - bits.bit_count()
    if zeros == 0:
        return _PATHS_SATURATED
    return PATH_BITS * math.log(PATH_BITS / zeros)


def score(window: Window, signals: Signals, now: float, cfg: BehaviourConfig, *,
          network: bool = False) -> Score:
    """Score the client behind `window` for the request `signals` (already recorded).

    `network` applies the network window's scaled count thresholds. The score
    does not look at the user agent: the caller only asks for candidates, see
    the module docstring.
    """
    rate_limit, min_pages, no_robots_pages, disallowed_hits, many_paths = cfg.limits[network]
    position = now / cfg.window
    epoch = int(position)
    lag = epoch - window.epoch
    # Weights of the stored current and previous counts in the sliding estimate.
    carry = 1.0 - (position - epoch)
    if lag == 0:
        cur, prev = 1.0, carry
    elif lag == 1:
        cur, prev = carry, 0.0
    elif lag < 0:  # the clock went back: count everything held
        cur = prev = 1.0
    else:
        cur = prev = 0.0
    requests = window.requests * cur + window.p_requests * prev
    pages = window.pages * cur + window.p_pages * prev
    assets = window.assets * cur + window.p_assets * prev

    mask = 0
    if requests - assets > rate_limit:
        mask = _RATE
    if pages >= min_pages and assets < cfg.min_asset_share * requests:
        mask |= _NO_ASSETS
    if pages >= no_robots_pages and now - window.robots_at > cfg.robots_horizon:
        mask |= _NO_ROBOTS
    if window.disallowed * cur + window.p_disallowed * prev >= disallowed_hits:
        mask |= _DISALLOWED
    if requests > 0.0:
        missing = cfg.missing_share * requests
        if window.no_lang * cur + window.p_no_lang * prev >= missing:
            mask |= _NO_LANG
        if window.no_accept * cur + window.p_no_accept * prev >= missing:
            mask |= _NO_ACCEPT
    # A window cannot hold more distinct pages than pages: skip the bitmap otherwise.
    if pages > many_paths and _sliding_distinct(window, lag, carry) > many_paths:
        mask |= _MANY_PATHS
    if (window.last_refused_crawler and not signals.claimed_crawler
            and 0.0 <= now - window.last_refused_at <= cfg.switch_window):
        mask |= _UA_SWITCH
    return cfg.scores[mask << 1 | network]


def _sliding_distinct(window: Window, lag: int, carry: float) -> float:
    """Distinct pages over the sliding window: those of the current fixed window, plus
    those only seen in the previous one, weighted like the counters."""
    if lag <= 0:
        current, previous = window.paths, window.p_paths
    elif lag == 1:
        current, previous = 0, window.paths
    else:
        return 0.0
    now_only = _distinct(current)
    if lag < 0:  # clock went back: the previous window counts in full
        carry = 1.0
    return now_only + (_distinct(current | previous) - now_only) * carry


def score_client(ip_window: Window, network_window: Window, signals: Signals, now: float,
                 cfg: BehaviourConfig) -> Score:
    """The client's score: the higher of its IP's and its network's, with that one's reasons.

    The higher one rather than a sum: the two windows count the same requests, and
    adding them would score a lone client twice. The network window catches a
    crawler that spreads its requests over many addresses of one /24 or /64.
    """
    by_ip = score(ip_window, signals, now, cfg)
    if _only_this_client(ip_window, network_window):
        return by_ip
    by_network = score(network_window, signals, now, cfg, network=True)
    return by_network if by_network.value > by_ip.value else by_ip


def _only_this_client(ip_window: Window, network_window: Window) -> bool:
    """True when the network window holds nothing but this IP's requests and refusals.

    Every request counted for the IP is counted for its network too (the table evicts
    an address before its network, which it touched later), so equal totals mean
    equal counts throughout; with thresholds scaled by at least 1 the network cannot
    then score higher. Most clients are alone in their network: this skips
    half the scoring for them.
    """
    return (ip_window.requests == network_window.requests
            and ip_window.p_requests == network_window.p_requests
            and ip_window.epoch == network_window.epoch
            and ip_window.last_refused_at == network_window.last_refused_at)


def client_keys(ip: str) -> tuple[str, str]:
    """The client's two window keys: its address, and its /24 (IPv4) or /64 (IPv6).

    Both are canonical text (RFC 5952 for IPv6), so two spellings of one address
    share a window. An IPv4-mapped IPv6 address counts as the IPv4 address it
    carries, so a dual-stack listener does not split one client in two. A string
    that is not an address is its own key; its network key adds "/net".
    """
    if _IPV4.fullmatch(ip) is not None:
        return ip, ip[:ip.rfind(".")] + ".0/24"
    return _other_keys(ip)


# Parsing IPv6 costs microseconds; clients send many requests from one address.
@lru_cache(maxsize=4096)
def _other_keys(ip: str) -> tuple[str, str]:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip, ip + "/net"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    text = str(addr)
    if isinstance(addr, ipaddress.IPv4Address):
        return text, text[:text.rfind(".")] + ".0/24"
    top = int(addr) >> 64
    groups = [top >> 48, (top >> 32) & 0xFFFF, (top >> 16) & 0xFFFF, top & 0xFFFF]
    # The zero groups of the /64 are the longest run, so they are the ones written "::".
    while groups and not groups[-1]:
        groups.pop()
    return text, ":".join([f"{g:x}" for g in groups]) + "::/64"
