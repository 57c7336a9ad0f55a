"""The licensee registry: who may ask the licence server for tokens, as one JSON file.

A licensee is a crawler vendor the operator signed up: a `client_id`, a display
name, the catalog crawler its tokens are bound to, optionally the thumbprint of
its Web Bot Auth key, the policy licences it may obtain, and a disabled flag.
The file also holds the revocation list: token ids with the time their token
expires, kept until then (plus a grace period) and pruned on the next write.

The CLI (`gatekeeper licensee ...`, `gatekeeper token revoke`) and the running
proxy share the file. Writes are atomic (temporary file, `fsync`, `os.replace`,
mode 0600) under an advisory lock, and every write re-reads the file first, so
two writers never lose each other's changes. Readers notice a change by the
file's mtime, size and inode and reload; a file that fails to load on a reload
is logged and the last good state keeps serving (a hand edit in progress must
not lock every vendor out).

Secrets are generated here (32 random bytes, shown once) and stored only as
scrypt hashes with a per-licensee salt. Parameters: N = 2**14, r = 8, p = 1,
32-byte output, 16-byte salt: 16 MiB and tens of milliseconds per check. The
secrets are random, not chosen by people, so no KDF setting is what keeps them
from being guessed; scrypt is there so that a copied file is not a set of
working credentials, and the cost is kept moderate because every token request
pays it. Each entry stores its own parameters, so they can be raised later
without invalidating existing secrets.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from gatekeeper.errors import GatekeeperError
from gatekeeper.files import write_atomically
from gatekeeper.observe import logging as gk_logging

_log = gk_logging.get_logger("gatekeeper.licensing")

FILE_VERSION: Final = 1
# Client ids travel URL-encoded inside HTTP Basic and appear in tokens and logs:
# a small alphabet keeps them unambiguous everywhere.
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# An RFC 7638 JWK thumbprint: base64url without padding (43 characters for SHA-256).
_THUMBPRINT = re.compile(r"[A-Za-z0-9_-]{16,128}")
SECRET_PREFIX: Final = "gks_"  # recognisable in a leaked log or repository
# Revoked ids are kept this long past their token's expiry, beyond any verifier's leeway.
REVOCATION_GRACE: Final = 300.0


class LicenseeError(GatekeeperError):
    """The registry refused a change or could not read its file."""


@dataclass(frozen=True, slots=True)
class ScryptCost:
    """scrypt parameters; memory used is 128 * n * r bytes."""

    n: int = 2**14
    r: int = 8
    p: int = 1
    length: int = 32

    @property
    def maxmem(self) -> int:
        # OpenSSL refuses unless the limit exceeds 128*n*r with some room to spare.
        return 128 * self.n * self.r * 2 + 1024 * 1024


DEFAULT_COST: Final = ScryptCost()


@dataclass(frozen=True, slots=True)
class Licensee:
    id: str  # the OAuth client_id
    name: str
    crawler: str  # catalog crawler name the tokens are bound to
    licenses: tuple[str, ...]  # policy licence names, in the operator's order of preference
    key_thumbprint: str | None = None
    disabled: bool = False
    created: float = 0.0


@dataclass(frozen=True, slots=True)
class Revocation:
    token_id: str
    expires: float


@dataclass(frozen=True, slots=True)
class _SecretHash:
    cost: ScryptCost
    salt: bytes
    digest: bytes

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(_derive(secret, self.salt, self.cost), self.digest)


@dataclass(frozen=True, slots=True)
class _State:
    licensees: Mapping[str, tuple[Licensee, _SecretHash]]
    revoked: Mapping[str, float]
    stamp: tuple[int, int, int] | None  # (mtime_ns, size, inode) of what was read


_EMPTY = _State({}, {}, None)


class Licensees:
    """The registry in the JSON file at `path` (created by the first change)."""

    def __init__(
        self, path: Path, *, cost: ScryptCost = DEFAULT_COST,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._cost = cost
        self._clock = clock
        self._lock = threading.Lock()
        self._state = _read(path)
        # Unknown ids are checked against this, so they cost the same scrypt as known ones.
        salt = secrets.token_bytes(16)
        self._dummy = _SecretHash(cost, salt, _derive(secrets.token_urlsafe(32), salt, cost))

    # -- reading ---------------------------------------------------------------

    def authenticate(self, client_id: str, secret: str) -> Licensee | None:
        """The licensee whose id and secret these are, disabled or not; None otherwise.

        Runs one scrypt whatever happens, also for an unknown id, and compares in
        constant time, so timing tells nothing about which ids exist. It takes
        tens of milliseconds: async callers run it in a thread."""
        entry = self._current().licensees.get(client_id)
        stored = entry[1] if entry is not None else self._dummy
        ok = stored.matches(secret)
        return entry[0] if entry is not None and ok else None

    def get(self, client_id: str) -> Licensee | None:
        entry = self._current().licensees.get(client_id)
        return entry[0] if entry is not None else None

    def list(self) -> list[Licensee]:
        return sorted((e[0] for e in self._current().licensees.values()), key=lambda x: x.id)

    def is_revoked(self, token_id: str) -> bool:
        return token_id in self._current().revoked

    def revocations(self) -> builtins.list[Revocation]:
        revoked = self._current().revoked
        return [Revocation(t, revoked[t]) for t in sorted(revoked)]

    # -- changing --------------------------------------------------------------

    def add(
        self, id: str, name: str, crawler: str, licenses: Iterable[str],
        key_thumbprint: str | None = None,
    ) -> str:
        """Register a licensee; returns its secret, which is stored only as a hash.

        Whether `crawler` is in the catalog and the licences are in the policy is
        the caller's check: the registry knows neither."""
        names = tuple(dict.fromkeys(licenses))
        _check_new(id, name, crawler, names, key_thumbprint)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        hashed = _SecretHash(self._cost, salt, _derive(secret, salt, self._cost))
        licensee = Licensee(id, name, crawler, names, key_thumbprint, False, self._clock())
        with self._mutate() as state:
            if id in state.licensees:
                raise LicenseeError(f"licensee {id!r} already exists")
            state.licensees[id] = (licensee, hashed)
        return secret

    def disable(self, client_id: str) -> None:
        """Refuse the licensee new tokens and introspection. Tokens it already holds
        stay valid until they expire unless revoked, or the verifier checks the flag."""
        self._set_disabled(client_id, True)

    def enable(self, client_id: str) -> None:
        self._set_disabled(client_id, False)

    def revoke(self, token_id: str, expires: float) -> None:
        """Revoke a token until `expires` (its `exp`), after which it is dead anyway."""
        if not token_id or len(token_id) > 256:
            raise LicenseeError("token id must be 1 to 256 characters")
        with self._mutate() as state:
            state.revoked[token_id] = max(expires, state.revoked.get(token_id, expires))

    # -- internals -------------------------------------------------------------

    def _set_disabled(self, client_id: str, disabled: bool) -> None:
        with self._mutate() as state:
            entry = state.licensees.get(client_id)
            if entry is None:
                raise LicenseeError(f"no licensee {client_id!r}")
            state.licensees[client_id] = (replace(entry[0], disabled=disabled), entry[1])

    def _current(self) -> _State:
        stamp = _stamp(self.path)
        state = self._state
        if stamp != state.stamp:
            try:
                state = _read(self.path)
            except LicenseeError as exc:
                _log.warning("licensees_reload_failed", error=str(exc),
                             note="the last good licensees file stays in use")
                return state
            with self._lock:
                self._state = state
        return state

    @contextlib.contextmanager
    def _mutate(self) -> Iterator[_Mutable]:
        with _file_lock(self.path), self._lock:
            current = _read(self.path)  # what other writers wrote wins over our cache
            draft = _Mutable(dict(current.licensees), dict(current.revoked))
            yield draft
            now = self._clock()
            draft.revoked = {t: exp for t, exp in draft.revoked.items()
                             if exp + REVOCATION_GRACE >= now}
            _write(self.path, _dump(draft))
            self._state = _State(draft.licensees, draft.revoked, _stamp(self.path))


