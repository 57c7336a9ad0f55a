"""Forward-confirmed reverse DNS: does a client address belong to a crawler's domains?

A PTR record is written by whoever controls the address block, so on its own it proves
nothing: anyone can point their reverse zone at ``crawl-1-2-3-4.googlebot.com``. The
claim holds only when the PTR name lies under one of the crawler's domains *and* that
name's forward records, which only the domain's owner controls, return the address.

Lookups are cached per address (the PTR names, and per name the forward addresses) with
the TTLs of the answers, bounded in number, shared by concurrent callers, and never keep
a request waiting longer than its budget: what is not finished in time completes in the
background and serves the next request from the same address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from gatekeeper.errors import GatekeeperError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# An address with many PTR names is unusual; forward-resolving every one of them would
# let whoever controls a reverse zone make us send queries to names of their choosing.
MAX_PTR_NAMES = 8
MAX_FORWARD_NAMES = 3


class ReverseDnsError(GatekeeperError):
    """Reverse-DNS verification was set up wrongly or asked about a malformed address."""


class DnsOutcome(StrEnum):
    """What the DNS says about an address's claim to belong to some domains."""

    CONFIRMED = "confirmed"  # a PTR name under the domains resolves back to the address
    REFUTED = "refuted"  # the DNS answered, and the answer disproves the claim
    UNKNOWN = "unknown"  # the DNS did not answer (timeout, SERVFAIL, network error)
    PENDING = "pending"  # the budget ran out; the lookup goes on in the background


@dataclass(frozen=True, slots=True)
class DnsResult:
    """One verification answer, with what a log line or `explain` needs to say why."""

    outcome: DnsOutcome
    hostname: str  # the confirming or offending PTR name; "" when there is none
    reason: str
    elapsed: float  # seconds the caller waited
    cached: bool  # answered from earlier lookups, without waiting for DNS


@dataclass(slots=True)
class DnsStats:
    """Counters since start, as plain numbers for the owner to export as metrics."""

    lookups: int = 0  # lookups sent to DNS (one may serve many callers)
    cache_hits: int = 0  # verify calls answered from the cache
    overloaded: int = 0  # verify calls refused because max_concurrent lookups ran
    evictions: int = 0  # cache entries dropped to keep within max_entries
    outcomes: dict[DnsOutcome, int] = field(
        default_factory=lambda: dict.fromkeys(DnsOutcome, 0))


class _State(Enum):
    FOUND = "found"
    ABSENT = "absent"  # NXDOMAIN or no records of the type: an answer, and a negative one
    FAILED = "failed"  # no answer at all


@dataclass(frozen=True, slots=True)
class _Answer:
    """One cached DNS answer: PTR names, or one name's forward addresses."""

    state: _State
    values: tuple[str, ...]
    expires: float
    error: str = ""  # why it FAILED, for the result's reason


@dataclass(slots=True)
class _Entry:
    """Everything known about one address, reusable for any list of domains."""

    ptr: _Answer | None = None
    forward: dict[str, _Answer] = field(default_factory=dict)


