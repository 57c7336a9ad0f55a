"""The site's licence-token keys: Ed25519 key pairs kept in one directory.

Each key is two files named by its key id:

- `<kid>.pem`: the private key, PKCS#8 PEM, unencrypted, mode 0600. A file that group
  or others may read is refused, as OpenSSH refuses a readable private key.
- `<kid>.json`: `{"kid", "created", "activates", "retired"}`, epoch seconds (`retired`
  is null while the key is in use).

The key id is the RFC 7638 thumbprint of the public JWK (SHA-256, base64url, 43
characters): derived from the key itself, so a file cannot be renamed onto another key
unnoticed, it is a safe file name, and it is how Web Bot Auth names keys too.

Rotation without downtime: every key in the directory verifies; the newest key that is
active (its `activates` time has come) and not retired signs. A new key can be given an
activation delay so every replica loads it before any token signed with it is presented.
A retired key signs nothing but still verifies the tokens it signed until it is removed.
"""

from __future__ import annotations

import base64
import json
import math
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from gatekeeper.core.httpsig import jwk_thumbprint
from gatekeeper.errors import GatekeeperError
from gatekeeper.files import write_atomically
from gatekeeper.licensing.tokens import ALGORITHM, SigningKey

__all__ = ["KeyInfo", "Keyring", "KeyringError", "SigningKey", "public_jwk"]

PRIVATE_MODE: Final = 0o600
METADATA_MODE: Final = 0o644
DIRECTORY_MODE: Final = 0o700
GENERATE_HINT: Final = "run `gatekeeper keys generate`"


class KeyringError(GatekeeperError):
    """The key directory or one of its files cannot be used; names the path and the fix."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One key's public facts, for listing."""

    kid: str
    created: float
    activates: float
    retired: float | None


@dataclass(frozen=True, slots=True)
class _Key:
    info: KeyInfo
    private_key: Ed25519PrivateKey
    public_key: Ed25519PublicKey


