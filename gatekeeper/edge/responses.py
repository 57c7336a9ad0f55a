"""What Gatekeeper itself answers, as plain values, the same bytes from every adapter.

An `Answer` is a status, headers and a body. `decision_answer` turns a gate
`Decision` into one; `error_answer` gives the standard answer for a request the
gate could not or would not decide (400, 408, 413, 414, 417, 431, 500, 502, 503,
504): a small JSON document `{"error": <reason>, "status": <code>}`, in the
same compact form as the decision bodies of the core. Adapters only translate
an `Answer` to their framework (`to_response` does it for aiohttp).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from gatekeeper.core.decision import Decision

JSON = ("Content-Type", "application/json")
# A proxy failure or a refused request says nothing about the resource: no cache
# in front of the gate may keep it.
NO_STORE = ("Cache-Control", "no-store")
# After these the connection's remaining bytes cannot be trusted to frame the
# next request (an unread or unreadable body, a broken request head), so the
# connection is closed rather than reused.
CLOSING_STATUSES = frozenset({400, 408, 413, 414, 417, 431})


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    close: bool = False  # close the client connection after answering


def decision_answer(decision: Decision) -> Answer:
    """The answer for a decision that does not forward."""
    return Answer(decision.status, decision.headers, decision.body)


@functools.lru_cache(maxsize=256)
def error_answer(status: int, reason: str, extra: tuple[tuple[str, str], ...] = ()) -> Answer:
    """The standard answer for `status`; `reason` is a short snake_case code.

    `extra` adds headers, e.g. `(("Retry-After", "5"),)` for a 503. Cached: the
    set of (status, reason) pairs is small and fixed."""
    doc = {"error": reason, "status": status}
    body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    return Answer(status, (JSON, NO_STORE, *extra), body, status in CLOSING_STATUSES)


class QuietResponse(web.Response):
    """A `web.Response` without the `Server: Python/x aiohttp/y` header aiohttp
    adds: the version of the HTTP stack is not the client's business."""

    async def _prepare_headers(self) -> None:
        had_server = "Server" in self.headers
        await super()._prepare_headers()
        if not had_server:
            self.headers.popall("Server", None)


def to_response(answer: Answer, *, close: bool = False) -> web.Response:
    """The aiohttp response for `answer`; `close` forces `Connection: close`."""
    resp = QuietResponse(status=answer.status, body=answer.body,
                         headers=_headers(answer.headers))
    if answer.close or close:
        resp.force_close()
    return resp


def _headers(pairs: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in pairs:
        headers.add(name, value)
    return headers