class ReverseDnsVerifier:
    """Forward-confirmed reverse DNS with a bounded cache and per-request time budgets."""

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] | None = None,
        *,
        timeout: float = 2.0,
        max_entries: int = 50_000,
        negative_ttl: float = 300.0,
        max_ttl: float = 86_400.0,
        min_ttl: float = 30.0,
        unknown_ttl: float = 10.0,
        max_concurrent: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`nameservers` are (address, port) pairs; None reads the system's resolver
        configuration. `timeout` bounds one whole lookup (PTR and forward), and the
        TTL settings are seconds on the `clock`."""
        if timeout <= 0:
            raise ReverseDnsError(f"rDNS timeout must be positive, not {timeout}")
        if max_entries < 1 or max_concurrent < 1:
            raise ReverseDnsError("rDNS max_entries and max_concurrent must be at least 1")
        if not 0 <= min_ttl <= max_ttl:
            raise ReverseDnsError(f"rDNS TTL bounds are inverted: {min_ttl} > {max_ttl}")
        if negative_ttl < 0 or unknown_ttl < 0:
            raise ReverseDnsError("rDNS negative_ttl and unknown_ttl must not be negative")
        self._resolver = _make_resolver(nameservers, timeout)
        self._timeout = timeout
        self._max_entries = max_entries
        self._negative_ttl = negative_ttl
        self._unknown_ttl = unknown_ttl
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._max_concurrent = max_concurrent
        self._clock = clock
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[_Entry]] = {}
        self.stats = DnsStats()

    def __len__(self) -> int:
        """The number of addresses in the cache."""
        return len(self._cache)

    async def verify(self, ip: str, domains: Sequence[str], *, budget: float | None) -> DnsResult:
        """Whether `ip` forward-confirms into one of `domains`, waiting at most `budget`
        seconds (None: until the lookup ends or times out)."""
        started = time.perf_counter()
        key, address = _normalise_ip(ip)
        suffixes = _normalise_domains(domains)
        entry = self._cache.get(key)
        if entry is not None:
            found = _evaluate(entry, address, suffixes, self._clock())
            if found is not None:
                self._cache.move_to_end(key)
                self.stats.cache_hits += 1
                return self._count(found, started, cached=True)
        loop = asyncio.get_running_loop()
        deadline = None if budget is None else loop.time() + max(budget, 0.0)
        # Two rounds suffice: a caller that joined a lookup started for other domains
        # may still lack forward answers for its own names, which a second lookup adds.
        previous: asyncio.Task[_Entry] | None = None
        for _ in range(2):
            task = self._inflight.get(key)
            mine = task is None or task is previous
            if task is None or mine:
                if len(self._inflight) >= self._max_concurrent:
                    self.stats.overloaded += 1
                    return self._count(_result(DnsOutcome.UNKNOWN, "",
                                               "too many lookups in flight"), started)
                task = self._start(key, address, suffixes)
            if not task.done():
                timeout = None if deadline is None else max(deadline - loop.time(), 0.0)
                # asyncio.wait leaves the task running when the budget runs out (and
                # when this caller is cancelled), so its answer still reaches the cache.
                await asyncio.wait({task}, timeout=timeout)
                if not task.done():
                    reason = (f"reverse DNS for {key} still running after the "
                              f"{budget or 0:g} s budget")
                    return self._count(_result(DnsOutcome.PENDING, "", reason), started)
            if task.cancelled():  # close() ran while this caller waited
                cancelled = _result(DnsOutcome.UNKNOWN, "", "reverse DNS lookup cancelled")
                return self._count(cancelled, started)
            entry = task.result()
            found = _evaluate(entry, address, suffixes, self._clock())
            if found is None and mine:
                # A lookup made for these very domains is judged as it stands: a TTL
                # shorter than the wait must not send this caller round again.
                found = _evaluate(entry, address, suffixes, None)
            if found is not None:
                return self._count(found, started)
            previous = task
        return self._count(_result(DnsOutcome.UNKNOWN, "", "reverse DNS did not settle"),
                           started)

    def peek(self, ip: str, domains: Sequence[str]) -> DnsResult | None:
        """The cached answer for `ip` and `domains`, or None; never does I/O."""
        key, address = _normalise_ip(ip)
        entry = self._cache.get(key)
        if entry is None:
            return None
        found = _evaluate(entry, address, _normalise_domains(domains), self._clock())
        if found is None:
            return None
        self._cache.move_to_end(key)
        return DnsResult(found.outcome, found.hostname, found.reason, 0.0, cached=True)

    async def close(self) -> None:
        """Cancel the lookups still running in the background."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()

    def _count(self, found: DnsResult, started: float, *, cached: bool = False) -> DnsResult:
        self.stats.outcomes[found.outcome] += 1
        return DnsResult(found.outcome, found.hostname, found.reason,
                         time.perf_counter() - started, cached)

    def _start(self, key: str, address: IPAddress,
               suffixes: tuple[str, ...]) -> asyncio.Task[_Entry]:
        self.stats.lookups += 1
        task = asyncio.get_running_loop().create_task(self._lookup(key, address, suffixes))
        self._inflight[key] = task

        def forget(done: asyncio.Task[_Entry]) -> None:
            if self._inflight.get(key) is done:
                del self._inflight[key]

        task.add_done_callback(forget)
        return task

    async def _lookup(self, key: str, address: IPAddress,
                      suffixes: tuple[str, ...]) -> _Entry:
        """Fill in what the cache lacks for `address` and `suffixes`, then store it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        # Work on a copy so a concurrent reader never sees a PTR answer paired with
        # forward answers that belong to the previous one.
        cached = self._cache.get(key)
        entry = _Entry(cached.ptr, dict(cached.forward)) if cached else _Entry()
        now = self._clock()
        if entry.ptr is None or entry.ptr.expires <= now:
            entry.ptr = await self._resolve_ptr(address, deadline - loop.time())
            entry.forward = {name: answer for name, answer in entry.forward.items()
                             if name in entry.ptr.values}
            now = self._clock()
        if entry.ptr.state is _State.FOUND:
            wanted = _within(entry.ptr.values, suffixes)
            missing = [name for name in wanted
                       if name not in entry.forward or entry.forward[name].expires <= now]
            # Only the address family of the client can contain the client's address, so
            # the other family's query would be a wasted round trip.
            rdtype = "A" if address.version == 4 else "AAAA"
            answers = await asyncio.gather(
                *(self._resolve_forward(name, rdtype, deadline - loop.time())
                  for name in missing))
            entry.forward.update(zip(missing, answers, strict=True))
        self._store(key, entry)
        return entry

    async def _resolve_ptr(self, address: IPAddress, lifetime: float) -> _Answer:
        try:
            answer = await self._resolver.resolve_address(str(address), lifetime=lifetime)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return self._absent()
        except (dns.exception.DNSException, OSError) as exc:
            return self._failed(_describe(exc))
        names: list[str] = []
        for rdata in answer:
            name = _normalise_name(rdata.to_text())
            if name and name not in names:
                names.append(name)
        if not names:
            return self._absent()
        return self._found(tuple(names[:MAX_PTR_NAMES]), answer)

    async def _resolve_forward(self, name: str, rdtype: str, lifetime: float) -> _Answer:
        if lifetime <= 0:
            return self._failed("timed out")
        try:
            answer = await self._resolver.resolve(name + ".", rdtype, lifetime=lifetime,
                                                  search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return self._absent()
        except (dns.exception.DNSException, OSError) as exc:
            return self._failed(_describe(exc))
        addresses: list[str] = []
        for rdata in answer:
            try:
                addresses.append(str(_plain(ipaddress.ip_address(rdata.to_text()))))
            except ValueError:
                continue
        return self._found(tuple(addresses), answer)

    def _found(self, values: tuple[str, ...], answer: dns.resolver.Answer) -> _Answer:
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else self._min_ttl
        ttl = min(max(ttl, self._min_ttl), self._max_ttl)
        return _Answer(_State.FOUND, values, self._clock() + ttl)

    def _absent(self) -> _Answer:
        return _Answer(_State.ABSENT, (), self._clock() + self._negative_ttl)

    def _failed(self, reason: str) -> _Answer:
        # Kept briefly, so that a DNS outage costs one lookup per address per few
        # seconds instead of one per request.
        return _Answer(_State.FAILED, (), self._clock() + self._unknown_ttl, reason)

    def _store(self, key: str, entry: _Entry) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
            self.stats.evictions += 1


def _make_resolver(nameservers: Sequence[tuple[str, int]] | None,
                   timeout: float) -> dns.asyncresolver.Resolver:
    if nameservers is None:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.exception.DNSException as exc:
            raise ReverseDnsError(f"cannot read the system resolver configuration: {exc}") \
                from exc
    else:
        if not nameservers:
            raise ReverseDnsError("rDNS needs at least one DNS server")
        resolver = dns.asyncresolver.Resolver(configure=False)
        try:
            # Each server carries its own port; Resolver.port would apply one to all.
            resolver.nameservers = [dns.nameserver.Do53Nameserver(str(host), int(port))
                                    for host, port in nameservers]
        except ValueError as exc:
            raise ReverseDnsError(f"invalid DNS server address: {exc}") from exc
    # A lookup is two rounds of queries (PTR, then forward), and in each round every
    # server gets its share of the time, so a silent first server cannot use it all up
    # before the next one is asked.
    resolver.timeout = timeout / (2 * max(len(resolver.nameservers), 1))
    resolver.lifetime = timeout
    resolver.cache = None  # ours knows about forward confirmation; two caches would disagree
    return resolver


def _evaluate(entry: _Entry, address: IPAddress, suffixes: tuple[str, ...],
              now: float | None) -> DnsResult | None:
    """The verdict `entry` supports, or None when it lacks a fresh answer it needs.

    `now` None judges the entry as it stands, ignoring expiry."""

    def fresh(answer: _Answer | None) -> bool:
        return answer is not None and (now is None or answer.expires > now)

    ptr = entry.ptr
    if ptr is None or not fresh(ptr):
        return None
    ip = str(address)
    if ptr.state is _State.FAILED:
        return _result(DnsOutcome.UNKNOWN, "", f"PTR lookup for {ip} failed: {ptr.error}")
    if ptr.state is _State.ABSENT:
        return _result(DnsOutcome.REFUTED, "", f"no PTR record for {ip}")
    wanted = _within(ptr.values, suffixes)
    if not wanted:
        return _result(DnsOutcome.REFUTED, ptr.values[0],
                       f"PTR {ptr.values[0]} is not under {', '.join(suffixes)}")
    answers = [(name, entry.forward.get(name)) for name in wanted]
    for name, answer in answers:
        if fresh(answer) and answer is not None and ip in answer.values:
            return _result(DnsOutcome.CONFIRMED, name, f"PTR {name} resolves back to {ip}")
    if not all(fresh(answer) for _, answer in answers):
        return None
    rdtype = "A" if address.version == 4 else "AAAA"
    for name, answer in answers:
        if answer is not None and answer.state is _State.FAILED:
            return _result(DnsOutcome.UNKNOWN, name,
                           f"{rdtype} lookup for PTR {name} failed: {answer.error}")
    name = wanted[0]
    return _result(DnsOutcome.REFUTED, name, f"PTR {name} has no {rdtype} record for {ip}")


def _result(outcome: DnsOutcome, hostname: str, reason: str) -> DnsResult:
    return DnsResult(outcome, hostname, reason, 0.0, cached=False)


def _within(names: tuple[str, ...], suffixes: tuple[str, ...]) -> list[str]:
    """The names under one of the suffixes on a label boundary, at most a few."""
    hits = [name for name in names
            if any(name == s or name.endswith("." + s) for s in suffixes)]
    return hits[:MAX_FORWARD_NAMES]


def _plain(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address is the IPv4 address it maps."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _normalise_ip(ip: str) -> tuple[str, IPAddress]:
    try:
        address = _plain(ipaddress.ip_address(ip.strip()))
    except ValueError as exc:
        raise ReverseDnsError(f"not an IP address: {ip!r}") from exc
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
    return str(address), address


def _normalise_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _normalise_domains(domains: Sequence[str]) -> tuple[str, ...]:
    suffixes = tuple(dict.fromkeys(
        s for s in (_normalise_name(d).lstrip(".") for d in domains) if s))
    if not suffixes:
        raise ReverseDnsError("rDNS verification needs at least one domain")
    return suffixes


def _describe(exc: BaseException) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "timed out"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "no DNS server answered (server failure or refusal)"
    if isinstance(exc, OSError):
        return f"network error: {exc.strerror or exc}"
    return type(exc).__name__
