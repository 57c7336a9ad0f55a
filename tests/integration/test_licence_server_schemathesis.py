"""The licence server against its own OpenAPI document, with schemathesis.

A live server on 127.0.0.1 (in a thread with its own event loop: schemathesis
calls it synchronously over real sockets). Every generated request must get an
answer the document describes, status, headers and body, and never a 5xx.
The operation's examples use the test site's host, so some requests succeed
and the 200 schemas are checked too, not only the errors."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    missing_required_header,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from gatekeeper.core.globs import compile_path_glob
from gatekeeper.core.model import License, Policy, Price
from gatekeeper.licensing.keys import Keyring
from gatekeeper.licensing.licensees import Licensees, ScryptCost
from gatekeeper.licensing.server import ServerLimits, licence_server_routes

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi" / "licence-server.yaml"
POLICY = Policy(rules=(), licenses=(
    License("premium", usages=("ai-input",), paths=(compile_path_glob("/premium/**"),),
            price=Price(Decimal("0.01"), "USD"), validity=3600.0),
))
AnyCase = schemathesis.Case[Any]
# Conformance and "no 5xx", chosen explicitly: the default set also expects any
# schema-valid body to succeed, and most valid bodies name resources that no
# licence covers, which the server rightly refuses with 400 invalid_target.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, unsupported_method,
          missing_required_header]


@dataclass(frozen=True)
class Live:
    url: str
    authorization: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("licence-server")
    Keyring.generate(tmp / "keys")
    licensees = Licensees(tmp / "licensees.json", cost=ScryptCost(n=2**10))
    secret = licensees.add("acme", "Acme AI", "GPTBot", ["premium"])
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="licence-server", daemon=True)
    thread.start()

    async def serve() -> web.AppRunner:
        app = web.Application()
        licence_server_routes(app, policy=lambda: POLICY, licensees=licensees,
                              keyring=Keyring.load(tmp / "keys"), issuer="https://news.example",
                              audience=["news.example"], limits=ServerLimits(burst=100_000))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    runner = asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    basic = base64.b64encode(f"acme:{secret}".encode()).decode()
    yield Live(f"http://127.0.0.1:{runner.addresses[0][1]}", f"Basic {basic}")
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


# Loaded eagerly: `schemathesis.pytest.from_fixture` (4.32) does not run under pytest 9.
schema = schemathesis.openapi.from_path(SPEC)
schema.config.generation.update(max_examples=15)
# Examples are generated at collection, before the server and its secret exist:
# cases carry this stand-in, swapped for the real credentials when sent.
STAND_IN = "Basic stand-in-for-the-licensee"


@schema.auth()
class LicenseeCredentials:
    """Credentials on every generated request, except where schemathesis leaves
    `Authorization` out on purpose (and expects a 401)."""

    def get(self, case: AnyCase, context: schemathesis.AuthContext) -> str:
        return STAND_IN

    def set(self, case: AnyCase, data: str, context: schemathesis.AuthContext) -> None:
        case.headers["Authorization"] = data


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_openapi_document_and_none_is_a_server_error(
        case: AnyCase, live: Live) -> None:
    if case.headers.get("Authorization") == STAND_IN:
        case.headers["Authorization"] = live.authorization
    case.call_and_validate(base_url=live.url, checks=CHECKS)
