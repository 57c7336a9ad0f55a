"""The keyring: key files, rotation, retirement, the JWKS, and the errors operators see."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from gatekeeper.core.httpsig import jwk_thumbprint
from gatekeeper.licensing.keys import Keyring, KeyringError
from gatekeeper.licensing.tokens import (
    LicenseClaims,
    TokenFailure,
    TokenRejected,
    TokenVerifier,
    VerifiedToken,
    issue_token,
)

T0 = 1_800_000_000.0
DAY = 86400.0
HOST = "news.example"


def claims(token_id: str, at: float) -> LicenseClaims:
    return LicenseClaims(
        issuer="https://news.example", audience=(HOST,), subject="acme-ai",
        crawler="GPTBot", crawler_key=None, license="ai-train-standard",
        usages=("ai-train",), paths=(), not_before=at, expires=at + 30 * DAY,
        token_id=token_id,
    )


def verifier(keyring: Keyring) -> TokenVerifier:
    # Reads the keyring at each call, as the wiring does after a reload.
    return TokenVerifier(keyring.public_keys, issuer="https://news.example", audience=[HOST])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# Generating and loading


def test_generate_writes_a_private_pem_and_its_metadata(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    kid = Keyring.generate(directory, now=T0)
    assert sorted(p.name for p in directory.iterdir()) == [f"{kid}.json", f"{kid}.pem"]
    assert mode(directory) == 0o700
    assert mode(directory / f"{kid}.pem") == 0o600
    assert (directory / f"{kid}.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert json.loads((directory / f"{kid}.json").read_text()) == {
        "kid": kid, "created": T0, "activates": T0, "retired": None}


def test_the_private_key_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        kid = Keyring.generate(tmp_path, now=T0)
    finally:
        os.umask(previous)
    assert mode(tmp_path / f"{kid}.pem") == 0o600


def test_the_key_id_is_the_rfc7638_thumbprint_of_the_public_key(tmp_path: Path) -> None:
    kid = Keyring.generate(tmp_path, now=T0)
    signing = Keyring.load(tmp_path).active_signing_key(T0)
    raw = signing.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert signing.kid == kid == jwk_thumbprint({"kty": "OKP", "crv": "Ed25519", "x": x})


def test_a_loaded_key_signs_tokens_its_public_key_verifies(tmp_path: Path) -> None:
    Keyring.generate(tmp_path, now=T0)
    keyring = Keyring.load(tmp_path)
    token = issue_token(claims("t1", T0), keyring.active_signing_key(T0))
    assert isinstance(verifier(keyring).verify(token, HOST, T0 + 1), VerifiedToken)


def test_the_signing_key_never_shows_in_its_repr(tmp_path: Path) -> None:
    Keyring.generate(tmp_path, now=T0)
    assert "private_key" not in repr(Keyring.load(tmp_path).active_signing_key(T0))


# Rotation


def test_tokens_of_the_old_key_still_verify_after_a_new_key_takes_over(tmp_path: Path) -> None:
    old = Keyring.generate(tmp_path, now=T0)
    old_token = issue_token(claims("t1", T0), Keyring.load(tmp_path).active_signing_key(T0))
    new = Keyring.generate(tmp_path, now=T0 + DAY)
    keyring = Keyring.load(tmp_path)
    signer = keyring.active_signing_key(T0 + DAY)
    assert signer.kid == new != old
    new_token = issue_token(claims("t2", T0 + DAY), signer)
    check = verifier(keyring)
    for token in (old_token, new_token):
        assert isinstance(check.verify(token, HOST, T0 + DAY + 1), VerifiedToken)
    assert set(keyring.public_keys()) == {old, new}


def test_a_key_with_an_activation_delay_signs_only_from_then(tmp_path: Path) -> None:
    old = Keyring.generate(tmp_path, now=T0)
    new = Keyring.generate(tmp_path, now=T0 + DAY, activate_after=600)
    keyring = Keyring.load(tmp_path)
    assert keyring.active_signing_key(T0 + DAY + 599).kid == old
    assert keyring.active_signing_key(T0 + DAY + 600).kid == new
    # Published, and verifying, before it signs: that is what the delay is for.
    assert new in keyring.public_keys()


def test_a_retired_key_stops_signing_but_verifies_until_removed(tmp_path: Path) -> None:
    old = Keyring.generate(tmp_path, now=T0)
    new = Keyring.generate(tmp_path, now=T0 + DAY)
    keyring = Keyring.load(tmp_path)
    token = issue_token(claims("t1", T0 + DAY), keyring.active_signing_key(T0 + DAY))
    keyring.retire(new, now=T0 + 2 * DAY)
    assert keyring.active_signing_key(T0 + 2 * DAY).kid == old
    assert isinstance(verifier(keyring).verify(token, HOST, T0 + 2 * DAY), VerifiedToken)

    reloaded = Keyring.load(tmp_path)  # retirement is written to the directory
    assert reloaded.active_signing_key(T0 + 2 * DAY).kid == old
    reloaded.remove(new)
    assert not (tmp_path / f"{new}.pem").exists()
    assert not (tmp_path / f"{new}.json").exists()
    for keyring_now in (reloaded, Keyring.load(tmp_path)):
        result = verifier(keyring_now).verify(token, HOST, T0 + 2 * DAY)
        assert isinstance(result, TokenRejected)
        assert result.reason is TokenFailure.UNKNOWN_KEY


def test_a_key_that_still_signs_cannot_be_removed(tmp_path: Path) -> None:
    kid = Keyring.generate(tmp_path, now=T0)
    with pytest.raises(KeyringError, match="retire it"):
        Keyring.load(tmp_path).remove(kid)
    assert (tmp_path / f"{kid}.pem").exists()


def test_retiring_an_unknown_key_names_it(tmp_path: Path) -> None:
    Keyring.generate(tmp_path, now=T0)
    with pytest.raises(KeyringError, match="no key 'nope'"):
        Keyring.load(tmp_path).retire("nope")


def test_describe_lists_the_keys_newest_first(tmp_path: Path) -> None:
    old = Keyring.generate(tmp_path, now=T0)
    new = Keyring.generate(tmp_path, now=T0 + DAY)
    keyring = Keyring.load(tmp_path)
    keyring.retire(old, now=T0 + 2 * DAY)
    assert [(i.kid, i.retired) for i in keyring.describe()] == [(new, None),
                                                               (old, T0 + 2 * DAY)]


# The JWKS


def test_the_jwks_publishes_every_verifying_key_and_no_secret(tmp_path: Path) -> None:
    old = Keyring.generate(tmp_path, now=T0)
    new = Keyring.generate(tmp_path, now=T0 + DAY)
    keyring = Keyring.load(tmp_path)
    keyring.retire(old, now=T0 + 2 * DAY)
    jwks = keyring.jwks()
    assert list(jwks) == ["keys"]
    assert [jwk["kid"] for jwk in jwks["keys"]] == [new, old]
    for jwk in jwks["keys"]:
        assert set(jwk) == {"kty", "crv", "x", "kid", "use", "alg"}
        assert (jwk["kty"], jwk["crv"], jwk["use"], jwk["alg"]) == (
            "OKP", "Ed25519", "sig", "EdDSA")
        assert jwk["kid"] == jwk_thumbprint(jwk)
        raw = keyring.public_keys()[jwk["kid"]].public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert base64.urlsafe_b64decode(jwk["x"] + "=") == raw
    json.dumps(jwks)  # serialisable as is


# What operators are told


def test_a_missing_directory_says_how_to_create_a_key(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match=r"not found.*gatekeeper keys generate"):
        Keyring.load(tmp_path / "absent")


def test_a_file_in_place_of_the_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("")
    with pytest.raises(KeyringError, match="not a directory"):
        Keyring.load(tmp_path / "keys")


def test_an_unreadable_key_file_is_reported_by_name(tmp_path: Path) -> None:
    # A directory where a key file should be: unreadable for every user, root included
    # (file permissions would not stop root, so they cannot make this case).
    kid = Keyring.generate(tmp_path, now=T0)
    (tmp_path / f"{kid}.pem").unlink()
    (tmp_path / f"{kid}.pem").mkdir(mode=0o700)
    with pytest.raises(KeyringError, match=rf"{kid}\.pem: cannot read"):
        Keyring.load(tmp_path)


def test_an_empty_directory_has_no_signer_and_says_what_to_run(tmp_path: Path) -> None:
    keyring = Keyring.load(tmp_path)
    assert keyring.public_keys() == {}
    with pytest.raises(KeyringError, match=r"no active signing key.*gatekeeper keys generate"):
        keyring.active_signing_key(T0)


def test_when_every_key_is_retired_nothing_signs(tmp_path: Path) -> None:
    kid = Keyring.generate(tmp_path, now=T0)
    keyring = Keyring.load(tmp_path)
    keyring.retire(kid, now=T0 + 1)
    with pytest.raises(KeyringError, match="no active signing key"):
        keyring.active_signing_key(T0 + 2)


def _write_pem(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


@pytest.mark.parametrize(("content", "message"), [
    (b"not a key\n", "not an unencrypted PEM private key"),
    (Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pw")),
     "not an unencrypted PEM private key"),
    (generate_private_key(SECP256R1()).private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()), "not an Ed25519 key"),
])
def test_a_pem_that_is_no_usable_key_is_named(tmp_path: Path, content: bytes,
                                              message: str) -> None:
    kid = Keyring.generate(tmp_path, now=T0)
    _write_pem(tmp_path / f"{kid}.pem", content)
    with pytest.raises(KeyringError, match=message) as error:
        Keyring.load(tmp_path)
    assert f"{kid}.pem" in str(error.value)


def test_a_key_file_renamed_onto_another_key_id_is_refused(tmp_path: Path) -> None:
    one = Keyring.generate(tmp_path, now=T0)
    two = Keyring.generate(tmp_path, now=T0 + 1)
    (tmp_path / f"{two}.pem").replace(tmp_path / f"{one}.pem")
    (tmp_path / f"{two}.json").unlink()
    with pytest.raises(KeyringError, match="not this key's thumbprint"):
        Keyring.load(tmp_path)


def test_a_private_key_others_can_read_is_refused(tmp_path: Path) -> None:
    kid = Keyring.generate(tmp_path, now=T0)
    (tmp_path / f"{kid}.pem").chmod(0o644)
    with pytest.raises(KeyringError, match="chmod 600"):
        Keyring.load(tmp_path)


def test_a_key_without_metadata_is_named(tmp_path: Path) -> None:
    kid = Keyring.generate(tmp_path, now=T0)
    (tmp_path / f"{kid}.json").unlink()
    with pytest.raises(KeyringError, match=f"{kid}.json: missing"):
        Keyring.load(tmp_path)


def test_metadata_without_its_key_is_named(tmp_path: Path) -> None:
    kid = Keyring.generate(tmp_path, now=T0)
    (tmp_path / f"{kid}.pem").unlink()
    with pytest.raises(KeyringError, match=f"no {kid}.pem"):
        Keyring.load(tmp_path)


@pytest.mark.parametrize(("metadata", "message"), [
    ("{", "not JSON"),
    ('{"kid": "other", "created": 1}', "expected an object"),
    ('{"kid": "KID", "created": "yesterday"}', "'created' must be a number"),
    ('{"kid": "KID", "created": 1, "retired": true}', "'retired' must be a number"),
])
def test_bad_metadata_is_named(tmp_path: Path, metadata: str, message: str) -> None:
    kid = Keyring.generate(tmp_path, now=T0)
    (tmp_path / f"{kid}.json").write_text(metadata.replace("KID", kid))
    with pytest.raises(KeyringError, match=message):
        Keyring.load(tmp_path)


def test_leftover_temporary_files_are_ignored(tmp_path: Path) -> None:
    kid = Keyring.generate(tmp_path, now=T0)
    (tmp_path / f".{kid}.json.tmp").write_text("{")
    (tmp_path / "README").write_text("keys for news.example")
    assert list(Keyring.load(tmp_path).public_keys()) == [kid]


def test_a_negative_activation_delay_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="activate_after"):
        Keyring.generate(tmp_path, activate_after=-1)


def test_reload_rotates_in_place_for_everyone_holding_the_keyring(tmp_path: Path) -> None:
    old = Keyring.generate(tmp_path, now=T0)
    keyring = Keyring.load(tmp_path)
    public_keys = keyring.public_keys  # what a verifier holds
    new = Keyring.generate(tmp_path, now=T0 + 10)
    assert set(public_keys()) == {old}
    keyring.reload()
    assert set(public_keys()) == {old, new}
    assert keyring.active_signing_key(T0 + 20).kid == new


def test_a_failed_reload_keeps_the_keys_it_had(tmp_path: Path) -> None:
    kid = Keyring.generate(tmp_path, now=T0)
    keyring = Keyring.load(tmp_path)
    (tmp_path / "stray.json").write_text("{}")  # metadata without its key
    with pytest.raises(KeyringError, match="stray"):
        keyring.reload()
    assert set(keyring.public_keys()) == {kid}