@dataclass(slots=True)
class _Mutable:
    licensees: dict[str, tuple[Licensee, _SecretHash]]
    revoked: dict[str, float]


def _derive(secret: str, salt: bytes, cost: ScryptCost) -> bytes:
    return hashlib.scrypt(secret.encode("utf-8", "surrogatepass"), salt=salt, n=cost.n,
                          r=cost.r, p=cost.p, maxmem=cost.maxmem, dklen=cost.length)


def _check_new(id: str, name: str, crawler: str, licenses: tuple[str, ...],
               key_thumbprint: str | None) -> None:
    if not _CLIENT_ID.fullmatch(id):
        raise LicenseeError(
            f"licensee id {id!r}: 1-64 of letters, digits, '.', '_', '-', starting alphanumeric")
    if not name.strip() or len(name) > 200:
        raise LicenseeError("name must be 1 to 200 characters")
    if not crawler.strip():
        raise LicenseeError("crawler must name a catalog crawler")
    if not licenses or any(not n.strip() for n in licenses):
        raise LicenseeError("at least one licence name is needed")
    if key_thumbprint is not None and not _THUMBPRINT.fullmatch(key_thumbprint):
        raise LicenseeError("key thumbprint must be a base64url JWK thumbprint (RFC 7638)")


# -- the file ------------------------------------------------------------------

