"""The live policy: swapped atomically on a good reload, kept on a bad one.

Every request reads `PolicyHolder.current` once, so replacing that one
attribute is the whole swap: a request sees the old policy or the new one,
never a mixture. `watch` polls the policy file and every file it includes
and reloads when their content changes; SIGHUP (wired by the server)
calls `reload` directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gatekeeper.core.model import Policy
from gatekeeper.errors import Problem
from gatekeeper.policy.loader import CatalogNames, SourceFile, read_policy_file
from gatekeeper.policy.vocabulary import MAX_POLICY_FILE_BYTES

# A file whose mtime is this recent may change again within the same mtime
# tick without its size changing, so its content is hashed even when its
# stat looks unchanged (the "racy" case git also guards against).
RACY_SECONDS = 2.0

_Stat = tuple[int, int, int] | None  # mtime_ns, size, inode; None when missing


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    source: str  # the policy file, or the embedded policy's name
    problems: list[Problem] = field(default_factory=list)


class PolicyHolder:
    """Holds the policy every request reads; `reload` replaces it only when the
    file is valid. `path` None means the embedded policy, which never changes."""

    def __init__(self, policy: Policy, path: str | None, catalog: CatalogNames,
                 accept: Callable[[Policy], Sequence[Problem]] | None = None, *,
                 files: tuple[SourceFile, ...] | None = None) -> None:
        self.current = policy
        self.path = path
        self._catalog = catalog
        # What a valid policy must also satisfy to replace the current one here (what
        # the run mode can enforce, what several workers can share); its problems fail
        # the reload like a policy error, and the current policy keeps serving.
        self._accept = accept
        # SIGHUP (event loop) and the watcher (worker thread) may reload at once;
        # without the lock the older read could be assigned last.
        self._lock = threading.Lock()
        # The files `policy` was read from, when the caller has them (no second read).
        self._files: tuple[SourceFile, ...] | None = files

    def get(self) -> Policy:
        return self.current

    def reload(self) -> ReloadResult:
        if self.path is None:
            return ReloadResult(True, self.current.source)
        with self._lock:
            try:
                read = read_policy_file(self.path, self._catalog)
            except Exception as exc:  # a loader bug must not take the server down
                problem = Problem(self.path, 0, "", f"internal error while loading: {exc!r}")
                return ReloadResult(False, self.path, [problem])
            self._files = read.files
            if read.policy is None:
                return ReloadResult(False, self.path, list(read.problems))
            refused = self._accept(read.policy) if self._accept is not None else ()
            if refused:
                return ReloadResult(False, self.path, list(refused))
            self.current = read.policy
            return ReloadResult(True, self.path)

    def watched_files(self) -> tuple[SourceFile, ...]:
        """The files the last load read, with the digest of what it read.

        A holder built from an already loaded policy learns them by reading the
        files once more (that policy was loaded moments before, at startup).
        """
        if self.path is None:
            return ()
        with self._lock:
            if self._files is None:
                self._files = read_policy_file(self.path, self._catalog).files
            return self._files


async def watch(
    holder: PolicyHolder, interval: float, on_result: Callable[[ReloadResult], None]
) -> None:
    """Reload whenever the policy file or an included file changes; runs until cancelled.

    Each poll stats the files; content is hashed only when a stat changed (or
    is too recent to trust) and compared with what the last load read. So a
    `touch`, or an editor saving the same bytes, causes no reload, and a
    change is never missed because two writes fell into one mtime tick.
    """
    if holder.path is None or interval <= 0:
        return
    files = await asyncio.to_thread(holder.watched_files)
    seen: dict[Path, _Stat] = {}
    while True:
        await asyncio.sleep(interval)
        if await asyncio.to_thread(_changed, files, seen):
            result = await asyncio.to_thread(holder.reload)
            files = holder.watched_files()
            # Forget the stats: the next poll hashes every file once against what
            # this load read, in case a file changed again while it was loading.
            seen.clear()
            on_result(result)


def _changed(files: Sequence[SourceFile], seen: dict[Path, _Stat]) -> bool:
    """True when a file's content differs from what the last load read.
    Updates `seen` with the current stats."""
    now = time.time()
    changed = False
    for file in files:
        stat = _stat(file.path)
        racy = stat is not None and now - stat[0] / 1e9 < RACY_SECONDS
        if file.path not in seen or seen[file.path] != stat or racy:
            changed = changed or _digest(file.path) != file.digest
        seen[file.path] = stat
    return changed


def _stat(path: Path) -> _Stat:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _digest(path: Path) -> str | None:
    # As much as the loader reads and hashes: an oversized file (refused) is not
    # taken for a changed one on every poll.
    try:
        with path.open("rb") as f:
            return hashlib.sha256(f.read(MAX_POLICY_FILE_BYTES + 1)).hexdigest()
    except OSError:
        return None
