"""The licensee registry: hashed secrets checked in constant time, a JSON file
written atomically and shared between processes, and a revocation list that
forgets tokens once they have expired."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.licensing.licensees import (
    DEFAULT_COST,
    REVOCATION_GRACE,
    SECRET_PREFIX,
    Licensee,
    LicenseeError,
    Licensees,
    ScryptCost,
)

# 1/16 of the default: the same code path, fast enough for many calls per test.
CHEAP = ScryptCost(n=2**10)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "licensees.json"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reg(path: Path, clock: Clock) -> Licensees:
    return Licensees(path, cost=CHEAP, clock=clock)


def _doc(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def test_add_returns_a_secret_that_authenticates_and_a_wrong_one_does_not(
        reg: Licensees, clock: Clock) -> None:
    secret = reg.add("acme", "Acme AI", "GPTBot", ["ai-input", "ai-train"], key_thumbprint=None)
    assert secret.startswith(SECRET_PREFIX)
    assert len(secret) > 40
    who = reg.authenticate("acme", secret)
    assert who == Licensee("acme", "Acme AI", "GPTBot", ("ai-input", "ai-train"), None,
                           False, clock.now)
    assert reg.authenticate("acme", secret + "x") is None
    assert reg.authenticate("acme", "") is None
    assert reg.authenticate("nobody", secret) is None


def test_the_file_holds_a_salted_scrypt_hash_with_its_parameters_never_the_secret(
        path: Path) -> None:
    reg = Licensees(path)  # the real default parameters
    secret_a = reg.add("a", "A", "GPTBot", ["l"])
    secret_b = reg.add("b", "B", "GPTBot", ["l"])
    text = path.read_text()
    assert secret_a not in text
    assert secret_b not in text
    stored = {e["id"]: e["secret"] for e in _doc(path)["licensees"]}
    assert stored["a"]["alg"] == "scrypt"
    assert (stored["a"]["n"], stored["a"]["r"], stored["a"]["p"]) == (2**14, 8, 1)
    assert stored["a"]["salt"] != stored["b"]["salt"]
    salt = base64.b64decode(stored["a"]["salt"])
    assert len(salt) == 16
    expected = hashlib.scrypt(secret_a.encode(), salt=salt, n=2**14, r=8, p=1,
                              maxmem=DEFAULT_COST.maxmem, dklen=32)
    assert base64.b64decode(stored["a"]["hash"]) == expected
    assert reg.authenticate("a", secret_a) is not None


def test_an_entry_keeps_the_parameters_it_was_hashed_with(path: Path) -> None:
    secret = Licensees(path, cost=CHEAP).add("old", "Old", "GPTBot", ["l"])
    assert Licensees(path).authenticate("old", secret) is not None  # default cost now


def test_unknown_and_known_ids_take_the_same_path_one_scrypt_and_one_compare(
        reg: Licensees, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = reg.add("acme", "Acme", "GPTBot", ["l"])
    calls: list[str] = []
    real_scrypt, real_compare = hashlib.scrypt, hmac.compare_digest

    def scrypt(*args: Any, **kwargs: Any) -> bytes:
        calls.append("scrypt")
        return real_scrypt(*args, **kwargs)

    def compare(a: Any, b: Any) -> bool:
        calls.append("compare")
        return real_compare(a, b)

    monkeypatch.setattr(hashlib, "scrypt", scrypt)
    monkeypatch.setattr(hmac, "compare_digest", compare)
    for client_id, given in (("acme", secret), ("acme", "wrong"), ("ghost", "wrong"),
                             ("ghost", secret)):
        calls.clear()
        reg.authenticate(client_id, given)
        assert calls == ["scrypt", "compare"], (client_id, calls)


def test_unknown_ids_cost_about_as_much_time_as_wrong_secrets(path: Path) -> None:
    reg = Licensees(path)  # real cost: the difference would show if the KDF were skipped
    reg.add("acme", "Acme", "GPTBot", ["l"])

    def timed(client_id: str) -> float:
        start = time.perf_counter()
        reg.authenticate(client_id, "not-the-secret")
        return time.perf_counter() - start

    # Interleaved, so a burst of load on the machine hits both sides alike.
    runs = [(timed("acme"), timed("ghost")) for _ in range(9)]
    known = statistics.median(k for k, _ in runs)
    unknown = statistics.median(u for _, u in runs)
    assert 0.5 < unknown / known < 2.0, (known, unknown)


def test_writes_are_atomic_mode_0600_and_leave_no_temporary_files(
        reg: Licensees, path: Path) -> None:
    reg.add("acme", "Acme", "GPTBot", ["l"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reg.revoke("t1", 1_900_000_000.0)
    assert sorted(p.name for p in path.parent.iterdir()) == ["licensees.json",
                                                             "licensees.json.lock"]
    assert _doc(path)["version"] == 1


def test_a_failed_write_leaves_the_old_file_whole(
        reg: Licensees, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg.add("acme", "Acme", "GPTBot", ["l"])
    before = path.read_bytes()

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        reg.add("other", "Other", "GPTBot", ["l"])
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert reg.get("other") is None


def test_another_process_sees_changes_through_the_file(path: Path, clock: Clock) -> None:
    cli = Licensees(path, cost=CHEAP, clock=clock)
    proxy = Licensees(path, cost=CHEAP, clock=clock)
    assert proxy.list() == []
    secret = cli.add("acme", "Acme", "GPTBot", ["l"])
    assert proxy.authenticate("acme", secret) is not None
    cli.disable("acme")
    who = proxy.authenticate("acme", secret)
    assert who is not None
    assert who.disabled
    cli.enable("acme")
    again = proxy.get("acme")
    assert again is not None
    assert not again.disabled
    cli.revoke("jti-1", clock.now + 60)
    assert proxy.is_revoked("jti-1")
    assert not proxy.is_revoked("jti-2")


def test_two_writers_do_not_lose_each_others_changes(path: Path) -> None:
    first = Licensees(path, cost=CHEAP)
    second = Licensees(path, cost=CHEAP)
    second.list()  # its cached state is now older than what `first` writes next
    first.add("a", "A", "GPTBot", ["l"])
    second.add("b", "B", "ClaudeBot", ["l"])
    first.revoke("t", time.time() + 60)
    assert [x.id for x in Licensees(path).list()] == ["a", "b"]
    assert Licensees(path).is_revoked("t")


def test_revocations_are_pruned_once_their_token_has_expired(
        reg: Licensees, clock: Clock, path: Path) -> None:
    reg.revoke("soon", clock.now + 10)
    reg.revoke("later", clock.now + 3600)
    clock.now += 10 + REVOCATION_GRACE - 1
    reg.revoke("new", clock.now + 60)  # writing prunes; within the grace it stays
    assert reg.is_revoked("soon")
    clock.now += 2
    reg.revoke("newer", clock.now + 60)
    assert not reg.is_revoked("soon")
    assert [r.token_id for r in reg.revocations()] == ["later", "new", "newer"]
    assert "soon" not in path.read_text()


def test_revoking_twice_keeps_the_later_expiry(reg: Licensees, clock: Clock) -> None:
    reg.revoke("t", clock.now + 100)
    reg.revoke("t", clock.now + 50)
    assert [(r.token_id, r.expires) for r in reg.revocations()] == [("t", clock.now + 100)]


def test_a_broken_file_on_reload_keeps_the_last_good_state(
        reg: Licensees, path: Path) -> None:
    secret = reg.add("acme", "Acme", "GPTBot", ["l"])
    path.write_text("{ half an edit")
    assert reg.authenticate("acme", secret) is not None
    with pytest.raises(LicenseeError, match="not a valid licensees file"):
        Licensees(path)


def test_a_missing_file_is_an_empty_registry_created_by_the_first_change(path: Path) -> None:
    reg = Licensees(path, cost=CHEAP)
    assert reg.list() == []
    assert not reg.is_revoked("x")
    assert not path.exists()
    reg.add("acme", "Acme", "GPTBot", ["l"])
    assert path.exists()


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r.add("acme", "Again", "GPTBot", ["l"]), "already exists"),
    (lambda r: r.add("bad id", "X", "GPTBot", ["l"]), "licensee id"),
    (lambda r: r.add("a:b", "X", "GPTBot", ["l"]), "licensee id"),
    (lambda r: r.add("x", " ", "GPTBot", ["l"]), "name"),
    (lambda r: r.add("x", "X", "", ["l"]), "crawler"),
    (lambda r: r.add("x", "X", "GPTBot", []), "licence"),
    (lambda r: r.add("x", "X", "GPTBot", ["l"], key_thumbprint="not/base64url"), "thumbprint"),
    (lambda r: r.disable("ghost"), "no licensee"),
    (lambda r: r.revoke("", 0.0), "token id"),
])
def test_invalid_changes_are_refused_with_a_message(
        reg: Licensees, change: Callable[[Licensees], object], message: str) -> None:
    reg.add("acme", "Acme", "GPTBot", ["l"])
    with pytest.raises(LicenseeError, match=message):
        change(reg)


def test_list_shows_licensees_without_secrets_in_id_order(reg: Licensees) -> None:
    reg.add("zeta", "Zeta", "GPTBot", ["a", "b", "a"])
    reg.add("alpha", "Alpha", "ClaudeBot", ["b"], key_thumbprint="A" * 43)
    listed = reg.list()
    assert [x.id for x in listed] == ["alpha", "zeta"]
    assert listed[0].key_thumbprint == "A" * 43
    assert listed[1].licenses == ("a", "b")  # duplicates dropped, order kept
    assert not any(hasattr(x, "secret") for x in listed)


def test_the_file_is_created_with_private_permissions_even_with_a_lax_umask(
        path: Path) -> None:
    old = os.umask(0)
    try:
        Licensees(path, cost=CHEAP).add("acme", "Acme", "GPTBot", ["l"])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
