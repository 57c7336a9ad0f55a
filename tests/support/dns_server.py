"""A real DNS server on loopback for tests, serving a zone held in a Python mapping.

It answers over UDP and TCP on one kernel-chosen port of 127.0.0.1, from a thread, so
the code under test talks to it exactly as it would to a recursive resolver. Tests can
make chosen names fail (SERVFAIL) or answer late, and can count the queries received to
prove what was served from a cache.

Zone format: ``{name: [(type, value, ttl), ...]}`` with type ``PTR``, ``A`` or
``AAAA``. A name missing from the zone is NXDOMAIN; a name present without records of
the asked type is an empty NOERROR answer. Use `reverse_name` for PTR owners.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple

from dnslib import AAAA, PTR, QTYPE, RCODE, RR, A, DNSError  # type: ignore[import-untyped]
from dnslib.server import DNSLogger, DNSServer  # type: ignore[import-untyped]

HOST = "127.0.0.1"
_RDATA = {"PTR": PTR, "A": A, "AAAA": AAAA}


class Record(NamedTuple):
    """One resource record of a name: its type, its value, and its TTL in seconds."""

    rtype: str
    value: str
    ttl: int = 300


Zone = Mapping[str, Sequence[tuple[str, str, int]]]


def reverse_name(ip: str) -> str:
    """The owner name of the PTR record for `ip` (in-addr.arpa or ip6.arpa)."""
    return ipaddress.ip_address(ip).reverse_pointer


def _key(name: str) -> str:
    return name.strip().rstrip(".").lower()


class _Stopped(DNSError):  # type: ignore[misc]
    """Raised in a handler whose delayed answer outlived the server; dnslib drops it."""


class _ZoneResolver:
    """dnslib's resolver interface over the test server's mutable state."""

    def __init__(self, server: DnsTestServer) -> None:
        self._server = server

    def resolve(self, request: Any, handler: Any) -> Any:
        return self._server._answer(request)


class DnsTestServer:
    """A loopback DNS server for one test: `start()`, use `port`, `stop()`.

    Also a context manager. `servfail` names answer SERVFAIL; `delays` maps names to
    seconds to wait before answering. Both, like the zone, can change while it runs.
    """

    def __init__(self, zone: Zone | None = None, *, servfail: Iterable[str] = (),
                 delays: Mapping[str, float] | None = None) -> None:
        self._lock = threading.Lock()
        self._zone: dict[str, list[Record]] = {}
        for name, records in (zone or {}).items():
            self.set_records(name, records)
        self._servfail = {_key(n) for n in servfail}
        self._delays = {_key(n): s for n, s in (delays or {}).items()}
        self._queries: list[tuple[str, str]] = []
        self._stopping = threading.Event()
        self._servers: list[DNSServer] = []
        self._threads: list[threading.Thread] = []
        self.port = 0

    @property
    def address(self) -> tuple[str, int]:
        """(host, port), the form resolvers take a server in."""
        return HOST, self.port

    def start(self) -> DnsTestServer:
        resolver = _ZoneResolver(self)
        logger = DNSLogger(logf=lambda _line: None)
        # UDP takes a free port from the kernel; TCP then needs the same number, which
        # another process may hold, so try again with a fresh port a few times.
        for _ in range(20):
            udp = DNSServer(resolver, address=HOST, port=0, logger=logger)
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(resolver, address=HOST, port=port, tcp=True, logger=logger)
            except OSError:
                udp.server.server_close()
                continue
            self.port = port
            self._servers = [udp, tcp]
            for server in self._servers:
                # A short poll interval keeps stop() quick; dnslib's own thread polls
                # every half second.
                thread = threading.Thread(target=server.server.serve_forever,
                                          kwargs={"poll_interval": 0.02}, daemon=True)
                self._threads.append(thread)
                thread.start()
            return self
        raise OSError("no port free for both UDP and TCP on " + HOST)

    def stop(self) -> None:
        self._stopping.set()
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers = []
        self._threads = []

    def __enter__(self) -> DnsTestServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def set_records(self, name: str, records: Iterable[tuple[str, str, int]]) -> None:
        """Replace the records of `name` (an empty list leaves the name, without data)."""
        with self._lock:
            self._zone[_key(name)] = [Record(*r) for r in records]

    def remove(self, name: str) -> None:
        """Make `name` NXDOMAIN."""
        with self._lock:
            self._zone.pop(_key(name), None)

    def fail(self, name: str, failing: bool = True) -> None:
        """Answer SERVFAIL for `name` (or stop doing so)."""
        with self._lock:
            if failing:
                self._servfail.add(_key(name))
            else:
                self._servfail.discard(_key(name))

    def delay(self, name: str, seconds: float) -> None:
        """Wait `seconds` before answering queries for `name` (0 answers at once)."""
        with self._lock:
            self._delays[_key(name)] = seconds

    @property
    def queries(self) -> list[tuple[str, str]]:
        """(name, type) of every query received, oldest first."""
        with self._lock:
            return list(self._queries)

    def query_count(self, name: str | None = None, rtype: str | None = None) -> int:
        """How many queries arrived, for `name` and `rtype` when given."""
        want = None if name is None else _key(name)
        return sum(1 for n, t in self.queries
                   if (want is None or n == want) and (rtype is None or t == rtype))

    def _answer(self, request: Any) -> Any:
        name = _key(str(request.q.qname))
        rtype = QTYPE[request.q.qtype]
        with self._lock:
            self._queries.append((name, rtype))
            delay = self._delays.get(name, 0.0)
            servfail = name in self._servfail
            records = self._zone.get(name)
        if delay > 0 and self._stopping.wait(delay):
            raise _Stopped("server stopped before the delayed answer")
        reply = request.reply()
        if servfail:
            reply.header.rcode = RCODE.SERVFAIL
        elif records is None:
            reply.header.rcode = RCODE.NXDOMAIN
        else:
            for record in records:
                if record.rtype.upper() == rtype:
                    rdata = _RDATA[rtype](record.value)
                    reply.add_answer(RR(request.q.qname, getattr(QTYPE, rtype),
                                        rdata=rdata, ttl=record.ttl))
        return reply

