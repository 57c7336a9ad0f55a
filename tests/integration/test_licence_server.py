"""The licence server over real sockets: an aiohttp server on 127.0.0.1 with the OLP
routes, a freshly generated keyring and a licensees file in a temporary directory.

Tokens are checked the way a third party would: the JWKS is fetched from the server
and decoded with `cryptography`, then `TokenVerifier` verifies against those keys."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gatekeeper.core.globs import compile_path_glob
from gatekeeper.core.model import License, Policy, Price
from gatekeeper.licensing.keys import Keyring
from gatekeeper.licensing.licensees import Licensees, ScryptCost
from gatekeeper.licensing.server import ServerLimits, licence_server_routes
from gatekeeper.licensing.tokens import TokenRejected, TokenVerifier, VerifiedToken
from gatekeeper.observe import logging as gk_logging

ISSUER = "https://news.example"
HOSTS = ("news.example", "www.news.example")
THUMBPRINT = "poqkLGiymh_W0uP6PZFw-dvez3QJT5SolqXBCW38r0U"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

PREMIUM = License("premium", usages=("ai-input", "ai-index"),
                  paths=(compile_path_glob("/premium/**"),),
                  price=Price(Decimal("0.002"), "USD"), validity=3600.0)
ARCHIVE = License("archive", usages=("ai-all",), paths=(compile_path_glob("/archive/**"),),
                  validity=30 * 86400.0)
TRAINING = License("training", usages=("ai-train",), validity=600.0)
POLICY = Policy(rules=(), licenses=(PREMIUM, ARCHIVE, TRAINING))


class Clock:
    """Real time, moved forward by tests that need a token to expire."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Server:
    url: str
    licensees: Licensees
    clock: Clock
    log: io.StringIO
    secrets: dict[str, str] = field(default_factory=dict)
    policy: Callable[[], Policy] = lambda: POLICY

    def basic(self, client_id: str, secret: str | None = None) -> dict[str, str]:
        given = self.secrets[client_id] if secret is None else secret
        raw = base64.b64encode(f"{client_id}:{given}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[StartServer]:
    runners: list[web.AppRunner] = []

    async def run(limits: ServerLimits | None = None,
                  policy: Callable[[], Policy] | None = None, on_router: bool = False,
                  **mount: Any) -> Server:
        log = io.StringIO()
        gk_logging.configure("json", "info", log, flush_interval=0, cache_loggers=False)
        keydir = tmp_path / f"keys-{len(runners)}"
        Keyring.generate(keydir)
        clock = Clock()
        # A quarter of the default scrypt cost: the same code, a faster suite.
        licensees = Licensees(tmp_path / f"licensees-{len(runners)}.json",
                              cost=ScryptCost(n=2**12), clock=clock)
        server = Server("", licensees, clock, log)
        if policy is not None:
            server.policy = policy
        server.secrets["acme"] = licensees.add("acme", "Acme AI", "GPTBot",
                                               ["premium", "archive"], THUMBPRINT)
        server.secrets["beta"] = licensees.add("beta", "Beta Search", "ClaudeBot", ["training"])
        server.secrets["gone"] = licensees.add("gone", "Gone Ltd", "CCBot", ["premium"])
        licensees.disable("gone")
        app = web.Application()
        licence_server_routes(app.router if on_router else app,
                              policy=lambda: server.policy(), licensees=licensees,
                              keyring=Keyring.load(keydir), issuer=ISSUER, audience=HOSTS,
                              clock=clock, limits=limits or ServerLimits(burst=1000), **mount)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return server

    yield run
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def server(start: StartServer) -> Server:
    return await start()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: dict[str, Any]
    raw: bytes


async def call(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Reply:
    async with http.request(method, url, **kwargs) as resp:
        raw = await resp.read()
        body = json.loads(raw) if raw else {}
        return Reply(resp.status, resp.headers, body, raw)


async def token(http: aiohttp.ClientSession, server: Server, client: str = "acme",
                secret: str | None = None, **form: str) -> Reply:
    return await call(http, "POST", server.url + "/token", data=form,
                      headers=server.basic(client, secret))


async def introspect(http: aiohttp.ClientSession, server: Server, client: str = "acme",
                     **form: str) -> Reply:
    return await call(http, "POST", server.url + "/introspect", data=form,
                      headers=server.basic(client))


async def verify_with_published_keys(http: aiohttp.ClientSession, server: Server,
                                     access_token: str, host: str = "news.example"
                                     ) -> VerifiedToken | TokenRejected:
    jwks = await call(http, "GET", server.url + "/.well-known/jwks.json")
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in jwks.body["keys"]:
        assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("OKP", "Ed25519", "EdDSA")
        raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
        keys[jwk["kid"]] = Ed25519PublicKey.from_public_bytes(raw)
    verifier = TokenVerifier(lambda: keys, issuer=ISSUER, audience=HOSTS)
    return verifier.verify(access_token, host, server.clock())


def assert_oauth_error(reply: Reply, status: int, error: str) -> None:
    assert (reply.status, reply.body.get("error")) == (status, error), reply.body
    assert isinstance(reply.body["error_description"], str)
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["Content-Type"].startswith("application/json")
    assert b"Traceback" not in reply.raw


# Issuing


async def test_rsl_grant_issues_a_license_token_that_verifies_against_the_published_jwks(
        http: aiohttp.ClientSession, server: Server) -> None:
    reply = await token(http, server, grant_type="rsl", license="premium",
                        resource="https://news.example/premium/article-1")
    assert reply.status == 200, reply.body
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.body["token_type"] == "License"
    assert reply.body["expires_in"] == 3600  # the licence's validity, under the cap
    assert reply.body["scope"] == "premium"
    verified = await verify_with_published_keys(http, server, reply.body["access_token"])
    assert isinstance(verified, VerifiedToken), verified
    claims = verified.claims
    assert (claims.subject, claims.crawler, claims.crawler_key) == ("acme", "GPTBot", THUMBPRINT)
    assert (claims.license, claims.usages) == ("premium", ("ai-input", "ai-index"))
    assert claims.audience == HOSTS
    assert claims.expires - claims.not_before == 3600


async def test_client_credentials_grant_picks_the_first_granted_licence_covering_the_path(
        http: aiohttp.ClientSession, server: Server) -> None:
    reply = await token(http, server, grant_type="client_credentials",
                        resource="https://www.news.example/archive/2019/story")
    assert reply.status == 200, reply.body
    assert reply.body["scope"] == "archive"
    # 30 days of licence validity, capped by the server's one-day maximum.
    assert reply.body["expires_in"] == 86400
    verified = await verify_with_published_keys(http, server, reply.body["access_token"],
                                                "www.news.example")
    assert isinstance(verified, VerifiedToken)
    assert verified.claims.license == "archive"


async def test_an_rsl_license_element_picks_the_licence_whose_usages_it_asks_for(
        http: aiohttp.ClientSession, server: Server) -> None:
    element = ('<license xmlns="https://rslstandard.org/rsl">'
               '<permits type="usage">ai-input</permits>'
               '<payment type="crawl"><amount currency="USD">0.002</amount></payment>'
               '</license>')
    reply = await token(http, server, grant_type="client_credentials", license=element,
                        resource="https://news.example/premium/a")
    assert reply.status == 200, reply.body
    verified = await verify_with_published_keys(http, server, reply.body["access_token"])
    assert isinstance(verified, VerifiedToken)
    assert (verified.claims.license, verified.claims.usages) == ("premium", ("ai-input",))
    asks_for_training = element.replace("ai-input", "ai-train")
    refused = await token(http, server, grant_type="rsl", license=asks_for_training,
                          resource="https://news.example/premium/a")
    assert_oauth_error(refused, 400, "invalid_grant")


async def test_a_license_element_with_a_doctype_is_refused_before_parsing(
        http: aiohttp.ClientSession, server: Server) -> None:
    bomb = ('<!DOCTYPE l [<!ENTITY a "aaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            '<license><permits type="usage">&b;</permits></license>')
    reply = await token(http, server, grant_type="rsl", license=bomb,
                        resource="https://news.example/premium/a")
    assert_oauth_error(reply, 400, "invalid_request")


# Client authentication


async def test_a_wrong_secret_and_an_unknown_client_get_the_same_invalid_client_401(
        http: aiohttp.ClientSession, server: Server) -> None:
    form = {"grant_type": "client_credentials", "resource": "https://news.example/premium/a"}
    wrong = await token(http, server, "acme", "gks_not-the-secret", **form)
    unknown = await token(http, server, "nobody", "gks_not-the-secret", **form)
    for reply in (wrong, unknown):
        assert_oauth_error(reply, 401, "invalid_client")
        assert reply.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert wrong.raw == unknown.raw
    assert wrong.headers["WWW-Authenticate"] == unknown.headers["WWW-Authenticate"]


@pytest.mark.parametrize("authorization", [
    None, "Bearer abc", "Basic not-base64!", "Basic " + base64.b64encode(b"no-colon").decode(),
])
async def test_missing_or_malformed_client_credentials_are_invalid_client(
        http: aiohttp.ClientSession, server: Server, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    reply = await call(http, "POST", server.url + "/token", headers=headers,
                       data={"grant_type": "client_credentials",
                             "resource": "https://news.example/premium/a"})
    assert_oauth_error(reply, 401, "invalid_client")


async def test_a_disabled_licensee_is_an_unauthorized_client(
        http: aiohttp.ClientSession, server: Server) -> None:
    reply = await token(http, server, "gone", grant_type="client_credentials",
                        resource="https://news.example/premium/a")
    assert_oauth_error(reply, 400, "unauthorized_client")


async def test_neither_the_secret_nor_the_token_reaches_the_log(
        http: aiohttp.ClientSession, server: Server) -> None:
    issued = await token(http, server, grant_type="rsl", license="premium",
                         resource="https://news.example/premium/a")
    await token(http, server, "acme", server.secrets["acme"] + "-typo",
                grant_type="client_credentials", resource="https://news.example/premium/a")
    logged = server.log.getvalue()
    assert "licence_token_issued" in logged
    assert server.secrets["acme"] not in logged
    assert issued.body["access_token"] not in logged


# Grant checks


async def test_a_licence_not_granted_to_the_client_is_an_invalid_grant(
        http: aiohttp.ClientSession, server: Server) -> None:
    # `training` exists in the policy but acme was not sold it; `nonexistent` does not.
    for name in ("training", "nonexistent"):
        reply = await token(http, server, grant_type="rsl", license=name,
                            resource="https://news.example/premium/a")
        assert_oauth_error(reply, 400, "invalid_grant")
    via_scope = await token(http, server, grant_type="client_credentials", scope="training",
                            resource="https://news.example/x")
    assert_oauth_error(via_scope, 400, "invalid_scope")


@pytest.mark.parametrize("resource", [
    "https://elsewhere.example/premium/a",  # another host
    "https://news.example.evil.example/premium/a",
    "https://news.example/free/a",  # outside the licence's paths
    "https://news.example/premium-evil/a",  # not below /premium
    "/premium/a",  # not absolute
    "ftp://news.example/premium/a",
    "https://news.example/premium/a#frag",
    "https://user@news.example/premium/a",
])
async def test_a_resource_outside_the_licence_is_an_invalid_target(
        http: aiohttp.ClientSession, server: Server, resource: str) -> None:
    reply = await token(http, server, grant_type="rsl", license="premium", resource=resource)
    assert_oauth_error(reply, 400, "invalid_target")


async def test_client_credentials_with_no_covering_licence_is_an_invalid_target(
        http: aiohttp.ClientSession, server: Server) -> None:
    reply = await token(http, server, grant_type="client_credentials",
                        resource="https://news.example/about")
    assert_oauth_error(reply, 400, "invalid_target")


@pytest.mark.parametrize("grant", ["authorization_code", "password", "refresh_token", "RSL"])
async def test_other_grant_types_are_unsupported(
        http: aiohttp.ClientSession, server: Server, grant: str) -> None:
    reply = await token(http, server, grant_type=grant, resource="https://news.example/x")
    assert_oauth_error(reply, 400, "unsupported_grant_type")


@pytest.mark.parametrize("form", [
    {"resource": "https://news.example/premium/a"},  # no grant_type
    {"grant_type": "client_credentials"},  # no resource
    {"grant_type": "rsl", "resource": "https://news.example/premium/a"},  # rsl without license
    {"grant_type": "rsl", "license": "premium", "resource": "https://news.example/premium/a",
     "license_type": "text/plain"},
    {"grant_type": "rsl", "license": "<license><permits>", "resource":
     "https://news.example/premium/a"},  # not well-formed
])
async def test_incomplete_requests_are_invalid_request(
        http: aiohttp.ClientSession, server: Server, form: dict[str, str]) -> None:
    reply = await token(http, server, **form)
    assert_oauth_error(reply, 400, "invalid_request")


async def test_a_repeated_parameter_is_invalid_request(
        http: aiohttp.ClientSession, server: Server) -> None:
    body = ("grant_type=client_credentials&resource=https%3A%2F%2Fnews.example%2Fpremium%2Fa"
            "&grant_type=rsl")
    reply = await call(http, "POST", server.url + "/token", data=body.encode(),
                       headers={**server.basic("acme"), **FORM})
    assert_oauth_error(reply, 400, "invalid_request")


# Hardening


async def test_get_on_the_token_endpoint_is_405_with_allow(
        http: aiohttp.ClientSession, server: Server) -> None:
    for path in ("/token", "/introspect"):
        reply = await call(http, "GET", server.url + path)
        assert_oauth_error(reply, 405, "invalid_request")
        assert reply.headers["Allow"] == "POST"
    reply = await call(http, "POST", server.url + "/.well-known/jwks.json")
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET, HEAD"


async def test_a_json_body_is_415(http: aiohttp.ClientSession, server: Server) -> None:
    reply = await call(http, "POST", server.url + "/token", headers=server.basic("acme"),
                       json={"grant_type": "client_credentials",
                             "resource": "https://news.example/premium/a"})
    assert_oauth_error(reply, 415, "invalid_request")


async def test_a_10_kib_body_is_413_whether_its_length_is_declared_or_chunked(
        http: aiohttp.ClientSession, server: Server) -> None:
    body = b"grant_type=client_credentials&pad=" + b"x" * 10 * 1024
    declared = await call(http, "POST", server.url + "/token", data=body,
                          headers={**server.basic("acme"), **FORM})
    assert_oauth_error(declared, 413, "invalid_request")

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 1024):
            yield body[i:i + 1024]

    chunked = await call(http, "POST", server.url + "/token", data=chunks(),
                         headers={**server.basic("acme"), **FORM})
    assert_oauth_error(chunked, 413, "invalid_request")


async def test_a_burst_of_requests_from_one_address_gets_429_with_retry_after(
        http: aiohttp.ClientSession, start: StartServer) -> None:
    server = await start(ServerLimits(rate=0.5, burst=5))
    statuses = []
    last: Reply | None = None
    for _ in range(8):
        last = await call(http, "POST", server.url + "/token", data={"grant_type": "x"})
        statuses.append(last.status)
    assert statuses == [401] * 5 + [429] * 3
    assert last is not None
    assert_oauth_error(last, 429, "temporarily_unavailable")
    assert int(last.headers["Retry-After"]) >= 1
    # The JWKS has its own bucket: fetching keys is not starved by token requests.
    jwks = await call(http, "GET", server.url + "/.well-known/jwks.json")
    assert jwks.status == 200


async def test_an_unexpected_exception_is_a_generic_500_and_is_logged(
        http: aiohttp.ClientSession, start: StartServer) -> None:
    def broken() -> Policy:
        raise RuntimeError("policy store exploded at /internal/path")

    server = await start(policy=broken)
    reply = await token(http, server, grant_type="client_credentials",
                        resource="https://news.example/premium/a")
    assert_oauth_error(reply, 500, "server_error")
    assert b"exploded" not in reply.raw
    assert reply.body["error_description"] == "internal error"
    logged = server.log.getvalue()
    assert "licence_server_error" in logged
    assert "exploded" in logged


async def test_the_jwks_is_public_and_cacheable(
        http: aiohttp.ClientSession, server: Server) -> None:
    reply = await call(http, "GET", server.url + "/.well-known/jwks.json")
    assert reply.status == 200
    assert reply.headers["Cache-Control"] == "public, max-age=300"
    assert len(reply.body["keys"]) == 1
    assert "d" not in reply.body["keys"][0]  # no private part
    head = await call(http, "HEAD", server.url + "/.well-known/jwks.json")
    assert (head.status, head.raw) == (200, b"")


async def test_the_routes_mount_under_a_prefix_on_a_router_without_the_jwks(
        http: aiohttp.ClientSession, start: StartServer) -> None:
    server = await start(on_router=True, prefix="/.well-known/gatekeeper", jwks_path=None)
    issued = await call(http, "POST", server.url + "/.well-known/gatekeeper/token",
                        headers=server.basic("acme"),
                        data={"grant_type": "client_credentials",
                              "resource": "https://news.example/premium/a"})
    assert issued.status == 200, issued.body
    async with http.post(server.url + "/token") as resp:
        assert resp.status == 404
    async with http.get(server.url + "/.well-known/jwks.json") as resp:
        assert resp.status == 404


# Introspection


async def _issued(http: aiohttp.ClientSession, server: Server, client: str = "acme") -> str:
    reply = await token(http, server, client, grant_type="client_credentials",
                        resource="https://news.example/premium/a" if client == "acme"
                        else "https://news.example/anything")
    assert reply.status == 200, reply.body
    access_token: str = reply.body["access_token"]
    return access_token


async def test_introspection_of_a_valid_token_is_active_with_its_claims(
        http: aiohttp.ClientSession, server: Server) -> None:
    access_token = await _issued(http, server)
    reply = await introspect(http, server, token=access_token)
    assert reply.status == 200
    assert reply.headers["Cache-Control"] == "no-store"
    body = reply.body
    assert body["active"] is True
    assert (body["client_id"], body["sub"], body["license"], body["crawler"]) == (
        "acme", "acme", "premium", "GPTBot")
    assert body["scope"] == "ai-input ai-index"
    assert body["aud"] == list(HOSTS)
    assert body["token_type"] == "License"
    assert body["exp"] - body["iat"] == 3600
    assert body["crawler_key"] == THUMBPRINT
    assert "permitted" not in body


async def test_introspection_with_a_resource_says_whether_the_token_permits_it(
        http: aiohttp.ClientSession, server: Server) -> None:
    access_token = await _issued(http, server)
    inside = await introspect(http, server, token=access_token,
                              resource="https://www.news.example/premium/b")
    outside = await introspect(http, server, token=access_token,
                               resource="https://news.example/archive/b")
    assert (inside.body["active"], inside.body["permitted"]) == (True, True)
    assert (outside.body["active"], outside.body["permitted"]) == (True, False)
    assert outside.body["reason"]


async def test_introspection_of_an_expired_token_is_inactive(
        http: aiohttp.ClientSession, server: Server) -> None:
    access_token = await _issued(http, server)
    server.clock.offset = 3600 + 60  # past expiry and the verifier's leeway
    reply = await introspect(http, server, token=access_token)
    assert reply.status == 200
    assert reply.body == {"active": False}


async def test_introspection_of_a_revoked_token_is_inactive(
        http: aiohttp.ClientSession, server: Server) -> None:
    access_token = await _issued(http, server)
    active = await introspect(http, server, token=access_token)
    server.licensees.revoke(active.body["jti"], active.body["exp"])
    reply = await introspect(http, server, token=access_token)
    assert reply.body == {"active": False}


@pytest.mark.parametrize("garbage", [
    "not-a-token", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "x" * 7000,
])
async def test_introspection_of_garbage_is_inactive(
        http: aiohttp.ClientSession, server: Server, garbage: str) -> None:
    reply = await introspect(http, server, token=garbage)
    assert (reply.status, reply.body) == (200, {"active": False})


async def test_introspection_of_a_token_whose_licence_was_withdrawn_is_inactive(
        http: aiohttp.ClientSession, server: Server) -> None:
    access_token = await _issued(http, server)
    server.policy = lambda: Policy(rules=(), licenses=(ARCHIVE, TRAINING))
    reply = await introspect(http, server, token=access_token)
    assert reply.body == {"active": False}


async def test_a_client_cannot_introspect_another_clients_token(
        http: aiohttp.ClientSession, server: Server) -> None:
    theirs = await _issued(http, server, "beta")
    reply = await introspect(http, server, "acme", token=theirs)
    assert reply.body == {"active": False}
    own = await introspect(http, server, "beta", token=theirs)
    assert own.body["active"] is True


async def test_introspection_needs_client_credentials_and_a_token(
        http: aiohttp.ClientSession, server: Server) -> None:
    anonymous = await call(http, "POST", server.url + "/introspect", data={"token": "x"})
    assert_oauth_error(anonymous, 401, "invalid_client")
    no_token = await introspect(http, server)
    assert_oauth_error(no_token, 400, "invalid_request")