def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _read(path: Path) -> _State:
    stamp = _stamp(path)
    if stamp is None:
        return _EMPTY
    try:
        doc = json.loads(path.read_bytes())
        return _parse(doc, stamp)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LicenseeError(f"{path}: not a valid licensees file ({exc})") from None


def _parse(doc: Any, stamp: tuple[int, int, int]) -> _State:
    if not isinstance(doc, dict) or doc.get("version") != FILE_VERSION:
        raise ValueError(f"expected an object with version {FILE_VERSION}")
    licensees: dict[str, tuple[Licensee, _SecretHash]] = {}
    for item in doc["licensees"]:
        s = item["secret"]
        if s["alg"] != "scrypt":
            raise ValueError(f"unknown secret hash {s['alg']!r}")
        digest = _b64d(s["hash"])
        cost = ScryptCost(int(s["n"]), int(s["r"]), int(s["p"]), len(digest))
        hashed = _SecretHash(cost, _b64d(s["salt"]), digest)
        lic = Licensee(str(item["id"]), str(item["name"]), str(item["crawler"]),
                       tuple(str(n) for n in item["licenses"]), item.get("key_thumbprint"),
                       bool(item.get("disabled", False)), float(item.get("created", 0.0)))
        licensees[lic.id] = (lic, hashed)
    revoked = {str(r["jti"]): float(r["expires"]) for r in doc.get("revoked", [])}
    return _State(licensees, revoked, stamp)


def _dump(state: _Mutable) -> bytes:
    doc = {
        "version": FILE_VERSION,
        "licensees": [
            {
                "id": lic.id, "name": lic.name, "crawler": lic.crawler,
                "licenses": list(lic.licenses), "key_thumbprint": lic.key_thumbprint,
                "disabled": lic.disabled, "created": lic.created,
                "secret": {"alg": "scrypt", "n": h.cost.n, "r": h.cost.r, "p": h.cost.p,
                           "salt": _b64e(h.salt), "hash": _b64e(h.digest)},
            }
            for lic, h in sorted(state.licensees.values(), key=lambda e: e[0].id)
        ],
        "revoked": [{"jti": t, "expires": exp} for t, exp in sorted(state.revoked.items())],
    }
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def _write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old file or the new one, whole."""
    write_atomically(path, data, 0o600, parents=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # A separate lock file: the data file is replaced on every write, so a lock
    # held on it would be a lock on a file nobody opens any more.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _b64e(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
