"""How the wiring sets licensing up from the state directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gatekeeper import wiring
from gatekeeper.licensing.keys import Keyring, KeyringError
from gatekeeper.settings import Settings


def settings(state: Path, **changes: object) -> Settings:
    return dataclasses.replace(Settings(), upstream="http://127.0.0.1:9", state_dir=str(state),
                               **changes)  # type: ignore[arg-type]


def test_no_key_directory_means_no_keys_yet(tmp_path: Path) -> None:
    c = wiring.build(settings(tmp_path, site_hosts=("news.example",)), CollectorRegistry())
    assert c.licensing.keyring is None
    assert c.licensing.gate is not None  # tokens are checked, and fail unknown-key


def test_a_broken_key_directory_stops_the_start_with_the_file_named(tmp_path: Path) -> None:
    kid = Keyring.generate(tmp_path / "keys")
    (tmp_path / "keys" / f"{kid}.pem").chmod(0o644)  # readable by others: refused
    with pytest.raises(KeyringError, match=rf"{kid}\.pem"):
        wiring.build(settings(tmp_path), CollectorRegistry())


def test_without_site_hosts_no_token_is_accepted(tmp_path: Path) -> None:
    Keyring.generate(tmp_path / "keys")
    c = wiring.build(settings(tmp_path), CollectorRegistry())
    assert c.licensing.keyring is not None
    assert c.licensing.gate is None
    assert wiring.licence_endpoints(c) is None