def public_jwk(key: Ed25519PublicKey) -> dict[str, str]:
    """The RFC 8037 public JWK of `key`, with its thumbprint as `kid`."""
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
    return {**jwk, "kid": jwk_thumbprint(jwk), "use": "sig", "alg": ALGORITHM}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Keyring:
    """The keys loaded from one directory. `load` reads it; changes write it back."""

    def __init__(self, directory: Path, keys: Mapping[str, _Key]) -> None:
        self._directory = directory
        self._keys = dict(keys)
        self._public = {kid: key.public_key for kid, key in self._keys.items()}

    @property
    def directory(self) -> Path:
        return self._directory

    def reload(self) -> None:
        """Read the directory again, in place: everyone holding this keyring (the
        verifier, the licence server) signs and verifies with the new set at once.
        On an error the current keys stay and the error is raised."""
        fresh = Keyring.load(self._directory)
        self._keys = fresh._keys
        self._public = fresh._public

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Keyring:
        path = Path(directory)
        try:
            names = sorted(entry.name for entry in os.scandir(path))
        except FileNotFoundError:
            raise KeyringError(f"{path}: key directory not found; {GENERATE_HINT}") from None
        except NotADirectoryError:
            raise KeyringError(f"{path}: not a directory") from None
        except OSError as exc:
            raise KeyringError(f"{path}: cannot read the key directory: "
                               f"{exc.strerror or exc}") from None
        # Dot files are this module's temporary files (or an editor's), never keys.
        visible = [name for name in names if not name.startswith(".")]
        pems = {name[:-4] for name in visible if name.endswith(".pem")}
        orphans = sorted({name[:-5] for name in visible if name.endswith(".json")} - pems)
        if orphans:
            raise KeyringError(f"{path / (orphans[0] + '.json')}: no {orphans[0]}.pem "
                               "beside it; remove the file if the key was deleted")
        return cls(path, {kid: _read_key(path, kid) for kid in sorted(pems)})

    @classmethod
    def generate(cls, directory: str | os.PathLike[str], *, now: float | None = None,
                 activate_after: float = 0.0) -> str:
        """Create a key in `directory` (made 0700 if missing); return its key id.

        The key signs from `now + activate_after`: with a delay, replicas that verify
        load it before any token signed with it reaches them.
        """
        if not (math.isfinite(activate_after) and activate_after >= 0):
            raise KeyringError(f"activate_after must be zero or more seconds, "
                               f"not {activate_after!r}")
        path = Path(directory)
        created = time.time() if now is None else now
        private_key = Ed25519PrivateKey.generate()
        kid = public_jwk(private_key.public_key())["kid"]
        pem = private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        info = KeyInfo(kid, created, created + activate_after, None)
        try:
            path.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
            # Key first: a crash in between leaves a key without metadata, which `load`
            # reports by name, never metadata that claims a key exists.
            _write(path / f"{kid}.pem", pem, PRIVATE_MODE)
            _write(path / f"{kid}.json", _metadata(info), METADATA_MODE)
        except OSError as exc:
            raise KeyringError(f"{path}: cannot write a new key: "
                               f"{exc.strerror or exc}") from None
        return kid

    def active_signing_key(self, now: float | None = None) -> SigningKey:
        """The newest active, unretired key: the one new tokens are signed with."""
        moment = time.time() if now is None else now
        usable = [key for key in self._keys.values()
                  if key.info.retired is None and key.info.activates <= moment]
        if not usable:
            raise KeyringError(f"{self._directory}: no active signing key; {GENERATE_HINT}")
        newest = max(usable, key=lambda key: (key.info.activates, key.info.created,
                                              key.info.kid))
        return SigningKey(newest.info.kid, newest.private_key)

    def retire(self, kid: str, *, now: float | None = None) -> None:
        """Stop signing with `kid`. Its tokens still verify until it is removed."""
        key = self._key(kid)
        if key.info.retired is not None:
            return
        info = replace(key.info, retired=time.time() if now is None else now)
        try:
            _write(self._directory / f"{kid}.json", _metadata(info), METADATA_MODE)
        except OSError as exc:
            raise KeyringError(f"{self._directory}: cannot retire {kid}: "
                               f"{exc.strerror or exc}") from None
        self._keys[kid] = replace(key, info=info)

    def remove(self, kid: str) -> None:
        """Delete a retired key: every token it signed stops verifying (`unknown-key`)."""
        key = self._key(kid)
        if key.info.retired is None:
            raise KeyringError(f"key {kid} still signs; retire it before removing it")
        try:
            # The secret first: a crash in between leaves metadata `load` names.
            (self._directory / f"{kid}.pem").unlink()
            (self._directory / f"{kid}.json").unlink()
        except OSError as exc:
            raise KeyringError(f"{self._directory}: cannot remove {kid}: "
                               f"{exc.strerror or exc}") from None
        del self._keys[kid]
        del self._public[kid]

    def describe(self) -> tuple[KeyInfo, ...]:
        """Every key, newest first."""
        infos = (key.info for key in self._keys.values())
        return tuple(sorted(infos, key=lambda i: (i.activates, i.created, i.kid), reverse=True))

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        """Every key that verifies, retired ones included: what `TokenVerifier` needs."""
        return dict(self._public)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The RFC 7517 JWK Set of the public keys, newest first."""
        return {"keys": [public_jwk(self._public[info.kid]) for info in self.describe()]}

    def _key(self, kid: str) -> _Key:
        key = self._keys.get(kid)
        if key is None:
            raise KeyringError(f"{self._directory}: no key {kid!r}")
        return key


def _read_key(directory: Path, kid: str) -> _Key:
    pem_path = directory / f"{kid}.pem"
    try:
        mode = pem_path.stat().st_mode
        if stat.S_IMODE(mode) & 0o077:
            raise KeyringError(f"{pem_path}: group or others may access this private key; "
                               f"chmod 600 {pem_path.name}")
        data = pem_path.read_bytes()
    except OSError as exc:
        raise KeyringError(f"{pem_path}: cannot read: {exc.strerror or exc}") from None
    try:
        private_key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyringError(f"{pem_path}: not an unencrypted PEM private key") from None
    if not isinstance(private_key, Ed25519PrivateKey):
        raise KeyringError(f"{pem_path}: not an Ed25519 key; {GENERATE_HINT}")
    public_key = private_key.public_key()
    if public_jwk(public_key)["kid"] != kid:
        raise KeyringError(f"{pem_path}: the file name is not this key's thumbprint; "
                           "keep the name `gatekeeper keys generate` gave it")
    return _Key(_read_metadata(directory / f"{kid}.json", kid), private_key, public_key)


def _read_metadata(path: Path, kid: str) -> KeyInfo:
    try:
        data: Any = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise KeyringError(f"{path}: missing; every key needs its metadata file "
                           f"(remove {kid}.pem and {GENERATE_HINT})") from None
    except OSError as exc:
        raise KeyringError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError:
        raise KeyringError(f"{path}: not JSON") from None
    if not isinstance(data, dict) or data.get("kid") != kid:
        raise KeyringError(f"{path}: expected an object with \"kid\": \"{kid}\"")
    created = _time(data, "created", path)
    activates = _time(data, "activates", path) if "activates" in data else created
    retired = None if data.get("retired") is None else _time(data, "retired", path)
    return KeyInfo(kid, created, activates, retired)


def _time(data: Mapping[str, Any], name: str, path: Path) -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise KeyringError(f"{path}: {name!r} must be a number of seconds since the epoch")
    return float(value)


def _metadata(info: KeyInfo) -> bytes:
    fields = {"kid": info.kid, "created": info.created, "activates": info.activates,
              "retired": info.retired}
    return (json.dumps(fields, indent=2) + "\n").encode("utf-8")


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write `path` whole or not at all, with `mode` from the first byte on."""
    write_atomically(path, data, mode)
