"""Key directories over real HTTPS on loopback, and the Web Bot Auth verifier end to end.

The directory server is an aiohttp app with a certificate from a throwaway trustme CA.
It signs its responses the way the draft's appendix describes, with signature bases
built by hand here, independently of `gatekeeper.core.httpsig`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gatekeeper.core.httpsig import SigFailure, SignedRequest
from gatekeeper.errors import StoreUnavailable
from gatekeeper.store.memory import MemoryStore
from gatekeeper.verify.keydir import MEDIA_TYPE, WELL_KNOWN_PATH, KeyDirectory
from gatekeeper.verify.webbotauth import WebBotAuthVerifier

NOW = 1_800_000_000
SIGNER = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"agent key").digest())
SECOND = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"second key").digest())
STRANGER = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"stranger").digest())
RFC9421_TEST_KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(
    "9f8362f87a484a954e6e740c5b4c0e84229139a20aa8ab56ff66586f6a7d29c5"))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _x(key: Ed25519PrivateKey) -> str:
    return _b64url(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def keyid(key: Ed25519PrivateKey) -> str:
    text = '{"crv":"Ed25519","kty":"OKP","x":"' + _x(key) + '"}'
    return _b64url(hashlib.sha256(text.encode()).digest())


def jwk(key: Ed25519PrivateKey) -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "kid": keyid(key), "x": _x(key), "use": "sig"}


def directory_response(keys: list[Ed25519PrivateKey], signers: list[Ed25519PrivateKey],
                       authority: str, created: int = NOW - 10,
                       expires: int = NOW + 86_400) -> tuple[bytes, dict[str, str]]:
    """A directory body and the headers that sign it: one proof per signer."""
    body = json.dumps({"keys": [jwk(k) for k in keys]}, separators=(",", ":")).encode()
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    inputs, signatures = [], []
    for i, key in enumerate(signers):
        params = (f'("@authority";req "content-digest");created={created};expires={expires};'
                  f'keyid="{keyid(key)}";tag="http-message-signatures-directory"')
        base = (f'"@authority";req: {authority}\n"content-digest": {digest}\n'
                f'"@signature-params": {params}')
        signature = base64.b64encode(key.sign(base.encode())).decode()
        inputs.append(f"binding{i}={params}")
        signatures.append(f"binding{i}=:{signature}:")
    headers = {"Content-Digest": digest}
    if signers:
        headers |= {"Signature-Input": ", ".join(inputs), "Signature": ", ".join(signatures)}
    return body, headers


@dataclass
class DirectoryServer:
    """What the directory serves; tests change the fields between requests."""

    origin: str = ""
    authority: str = ""
    hits: int = 0
    keys: list[Ed25519PrivateKey] = field(default_factory=lambda: [SIGNER])
    signers: list[Ed25519PrivateKey] | None = None  # None: every key signs
    signed_authority: str | None = None  # None: the server's own
    content_type: str = MEDIA_TYPE
    cache_control: str | None = None
    status: int = 200
    delay: float = 0.0
    padding: int = 0


def _directory_app(state: DirectoryServer) -> web.Application:
    async def directory(request: web.Request) -> web.Response:
        state.hits += 1
        if state.delay:
            await asyncio.sleep(state.delay)
        if state.status in (301, 302, 307):
            raise web.HTTPFound(state.origin + "/elsewhere")
        signers = state.keys if state.signers is None else state.signers
        body, headers = directory_response(state.keys, signers,
                                           state.signed_authority or state.authority)
        if state.padding:
            body = body[:-1] + b',"padding":"' + b"x" * state.padding + b'"}'
        if state.cache_control:
            headers["Cache-Control"] = state.cache_control
        return web.Response(status=state.status, body=body, headers=headers,
                            content_type=state.content_type)

    app = web.Application()
    app.router.add_get(WELL_KNOWN_PATH, directory)
    return app


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
async def server(ca: trustme.CA) -> AsyncIterator[DirectoryServer]:
    state = DirectoryServer()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    runner = web.AppRunner(_directory_app(state), access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    state.authority = f"127.0.0.1:{port}"
    state.origin = f"https://{state.authority}"
    yield state
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def directory(session: aiohttp.ClientSession, client_ssl: ssl.SSLContext) -> KeyDirectory:
    return KeyDirectory(session, ssl=client_ssl)


def _closed_port_origin() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"https://127.0.0.1:{port}"


# The key directory

async def test_signed_directory_is_fetched_and_its_keys_returned(
        server: DirectoryServer, directory: KeyDirectory) -> None:
    keys = await directory.keys_for(server.origin, NOW)
    assert set(keys) == {keyid(SIGNER)}
    raw = keys[keyid(SIGNER)].public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert raw == SIGNER.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert directory.last_error(server.origin) is None


async def test_directory_is_fetched_once_while_fresh_and_again_after_ttl(
        server: DirectoryServer, directory: KeyDirectory) -> None:
    await directory.keys_for(server.origin, NOW)
    await directory.keys_for(server.origin, NOW + 3599)
    assert server.hits == 1
    await directory.keys_for(server.origin, NOW + 3601)
    assert server.hits == 2


@pytest.mark.parametrize(("cache_control", "still_fresh", "stale"), [
    ("public, max-age=120", 119, 121),
    ("max-age=5", 59, 61),  # clamped up to 60 s
    ("max-age=999999", 3599, 3601),  # clamped down to the ttl
    ("no-store", 59, 61),
])
async def test_cache_control_max_age_sets_freshness_within_bounds(
        server: DirectoryServer, directory: KeyDirectory, cache_control: str,
        still_fresh: int, stale: int) -> None:
    server.cache_control = cache_control
    await directory.keys_for(server.origin, NOW)
    await directory.keys_for(server.origin, NOW + still_fresh)
    assert server.hits == 1
    await directory.keys_for(server.origin, NOW + stale)
    assert server.hits == 2


async def test_concurrent_lookups_share_one_fetch(
        server: DirectoryServer, directory: KeyDirectory) -> None:
    server.delay = 0.1
    results = await asyncio.gather(*(directory.keys_for(server.origin, NOW) for _ in range(5)))
    assert server.hits == 1
    assert all(set(r) == {keyid(SIGNER)} for r in results)


async def test_wrong_content_type_is_refused(
        server: DirectoryServer, directory: KeyDirectory) -> None:
    server.content_type = "application/json"
    assert await directory.keys_for(server.origin, NOW) == {}
    assert "content type" in (directory.last_error(server.origin) or "")


async def test_unsigned_directory_is_refused_by_default(
        server: DirectoryServer, directory: KeyDirectory) -> None:
    server.signers = []
    assert await directory.keys_for(server.origin, NOW) == {}
    assert "not signed" in (directory.last_error(server.origin) or "")


async def test_unsigned_directory_is_accepted_when_signatures_are_not_required(
        server: DirectoryServer, session: aiohttp.ClientSession,
        client_ssl: ssl.SSLContext) -> None:
    server.signers = []
    directory = KeyDirectory(session, ssl=client_ssl, require_signed_directory=False)
    assert set(await directory.keys_for(server.origin, NOW)) == {keyid(SIGNER)}


async def test_only_keys_that_prove_possession_are_kept(
        server: DirectoryServer, directory: KeyDirectory) -> None:
    server.keys, server.signers = [SIGNER, SECOND], [SIGNER]
    assert set(await directory.keys_for(server.origin, NOW)) == {keyid(SIGNER)}


async def test_directory_signed_for_another_authority_is_refused(
        server: DirectoryServer, directory: KeyDirectory) -> None:
    server.signed_authority = "agent.example"
    assert await directory.keys_for(server.origin, NOW) == {}
    assert "proved possession" in (directory.last_error(server.origin) or "")


async def test_proof_by_a_key_not_in_the_directory_does_not_count(
        server: DirectoryServer, directory: KeyDirectory) -> None:
    server.signers = [STRANGER]
    assert await directory.keys_for(server.origin, NOW) == {}


async def test_redirect_is_not_followed(server: DirectoryServer, directory: KeyDirectory) -> None:
    server.status = 302
    assert await directory.keys_for(server.origin, NOW) == {}
    assert server.hits == 1
    assert "HTTP 302" in (directory.last_error(server.origin) or "")


async def test_non_200_status_is_a_discovery_failure(
        server: DirectoryServer, directory: KeyDirectory) -> None:
    server.status = 203
    assert await directory.keys_for(server.origin, NOW) == {}
    assert "HTTP 203" in (directory.last_error(server.origin) or "")


async def test_oversized_directory_is_refused(
        server: DirectoryServer, directory: KeyDirectory) -> None:
    server.padding = 70 * 1024
    assert await directory.keys_for(server.origin, NOW) == {}
    assert "exceeds" in (directory.last_error(server.origin) or "")


async def test_public_rfc9421_test_key_is_dropped_from_a_fetched_directory(
        server: DirectoryServer, directory: KeyDirectory) -> None:
    server.keys = [RFC9421_TEST_KEY, SIGNER]
    assert set(await directory.keys_for(server.origin, NOW)) == {keyid(SIGNER)}


async def test_jwk_exp_and_nbf_are_respected(
        session: aiohttp.ClientSession,
        client_ssl: ssl.SSLContext) -> None:
    origin = _closed_port_origin()  # nothing to fetch: the pinned key stands alone
    pinned = {origin: [{**jwk(SIGNER), "nbf": NOW - 10, "exp": NOW + 10}]}
    directory = KeyDirectory(session, ssl=client_ssl, pinned=pinned, negative_ttl=10_000)
    assert set(await directory.keys_for(origin, NOW)) == {keyid(SIGNER)}
    assert await directory.keys_for(origin, NOW + 11) == {}
    assert await directory.keys_for(origin, NOW - 11) == {}


async def test_server_down_gives_no_keys_and_a_last_error(directory: KeyDirectory) -> None:
    origin = _closed_port_origin()
    assert await directory.keys_for(origin, NOW) == {}
    assert directory.last_error(origin)


async def test_untrusted_certificate_is_refused(
        server: DirectoryServer, session: aiohttp.ClientSession) -> None:
    directory = KeyDirectory(session)  # the system trust store does not know the test CA
    assert await directory.keys_for(server.origin, NOW) == {}
    assert "certificate" in (directory.last_error(server.origin) or "").lower()


async def test_failure_is_cached_for_the_negative_ttl(
        server: DirectoryServer, session: aiohttp.ClientSession,
        client_ssl: ssl.SSLContext) -> None:
    server.status = 500
    directory = KeyDirectory(session, ssl=client_ssl, negative_ttl=300)
    await directory.keys_for(server.origin, NOW)
    await directory.keys_for(server.origin, NOW + 299)
    assert server.hits == 1
    server.status = 200
    assert set(await directory.keys_for(server.origin, NOW + 301)) == {keyid(SIGNER)}
    assert directory.last_error(server.origin) is None


async def test_failed_refresh_keeps_serving_the_last_good_keys(
        server: DirectoryServer, directory: KeyDirectory) -> None:
    await directory.keys_for(server.origin, NOW)
    server.status = 503
    keys = await directory.keys_for(server.origin, NOW + 3601)
    assert server.hits == 2
    assert set(keys) == {keyid(SIGNER)}
    assert "HTTP 503" in (directory.last_error(server.origin) or "")


async def test_good_refresh_without_the_key_withdraws_it(
        server: DirectoryServer, directory: KeyDirectory) -> None:
    await directory.keys_for(server.origin, NOW)
    server.keys = [SECOND]
    assert set(await directory.keys_for(server.origin, NOW + 3601)) == {keyid(SECOND)}


async def test_pinned_keys_are_returned_when_the_directory_is_down(
        session: aiohttp.ClientSession, client_ssl: ssl.SSLContext) -> None:
    origin = _closed_port_origin()
    directory = KeyDirectory(session, ssl=client_ssl, pinned={origin: [jwk(SECOND)]})
    assert set(await directory.keys_for(origin, NOW)) == {keyid(SECOND)}
    assert directory.last_error(origin)


async def test_http_origin_is_never_fetched(
        server: DirectoryServer, directory: KeyDirectory) -> None:
    origin = server.origin.replace("https://", "http://")
    assert await directory.keys_for(origin, NOW) == {}
    assert server.hits == 0
    assert "https" in (directory.last_error(origin) or "")


async def test_session_factory_is_used_lazily_and_closed(
        server: DirectoryServer, client_ssl: ssl.SSLContext) -> None:
    made: list[aiohttp.ClientSession] = []

    def factory() -> aiohttp.ClientSession:
        made.append(aiohttp.ClientSession())
        return made[-1]

    directory = KeyDirectory(factory, ssl=client_ssl)
    assert made == []
    assert set(await directory.keys_for(server.origin, NOW)) == {keyid(SIGNER)}
    await directory.close()
    assert len(made) == 1
    assert made[0].closed


# The verifier end to end

AGENT_LABEL = "agent1"


def signed_request(agent: str | None, key: Ed25519PrivateKey = SIGNER, nonce: str = "bm9uY2Ux",
                   created: int = NOW - 2, path: str = "/articles/1") -> SignedRequest:
    covered = '"@method" "@authority" "@path"'
    member = ""
    if agent is not None:
        covered += f' "signature-agent";key="{AGENT_LABEL}"'
        member = f'\n"signature-agent";key="{AGENT_LABEL}": "{agent}"'
    params = (f"({covered});created={created};expires={created + 60};keyid=\"{keyid(key)}\";"
              f'alg="ed25519";nonce="{nonce}";tag="web-bot-auth"')
    base = (f'"@method": GET\n"@authority": news.example\n"@path": /articles/1{member}\n'
            f'"@signature-params": {params}')
    headers = {"Signature-Input": f"sig1={params}",
               "Signature": f"sig1=:{base64.b64encode(key.sign(base.encode())).decode()}:"}
    if agent is not None:
        headers["Signature-Agent"] = f'{AGENT_LABEL}="{agent}"'
    return SignedRequest("GET", "https", "news.example", path, "", headers)


@pytest.fixture
def verifier(directory: KeyDirectory) -> WebBotAuthVerifier:
    return WebBotAuthVerifier(directory, MemoryStore())


async def test_valid_request_verifies_and_its_nonce_cannot_be_replayed(
        server: DirectoryServer, verifier: WebBotAuthVerifier) -> None:
    request = signed_request(server.origin)
    first = await verifier.verify(request, [server.origin], NOW)
    assert first.ok, first
    assert (first.agent, first.keyid) == (server.origin, keyid(SIGNER))
    again = await verifier.verify(request, [server.origin], NOW + 1)
    assert again.reason is SigFailure.REPLAYED
    other_nonce = await verifier.verify(signed_request(server.origin, nonce="bm9uY2Uy"),
                                        [server.origin], NOW + 1)
    assert other_nonce.ok


async def test_agent_not_allowed_is_unknown_key_and_never_fetched(
        server: DirectoryServer, verifier: WebBotAuthVerifier) -> None:
    result = await verifier.verify(signed_request(server.origin), ["https://chatgpt.com"], NOW)
    assert result.reason is SigFailure.UNKNOWN_KEY
    assert server.hits == 0


async def test_request_failing_a_local_check_is_never_fetched_for(
        server: DirectoryServer, verifier: WebBotAuthVerifier) -> None:
    stale = signed_request(server.origin, created=NOW - 1000)
    assert (await verifier.verify(stale, [server.origin], NOW)).reason is SigFailure.EXPIRED
    assert server.hits == 0


async def test_key_missing_from_a_good_directory_is_unknown_key(
        server: DirectoryServer, verifier: WebBotAuthVerifier) -> None:
    result = await verifier.verify(signed_request(server.origin, key=STRANGER),
                                   [server.origin], NOW)
    assert result.reason is SigFailure.UNKNOWN_KEY


async def test_directory_down_is_a_directory_error(verifier: WebBotAuthVerifier) -> None:
    origin = _closed_port_origin()
    result = await verifier.verify(signed_request(origin), [origin], NOW)
    assert result.reason is SigFailure.DIRECTORY_ERROR
    assert result.detail


async def test_tampered_request_is_a_bad_signature(
        server: DirectoryServer, verifier: WebBotAuthVerifier) -> None:
    result = await verifier.verify(signed_request(server.origin, path="/admin"),
                                   [server.origin], NOW)
    assert result.reason is SigFailure.BAD_SIGNATURE


async def test_request_without_signature_agent_is_found_in_an_allowed_directory(
        server: DirectoryServer, verifier: WebBotAuthVerifier) -> None:
    result = await verifier.verify(signed_request(None), [server.origin], NOW)
    assert result.ok, result
    assert result.agent == server.origin


async def test_unsigned_request_is_missing(verifier: WebBotAuthVerifier) -> None:
    request = SignedRequest("GET", "https", "news.example", "/", "", {"User-Agent": "x"})
    assert (await verifier.verify(request, [], NOW)).reason is SigFailure.MISSING


class _DownStore:
    async def first_seen(self, key: str, ttl: float, now: float) -> bool:
        raise StoreUnavailable("store timed out")


async def test_replay_store_outage_does_not_fail_a_valid_signature(
        server: DirectoryServer, directory: KeyDirectory) -> None:
    verifier = WebBotAuthVerifier(directory, _DownStore())
    assert (await verifier.verify(signed_request(server.origin), [server.origin], NOW)).ok
