"""Writing a file whole or not at all.

Every file Gatekeeper rewrites while others may read it (licensees, content owners,
signing keys, fetched range lists, the ledger mirror's note, a ledger export) is
written to a temporary file in the same directory with its final mode, synced,
renamed over the old one, and the directory synced: a reader sees the old file or
the new one, and after a crash the rename itself has survived.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int, *, parents: bool = False) -> None:
    """Replace `path` with `data`, with `mode` from the first byte on (whatever the
    umask, or the mode of a file there before). `parents`: create the directory if
    it is missing (otherwise that is an error). Leaves no temporary file behind when
    it fails."""
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
