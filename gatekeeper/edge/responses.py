"""Decisions and errors as HTTP answers, the same bytes from every adapter."""

from __future__ import annotations

import json

from aiohttp import web

from gatekeeper.core.decision import Decision


def error_body(status: int, reason: str, message: str) -> bytes:
    doc = {"error": reason, "message": message, "status": status}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def error(status: int, reason: str, message: str) -> web.Response:
    resp = web.Response(
        status=status, body=error_body(status, reason, message),
        content_type="application/json",
    )
    if status in (400, 408, 413):
        # The rest of this connection's bytes can no longer be trusted to frame requests.
        resp.force_close()
    return resp


def decision_response(decision: Decision) -> web.Response:
    resp = web.Response(status=decision.status, body=decision.body)
    for name, value in decision.headers:
        resp.headers.add(name, value)
    return resp
