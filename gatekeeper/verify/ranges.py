"""Published crawler IP-range lists: parsing, fast membership, and the registry of lists.

Crawler operators publish the addresses their bots crawl from. A request that
claims to be GPTBot and comes from one of OpenAI's GPTBot prefixes is verified;
one from anywhere else is not. This module reads those lists and answers
"which of these lists contains this address?" cheaply enough to ask on every
request. It does no network I/O: `range_update` fetches fresh copies into a
cache directory, and `RangeRegistry.load` prefers them over the packaged
snapshots.

Cache layout, shared with `range_update`: `<cache_dir>/<id>.json` holds the body
exactly as fetched, `<cache_dir>/<id>.meta.json` the validators and fetch time.
"""

from __future__ import annotations

import ipaddress
import json
import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from gatekeeper.errors import GatekeeperError
from gatekeeper.observe.logging import get_logger

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Origin = Literal["snapshot", "cache", "none", "inline"]

FORMATS: Final = ("prefixes", "cidr-list", "json-list")
SOURCES_VERSION: Final = 1
PACKAGED_SOURCES: Final = "gatekeeper/data/ip-ranges/sources.json"
# Source ids become cache file names, so they are kept to a shape that cannot
# climb out of the cache directory or collide with the ".meta.json" companions.
_SOURCE_ID: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_SOURCE_FIELDS: Final = frozenset({"operator", "url", "format", "snapshot"})

_log = get_logger("gatekeeper.ranges")


class RangeListError(GatekeeperError):
    """A range list, its sources file or a cached copy is invalid."""


# --- parsing -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedList:
    """The networks of one list and, when the publisher stamped it, its creation time."""

    networks: tuple[Network, ...]
    created: float | None = None


def parse_range_list(data: bytes | str, fmt: str, where: str) -> ParsedList:
    """Parse one published list in format `fmt`; `where` names it in errors.

    An empty list is an error: no operator publishes one on purpose, and
    accepting it would silently turn every genuine crawler into a spoofer.
    """
    text = _text(data, where)
    if fmt == "prefixes":
        parsed = _parse_prefixes(text, where)
    elif fmt == "cidr-list":
        parsed = ParsedList(_parse_cidr_lines(text, where))
    elif fmt == "json-list":
        parsed = ParsedList(_parse_json_list(text, where))
    else:
        raise RangeListError(f"{where}: unknown format {fmt!r}; expected one of {FORMATS}")
    if not parsed.networks:
        raise RangeListError(f"{where}: the list has no prefixes")
    return parsed


