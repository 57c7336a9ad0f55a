"""write_atomically: the whole file with its mode, or nothing at all."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gatekeeper.files import write_atomically


def test_the_file_is_replaced_whole_with_the_mode_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "new" / "licensees.json"
    write_atomically(path, b"first", 0o644, parents=True)
    write_atomically(path, b"second", 0o600)
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["licensees.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()  # a directory where the file should go: the rename fails
    with pytest.raises(OSError):
        write_atomically(target, b"data", 0o644)
    assert target.is_dir()
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_a_missing_directory_is_an_error_unless_parents_are_asked_for(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "missing" / "export.csv", b"data", 0o644)
    assert os.listdir(tmp_path) == []
