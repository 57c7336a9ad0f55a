"""B10-B12: licence tokens, tampered, replayed, shared, revoked and rotated, and the
endpoint that issues them.

A gate of this module's own holds a signing key and two registered licensees in its
state directory: `acme` (GPTBot) and `claude-co` (ClaudeBot). Tokens come from its
token endpoint as a vendor gets them; tampered ones are made from those, or signed
with the site's key where only the claims differ (as a thief of nothing but tokens
could not). GPTBot asks from its published range, so it is verified and only the
token decides. Key rotation and revocation use the operator's commands.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatekeeper.licensing.keys import Keyring
from gatekeeper.licensing.licensees import Licensees
from gatekeeper.licensing.tokens import LicenseClaims, SigningKey, issue_token
from tests.adversarial.conftest import Origin
from tests.integration.conftest import GPTBOT
from tests.support.gate_process import GateProcess
from tests.support.raw_http import IN_RANGE, Reply, exchange, request

TOKEN_PATH = "/.well-known/gatekeeper/token"
POLICY = """
version: 1
default: allow
licenses:
  - name: articles
    usages: [ai-train, ai-input]
  - name: metered
    usages: [ai-train]
    limits: {requests: 10, per: day}
rules:
  - name: block-spoofed-crawlers
    match: {identities: [spoofed]}
    action: block
  - name: metered-needs-a-licence
    match: {paths: ["/metered/**"]}
    action: {require_license: {any_of: [metered]}}
  - name: articles-need-a-licence
    match: {paths: ["/articles/**"], purposes: [ai-training, ai-search, ai-assistant]}
    action: {require_license: {any_of: [articles]}}