def _text(data: bytes | str, where: str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RangeListError(f"{where}: not UTF-8 text (byte {exc.start})") from None


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RangeListError(
            f"{where}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})"
        ) from None


def _network(value: str, where: str) -> Network:
    # Lenient about host bits (strict=False): publishers occasionally write
    # "20.171.206.7/24" for the /24 they mean, and rejecting the whole list over
    # it would drop every other prefix with it. The network is what counts.
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise RangeListError(f"{where}: {value!r} is not an IP network: {exc}") from None


def _parse_prefixes(text: str, where: str) -> ParsedList:
    doc = _json(text, where)
    if not isinstance(doc, dict):
        raise RangeListError(f"{where}: expected a JSON object with a 'prefixes' list")
    items = doc.get("prefixes")
    if not isinstance(items, list):
        raise RangeListError(f"{where}: prefixes: expected a list")
    networks: list[Network] = []
    for index, item in enumerate(items):
        label = f"{where}: prefixes[{index}]"
        if not isinstance(item, dict):
            raise RangeListError(f"{label}: expected an object with ipv4Prefix or ipv6Prefix")
        for key, version in (("ipv4Prefix", 4), ("ipv6Prefix", 6)):
            if key not in item:
                continue
            value = item[key]
            if not isinstance(value, str):
                raise RangeListError(f"{label}: {key}: expected a string")
            network = _network(value, f"{label}: {key}")
            if network.version != version:
                raise RangeListError(f"{label}: {key}: {value!r} is not an IPv{version} network")
            networks.append(network)
        if "ipv4Prefix" not in item and "ipv6Prefix" not in item:
            raise RangeListError(f"{label}: expected an ipv4Prefix or ipv6Prefix key")
    return ParsedList(tuple(networks), _creation_time(doc.get("creationTime")))


def _creation_time(value: Any) -> float | None:
    # Metadata only: a creationTime we cannot read must not cost us the prefixes.
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if stamp.tzinfo is None:  # the publishers' stamps are UTC without saying so
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def _parse_cidr_lines(text: str, where: str) -> tuple[Network, ...]:
    networks: list[Network] = []
    for number, line in enumerate(text.splitlines(), start=1):
        value = line.split("#", 1)[0].strip()
        if value:
            networks.append(_network(value, f"{where}:{number}"))
    return tuple(networks)


def _parse_json_list(text: str, where: str) -> tuple[Network, ...]:
    doc = _json(text, where)
    if not isinstance(doc, list):
        raise RangeListError(f"{where}: expected a JSON array of CIDR strings")
    networks: list[Network] = []
    for index, value in enumerate(doc):
        if not isinstance(value, str):
            raise RangeListError(f"{where}: [{index}]: expected a CIDR string")
        networks.append(_network(value, f"{where}: [{index}]"))
    return tuple(networks)


# --- membership ----------------------------------------------------------------------


class _Table:
    """Disjoint, sorted, non-adjacent integer ranges of one address family."""

    __slots__ = ("ends", "starts")

    def __init__(self, spans: Iterable[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.starts = [s for s, _ in merged]
        self.ends = [e for _, e in merged]

    def __contains__(self, value: int) -> bool:
        index = bisect_right(self.starts, value) - 1
        return index >= 0 and value <= self.ends[index]

    def __len__(self) -> int:
        return len(self.starts)


class RangeSet:
    """An immutable set of networks answering membership in O(log n).

    The networks are merged into sorted integer ranges per family so a lookup
    is one bisect, whatever the number of prefixes.
    """

    __slots__ = ("_v4", "_v6")

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for net in networks:
            span = (int(net.network_address), int(net.broadcast_address))
            (v4 if net.version == 4 else v6).append(span)
        self._v4 = _Table(v4)
        self._v6 = _Table(v6)

    def contains(self, ip: str) -> bool:
        """Whether `ip` is in the set; a malformed address is in no set."""
        address = parse_address(ip)
        return address is not None and self.contains_address(address)

    def contains_address(self, address: Address) -> bool:
        """Like `contains`, for an address already parsed (see `parse_address`)."""
        if address.version == 4:
            return int(address) in self._v4
        return int(address) in self._v6

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, str) and self.contains(ip)

    def __len__(self) -> int:
        return len(self._v4) + len(self._v6)

    def __repr__(self) -> str:
        return f"RangeSet(v4={len(self._v4)} ranges, v6={len(self._v6)} ranges)"


def parse_address(ip: str) -> Address | None:
    """`ip` as an address, IPv4-mapped IPv6 unwrapped to IPv4; None when malformed.

    Unwrapping matters on dual-stack listeners, where an IPv4 client shows up as
    `::ffff:a.b.c.d` and must still match the IPv4 prefixes it was published in.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# --- sources and the cache layout ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """One entry of sources.json: who publishes the list, where, in what format."""

    id: str
    operator: str
    url: str
    format: str
    snapshot: str | None  # file name next to sources.json; None when none ships


@dataclass(frozen=True, slots=True)
class ListState:
    """Where a source's current data came from and how old it is.

    `updated_at` is the list's own creationTime when it has one, else the time
    the cached copy was fetched (or last confirmed unchanged), else the
    snapshot file's modification time.
    """

    source_id: str
    origin: Origin
    prefixes: int
    updated_at: float | None
    created: float | None = None
    fetched_at: float | None = None
    cache_error: str | None = None  # why a cached copy was passed over, if one was


@dataclass(frozen=True, slots=True)
class CacheMeta:
    """What the updater remembers about its last fetch of one source."""

    url: str
    etag: str | None
    last_modified: str | None
    fetched_at: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "url": self.url,
                "etag": self.etag,
                "last_modified": self.last_modified,
                "fetched_at": self.fetched_at,
            },
            indent=2,
        )


def cache_paths(cache_dir: Path, source_id: str) -> tuple[Path, Path]:
    """The body file and the meta file of `source_id` in `cache_dir`."""
    return cache_dir / f"{source_id}.json", cache_dir / f"{source_id}.meta.json"


def read_meta(path: Path) -> CacheMeta | None:
    """The meta file at `path`, or None when it is missing or unreadable.

    A broken meta file only costs a conditional request, so it is not an error.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    fetched_at = doc.get("fetched_at")
    url = doc.get("url")
    if not isinstance(fetched_at, int | float) or not isinstance(url, str):
        return None
    etag = doc.get("etag")
    last_modified = doc.get("last_modified")
    return CacheMeta(
        url=url,
        etag=etag if isinstance(etag, str) else None,
        last_modified=last_modified if isinstance(last_modified, str) else None,
        fetched_at=float(fetched_at),
    )


def load_sources(sources_file: Path | None = None) -> dict[str, SourceInfo]:
    """The sources in `sources_file`, or the packaged sources.json when None."""
    text, where, _, _ = _open_sources(sources_file)
    return parse_sources(text, where)


def parse_sources(text: str, where: str) -> dict[str, SourceInfo]:
    """Validate the text of a sources.json; every problem is reported at once."""
    doc = _json(text, where)
    if not isinstance(doc, dict) or not isinstance(doc.get("sources"), dict):
        raise RangeListError(f"{where}: expected an object with 'version' and 'sources'")
    problems: list[str] = []
    if doc.get("version") != SOURCES_VERSION:
        problems.append(f"{where}: version: expected {SOURCES_VERSION}, found "
                        f"{doc.get('version')!r}")
    sources: dict[str, SourceInfo] = {}
    for source_id, entry in doc["sources"].items():
        info = _source(where, source_id, entry, problems)
        if info is not None:
            sources[source_id] = info
    if problems:
        raise RangeListError("\n".join(problems))
    return sources


def _source(where: str, source_id: str, entry: Any, problems: list[str]) -> SourceInfo | None:
    label = f"{where}: sources.{source_id}"
    before = len(problems)
    if not _SOURCE_ID.fullmatch(source_id):
        problems.append(f"{label}: source ids are lowercase letters, digits and '-'")
    if not isinstance(entry, dict):
        problems.append(f"{label}: expected an object")
        return None
    problems.extend(f"{label}: {k}: unknown field" for k in sorted(set(entry) - _SOURCE_FIELDS))
    problems.extend(f"{label}: {k}: missing" for k in sorted(_SOURCE_FIELDS - set(entry)))
    operator, url, fmt, snapshot = (entry.get(k) for k in ("operator", "url", "format",
                                                            "snapshot"))
    if not isinstance(operator, str) or not operator.strip():
        problems.append(f"{label}: operator: expected a non-empty string")
    # Plain http would let anyone on the path add their own addresses to a
    # crawler's list and be waved through as that crawler.
    if not isinstance(url, str) or not url.startswith("https://"):
        problems.append(f"{label}: url: expected an https:// URL")
    if fmt not in FORMATS:
        problems.append(f"{label}: format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if snapshot is not None and (
        not isinstance(snapshot, str) or not snapshot or Path(snapshot).name != snapshot
    ):
        problems.append(f"{label}: snapshot: expected a file name next to the sources file, "
                        "or null")
    if len(problems) > before:
        return None
    return SourceInfo(source_id, str(operator), str(url), str(fmt), snapshot)


def _open_sources(sources_file: Path | None) -> tuple[str, str, Traversable, str]:
    """The sources text, its name for messages, the folder its snapshots are in,
    and that folder's name for messages."""
    if sources_file is None:
        folder = resources.files("gatekeeper.data").joinpath("ip-ranges")
        text = folder.joinpath("sources.json").read_text("utf-8")
        return text, PACKAGED_SOURCES, folder, PACKAGED_SOURCES.rsplit("/", 1)[0]
    try:
        text = sources_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise RangeListError(f"{sources_file}: cannot read the range sources: "
                             f"{exc.strerror}") from None
    return text, str(sources_file), sources_file.parent, str(sources_file.parent)


# --- the registry --------------------------------------------------------------------


class RangeRegistry:
    """Every source's current list, ready to be asked on each request.

    Immutable: a refresh builds a new registry and swaps it in, so a request
    never sees a half-updated set of lists.
    """

    __slots__ = ("_sets", "_sources", "_states")

    def __init__(
        self,
        sources: Mapping[str, SourceInfo],
        lists: Mapping[str, tuple[ParsedList, ListState]],
    ) -> None:
        self._sources = MappingProxyType(dict(sources))
        self._sets = {sid: RangeSet(parsed.networks) for sid, (parsed, _) in lists.items()}
        self._states = {sid: state for sid, (_, state) in lists.items()}

    @classmethod
    def load(cls, sources_file: Path | None = None,
             cache_dir: Path | None = None) -> RangeRegistry:
        """Load every source: a valid cached copy first, else its snapshot, else nothing.

        `sources_file` None means the packaged sources.json and snapshots.
        Raises `RangeListError` for an invalid sources file or snapshot; a bad
        cached copy is passed over (noted in `info().cache_error`), since the
        snapshot is a safe fallback and the next update replaces it.
        """
        text, where, folder, folder_name = _open_sources(sources_file)
        sources = parse_sources(text, where)
        lists: dict[str, tuple[ParsedList, ListState]] = {}
        for sid, info in sources.items():
            cached, cache_error = (None, None) if cache_dir is None else _cached(cache_dir, info)
            if cached is not None:
                lists[sid] = cached
                continue
            if info.snapshot is not None:
                snapshot = folder.joinpath(info.snapshot)
                parsed = _read_snapshot(snapshot, info, f"{folder_name}/{info.snapshot}")
                updated = parsed.created if parsed.created is not None else _mtime(snapshot)
                lists[sid] = (parsed, ListState(sid, "snapshot", len(parsed.networks), updated,
                                                created=parsed.created, cache_error=cache_error))
            elif cache_error is not None:
                lists[sid] = (ParsedList(()), ListState(sid, "none", 0, None,
                                                        cache_error=cache_error))
        return cls(sources, lists)

    @classmethod
    def from_prefixes(cls, prefixes: Mapping[str, Iterable[str]]) -> RangeRegistry:
        """A registry holding the given lists, for tests and explicit configuration."""
        sources: dict[str, SourceInfo] = {}
        lists: dict[str, tuple[ParsedList, ListState]] = {}
        for sid, values in prefixes.items():
            parsed = ParsedList(tuple(_network(v, f"<inline>: {sid}") for v in values))
            sources[sid] = SourceInfo(sid, "inline", "", "cidr-list", None)
            lists[sid] = (parsed, ListState(sid, "inline", len(parsed.networks), None))
        return cls(sources, lists)

    def match(self, source_ids: Iterable[str], ip: str) -> str | None:
        """The first of `source_ids` whose list contains `ip`; unknown ids are skipped."""
        address = parse_address(ip)
        if address is None:
            return None
        for sid in source_ids:
            ranges = self._sets.get(sid)
            if ranges is not None and ranges.contains_address(address):
                return sid
        return None

    def has_data(self, source_id: str) -> bool:
        """Whether there is a list to check against (a snapshot or a cached copy)."""
        ranges = self._sets.get(source_id)
        return ranges is not None and len(ranges) > 0

    def sources(self) -> Mapping[str, SourceInfo]:
        return self._sources

    def info(self, source_id: str) -> ListState:
        """Where `source_id`'s data came from; origin "none" when there is none."""
        state = self._states.get(source_id)
        if state is not None:
            return state
        if source_id not in self._sources:
            raise KeyError(source_id)
        return ListState(source_id, "none", 0, None)

    def ages(self, now: float) -> dict[str, float]:
        """Seconds since each list with data was updated (never negative)."""
        return {
            sid: max(0.0, now - state.updated_at)
            for sid, state in self._states.items()
            if state.updated_at is not None and state.prefixes
        }

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)


def _cached(
    cache_dir: Path, info: SourceInfo
) -> tuple[tuple[ParsedList, ListState] | None, str | None]:
    """The cached copy of `info` if it is present and valid, else why it is not used."""
    body_path, meta_path = cache_paths(cache_dir, info.id)
    try:
        body = body_path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{body_path}: cannot read: {exc.strerror}"
    try:
        parsed = parse_range_list(body, info.format, str(body_path))
    except RangeListError as exc:
        _log.warning("range_cache_invalid", source=info.id, error=str(exc),
                     using="snapshot" if info.snapshot else "nothing")
        return None, str(exc)
    meta = read_meta(meta_path)
    fetched_at = meta.fetched_at if meta is not None else _mtime(body_path)
    updated = parsed.created if parsed.created is not None else fetched_at
    state = ListState(info.id, "cache", len(parsed.networks), updated,
                      created=parsed.created, fetched_at=fetched_at)
    return (parsed, state), None


def _read_snapshot(snapshot: Traversable, info: SourceInfo, where: str) -> ParsedList:
    try:
        data = snapshot.read_bytes()
    except OSError as exc:
        raise RangeListError(f"{where}: cannot read the snapshot of {info.id}: "
                             f"{exc.strerror}") from None
    return parse_range_list(data, info.format, where)


def _mtime(path: Traversable) -> float | None:
    # Only files on disk have one; a zipped install simply reports no age.
    if isinstance(path, Path):
        try:
            return path.stat().st_mtime
        except OSError:
            return None
    return None
