"""How many forwarded requests one client may have in flight at once.

A reverse proxy that streams with backpressure holds an upstream connection for
as long as its client takes to send the request body and to read the response. A
client with hundreds of requests that each trickle their body or read a few bytes
at a time (slow-POST and slow-read attacks) would otherwise hold the whole
upstream pool, and every other visitor would wait. Capping the requests in flight
per client bounds what one client can hold; the body rate floor and the send
timeout bound how long.

The count is of requests being forwarded, not of open connections: idle
keep-alive connections hold nothing upstream, so many visitors behind one NAT
address are not refused for keeping connections open. The client is the address
the gate decided on (behind a trusted proxy, the forwarded one); a trusted
proxy's own address is never capped.
"""

from __future__ import annotations

from collections.abc import Callable


class InFlightCap:
    __slots__ = ("_exempt", "_limit", "_open")

    def __init__(self, limit: int, exempt: Callable[[str], bool]) -> None:
        self._limit = limit  # 0: no cap
        self._exempt = exempt
        self._open: dict[str, int] = {}

    def admit(self, ip: str) -> bool:
        """Count a request from `ip` going upstream; False (and not counted) over the cap."""
        if not self._limit or self._exempt(ip):
            return True
        count = self._open.get(ip, 0)
        if count >= self._limit:
            return False
        self._open[ip] = count + 1
        return True

    def release(self, ip: str) -> None:
        """A request `admit` counted is done."""
        count = self._open.get(ip, 0)
        if count <= 1:
            self._open.pop(ip, None)  # no entry outlives its client's last request
        else:
            self._open[ip] = count - 1

    def in_flight(self, ip: str) -> int:
        return self._open.get(ip, 0)