"""


@dataclass
class Site:
    gate: GateProcess
    state: Path
    secrets: dict[str, str]

    def cli(self, *args: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
        env["GATEKEEPER_STATE_DIR"] = str(self.state)
        done = subprocess.run([sys.executable, "-m", "gatekeeper", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def site(shared_origin: Origin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("gate")
    state = workdir / "state"
    Keyring.generate(state / "keys")
    registry = Licensees(state / "licensees.json")
    found = {"acme": registry.add("acme", "Acme AI", "GPTBot", ["articles", "metered"]),
             "claude-co": registry.add("claude-co", "Claude Co", "ClaudeBot", ["articles"])}
    process = GateProcess(workdir, shared_origin.faults.url, POLICY)
    process.start()
    yield Site(process, state, found)
    process.stop()


async def obtain(site: Site, licensee: str, resource: str = "http://t/articles/x",
                 source: str = "127.0.2.1", license: str = "articles") -> str:
    form = {"grant_type": "client_credentials", "resource": resource, "license": license}
    reply = await token_request(site, form, licensee, site.secrets[licensee], source)
    assert reply.status == 200, reply.raw[-400:]
    token: str = json.loads(reply.responses[0].body)["access_token"]
    return token


async def token_request(site: Site, form: dict[str, str], client: str, secret: str,
                        source: str, extra: tuple[tuple[str, str], ...] = ()) -> Reply:
    basic = base64.b64encode(f"{client}:{secret}".encode()).decode()
    return await exchange(site.gate.port, request("POST", TOKEN_PATH, [
        ("Authorization", f"Basic {basic}"),
        ("Content-Type", "application/x-www-form-urlencoded"), *extra,
        ("Connection", "close")], urlencode(form).encode()), source=source)


async def fetch(site: Site, path: str, token: str | None = None, *, scheme: str = "License",
                source: str = IN_RANGE, user_agent: str = GPTBOT) -> Reply:
    headers = [("User-Agent", user_agent), ("Connection", "close")]
    if token is not None:
        headers.append(("Authorization", f"{scheme} {token}"))
    return await exchange(site.gate.port, request("GET", path, headers), source=source)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims_of(token: str) -> dict[str, object]:
    return json.loads(unb64(token.split(".")[1]))  # type: ignore[no-any-return]


def signed(site: Site, **changes: object) -> str:
    """A token signed with the site's own key, with claims other than the server's."""
    now = time.time()
    values: dict[str, object] = {
        "issuer": "https://t", "audience": ("t",), "subject": "acme", "crawler": "GPTBot",
        "crawler_key": None, "license": "articles", "usages": ("ai-train",), "paths": (),
        "not_before": now - 60, "expires": now + 3600, "token_id": secrets.token_urlsafe(12)}
    values.update(changes)
    key = Keyring.load(site.state / "keys").active_signing_key()
    return issue_token(LicenseClaims(**values), key)  # type: ignore[arg-type]


def flip(segment: str, byte: int) -> str:
    data = bytearray(unb64(segment))
    data[byte] ^= 0x01
    return b64(bytes(data))


def forged(valid: str, site: Site) -> dict[str, str]:
    """The tampered and forged tokens of B10 (e)-(h), each from a valid one."""
    head, payload, signature = valid.split(".")
    header = json.loads(unb64(head))
    body = unb64(payload)
    at = body.index(b'"sub":"acme"') + len(b'"sub":"')  # "acme" -> "`cme": still JSON
    public = Keyring.load(site.state / "keys").public_keys()[header["kid"]]
    pem = public.public_bytes(serialization.Encoding.PEM,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_head = b64(json.dumps({"alg": "HS256", "kid": header["kid"], "typ": "JWT"}).encode())
    hs_mac = hmac.new(pem, f"{hs_head}.{payload}".encode(), hashlib.sha256).digest()
    stranger = Ed25519PrivateKey.generate()
    none_head = b64(json.dumps({"alg": "none", "kid": header["kid"], "typ": "JWT"}).encode())
    return {
        "payload_bit": f"{head}.{flip(payload, at)}.{signature}",
        "signature_bit": f"{head}.{payload}.{flip(signature, 0)}",
        "alg_none": f"{none_head}.{payload}.",
        "hs256_with_the_public_key": f"{hs_head}.{payload}.{b64(hs_mac)}",
        "unknown_kid": issue_token_as(valid, SigningKey("A" * 43, stranger)),
        "known_kid_other_key": issue_token_as(valid, SigningKey(header["kid"], stranger)),
    }


def issue_token_as(valid: str, key: SigningKey) -> str:
    c = claims_of(valid)
    return issue_token(LicenseClaims(
        issuer=str(c["iss"]), audience=tuple(c["aud"]), subject=str(c["sub"]),  # type: ignore[arg-type]
        crawler=str(c["crawler"]), crawler_key=None, license=str(c["license"]),
        usages=tuple(c["usages"]), paths=(), not_before=float(c["nbf"]),  # type: ignore[arg-type]
        expires=float(c["exp"]), token_id=str(c["jti"])), key)  # type: ignore[arg-type]


async def checks(site: Site) -> Counter[tuple[str, str]]:
    found = await site.gate.metrics()
    return Counter({(dict(labels)["result"], dict(labels)["reason"]): int(value)
                    for (name, labels), value in found.items()
                    if name == "gatekeeper_license_checks_total"})


# -- B10 ------------------------------------------------------------------------------


async def test_b10_only_an_untampered_token_for_this_site_and_crawler_is_accepted(
    site: Site, origin: Origin
) -> None:
    valid = await obtain(site, "acme")
    now = time.time()
    tokens = {
        "expired": (signed(site, not_before=now - 7200, expires=now - 3600), 401,
                    ("invalid", "expired")),
        "not_yet_valid": (signed(site, not_before=now + 3600, expires=now + 7200), 401,
                          ("invalid", "not-yet-valid")),
        "other_site": (signed(site, audience=("site-b.test",)), 401,
                       ("invalid", "wrong-audience")),
        "unknown_licensee": (signed(site, subject="ghost"), 401, ("invalid", "revoked")),
        "another_crawlers_token": (await obtain(site, "claude-co"), 403,
                                   ("insufficient", "wrong-crawler")),
    }
    expected = {"payload_bit": "bad-signature", "signature_bit": "bad-signature",
                "alg_none": "wrong-alg", "hs256_with_the_public_key": "wrong-alg",
                "unknown_kid": "unknown-key", "known_kid_other_key": "bad-signature"}
    for name, token in forged(valid, site).items():
        tokens[name] = (token, 401, ("invalid", expected[name]))
    before = await checks(site)
    for name, (token, status, _) in tokens.items():
        reply = await fetch(site, f"/articles/b10-{name}", token)
        assert reply.status == status, name
        answer = json.loads(reply.responses[0].body)
        assert answer["token_error"] == tokens[name][2][1], name
        error = "invalid_token" if status == 401 else "insufficient_scope"
        assert f'error="{error}"' in (reply.responses[0].header("WWW-Authenticate") or ""), name
    # (i) In the query string a token is not read at all: as if none were sent.
    in_query = await fetch(site, f"/articles/b10-query?access_token={valid}&token={valid}")
    assert in_query.status == 401
    assert json.loads(in_query.responses[0].body)["token_error"] is None
    assert origin.upstream.client_bytes() == b""
    assert await checks(site) - before == Counter(reason for _, _, reason in tokens.values())
    # (j) Valid, in the header (both schemes): forwarded without the credential.
    for scheme in ("License", "Bearer"):
        assert (await fetch(site, f"/articles/b10-{scheme}", valid, scheme=scheme)).status == 200
    received = origin.upstream.requests()
    assert sorted(r.target for r in received) == ["/articles/b10-Bearer", "/articles/b10-License"]
    assert all(r.header("Authorization") is None for r in received)
    assert valid.split(".")[2].encode() not in origin.upstream.client_bytes()
    # Nothing of any token in the log, the query string's included.
    lines = await site.gate.wait_flushed(
        lambda es: {"/articles/b10-query", "/articles/b10-Bearer"} <= {e["path"] for e in es})
    assert next(e for e in lines if e["path"] == "/articles/b10-query")["has_query"] is True
    log = site.gate.log_file.read_text()
    for token in [valid, *(t for t, _, _ in tokens.values())]:
        assert token.split(".")[1][:40] not in log


# -- B11 ------------------------------------------------------------------------------


async def test_b11_a_token_is_metered_per_licensee_and_refused_past_its_limit(
    site: Site, origin: Origin
) -> None:
    token = await obtain(site, "acme", "http://t/metered/x", license="metered")
    statuses, retry = [], None
    for n in range(12):
        reply = await fetch(site, f"/metered/{n}", token)
        statuses.append(reply.status)
        retry = reply.responses[0].header("Retry-After") or retry
    assert statuses == [200] * 10 + [429] * 2  # limits: {requests: 10, per: day}
    assert retry is not None
    assert 0 < int(retry) <= 86400
    assert len(origin.upstream.requests()) == 10


async def test_b11_a_token_shared_with_other_networks_is_refused_by_its_crawler_binding(
    site: Site, origin: Origin
) -> None:
    # The token is GPTBot's, and GPTBot is verified only from its published range:
    # from 20 other /24 networks the same token comes with a spoofed identity.
    token = await obtain(site, "acme")
    for n in range(20):
        reply = await fetch(site, f"/articles/b11-shared-{n}", token, source=f"127.0.{40 + n}.7")
        assert reply.status == 403
        assert json.loads(reply.responses[0].body)["rule"] == "block-spoofed-crawlers"
    # Presented by another crawler, from anywhere, it grants nothing either.
    claude = "Mozilla/5.0 (compatible; ClaudeBot/1.0; +claudebot@anthropic.com)"
    other = await fetch(site, "/articles/b11-other-crawler", token, source="127.0.60.7",
                        user_agent=claude)
    assert other.status == 403
    assert origin.upstream.client_bytes() == b""


async def test_b11_a_revoked_token_is_refused_at_its_next_use(site: Site, origin: Origin) -> None:
    token = await obtain(site, "acme")
    assert (await fetch(site, "/articles/b11-before-revoke", token)).status == 200
    site.cli("token", "revoke", str(claims_of(token)["jti"]))
    reply = await fetch(site, "/articles/b11-after-revoke", token)
    assert reply.status == 401
    assert json.loads(reply.responses[0].body)["token_error"] == "revoked"
    assert [r.target for r in origin.upstream.requests()] == ["/articles/b11-before-revoke"]


async def test_b11_tokens_of_a_rotated_key_verify_until_its_files_are_deleted(
    site: Site, origin: Origin
) -> None:
    old = await obtain(site, "acme")
    old_kid = json.loads(unb64(old.split(".")[0]))["kid"]
    keys = site.state / "keys"
    Keyring.generate(keys)  # what `gatekeeper keys generate` does
    await site.gate.reload(POLICY)  # SIGHUP reloads the keys with the policy
    new = await obtain(site, "acme")
    assert json.loads(unb64(new.split(".")[0]))["kid"] != old_kid
    Keyring.load(keys).retire(old_kid)  # `gatekeeper keys retire`
    await site.gate.reload(POLICY)
    assert [(await fetch(site, f"/articles/b11-rotated-{n}", t)).status
            for n, t in enumerate((old, new))] == [200, 200]
    # Withdrawn: the old key's files deleted, then SIGHUP.
    for suffix in (".pem", ".json"):
        (keys / f"{old_kid}{suffix}").unlink()
    await site.gate.reload(POLICY)
    refused = await fetch(site, "/articles/b11-withdrawn", old)
    assert refused.status == 401
    assert json.loads(refused.responses[0].body)["token_error"] == "unknown-key"
    assert (await fetch(site, "/articles/b11-still-good", new)).status == 200
    assert sorted(r.target for r in origin.upstream.requests()) == [
        "/articles/b11-rotated-0", "/articles/b11-rotated-1", "/articles/b11-still-good"]


# -- B12 ------------------------------------------------------------------------------


async def test_b12_the_token_endpoint_never_redirects_limits_bursts_and_bodies(
    site: Site, origin: Origin
) -> None:
    secret = site.secrets["acme"]
    # (a) Redirect parameters are not read; the answer is the token, never a 3xx.
    reply = await token_request(site, {
        "grant_type": "client_credentials", "resource": "http://t/articles/x",
        "redirect_uri": "//evil.test", "redirect": "javascript:alert(1)",
        "next": "https://evil.test/"}, "acme", secret, "127.0.3.1")
    answers = [reply]
    answers.append(await exchange(site.gate.port, request(
        "GET", TOKEN_PATH + "?redirect_uri=//evil.test&redirect=javascript:alert(1)",
        [("Connection", "close")]), source="127.0.3.1"))
    assert [r.status for r in answers] == [200, 405]
    # (c) A 5 MiB body: 413 from the head's length, the body never read.
    big = await exchange(site.gate.port, request("POST", TOKEN_PATH, [
        ("Content-Type", "application/x-www-form-urlencoded"), ("Connection", "close")],
        b"a=" + b"x" * (5 * 1024 * 1024 - 2)), source="127.0.3.2")
    assert big.status == 413
    answers.append(big)
    # (d) Wrong credentials: the same 401 for a known and an unknown client id.
    form = {"grant_type": "client_credentials", "resource": "http://t/articles/x"}
    wrong = [await token_request(site, form, client, "gks_wrong", "127.0.3.3")
             for client in ("acme", "nobody")]
    assert [r.status for r in wrong] == [401, 401]
    assert wrong[0].responses[0].body == wrong[1].responses[0].body
    # (b) A burst from one address: a burst of 20 is served (here refused for lack of
    # credentials, which costs no secret check), then 429 with Retry-After.
    burst = [await exchange(site.gate.port, request("POST", TOKEN_PATH, [
        ("Content-Type", "application/x-www-form-urlencoded"), ("Connection", "close")],
        urlencode(form).encode()), source="127.0.3.4") for _ in range(30)]
    statuses = Counter(r.status for r in burst)
    assert set(statuses) == {401, 429}
    assert 18 <= statuses[401] <= 22  # a burst of 20, then one a second
    assert statuses[429] >= 8
    assert all(r.responses[0].header("Retry-After") for r in burst if r.status == 429)
    assert all(r.responses[0].header("WWW-Authenticate") for r in [*wrong, *burst]
               if r.status == 401)
    answers += [*wrong, *burst]
    for r in answers:
        assert not 300 <= r.status < 400
        assert r.responses[0].header("Location") is None
        for leak in (b"evil", b"Traceback", b'File "'):
            assert leak not in r.raw
        if r.status != 200:
            assert set(json.loads(r.responses[0].body)) == {"error", "error_description"}
    assert not [e for e in site.gate.events() if e.get("event") == "licence_server_error"]
    assert origin.upstream.client_bytes() == b""
