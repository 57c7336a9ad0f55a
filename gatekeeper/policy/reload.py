"""The live policy: swapped atomically on a good reload, kept on a bad one."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gatekeeper.core.model import Policy
from gatekeeper.errors import PolicyError, Problem
from gatekeeper.policy.loader import CatalogNames, load_policy_file, policy_files


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    source: str
    problems: list[Problem] = field(default_factory=list)


class PolicyHolder:
    """Holds the policy every request reads. Reading is one attribute load, so a
    reload (a single assignment) is atomic for the event loop."""

    def __init__(self, policy: Policy, path: str | None, catalog: CatalogNames) -> None:
        self.current = policy
        self.path = path
        self._catalog = catalog

    def get(self) -> Policy:
        return self.current

    def reload(self) -> ReloadResult:
        if self.path is None:
            return ReloadResult(True, self.current.source)  # the embedded policy never changes
        try:
            policy = load_policy_file(self.path, self._catalog)
        except PolicyError as exc:
            return ReloadResult(False, self.path, exc.problems)
        self.current = policy
        return ReloadResult(True, self.path)


def fingerprint(path: str) -> str:
    """A digest of the policy file and everything it includes (missing files count too)."""
    digest = hashlib.sha256()
    for file in policy_files(path):
        digest.update(str(file).encode())
        try:
            digest.update(Path(file).read_bytes())
        except OSError:
            digest.update(b"\0missing")
    return digest.hexdigest()


async def watch(
    holder: PolicyHolder, interval: float, on_result: Callable[[ReloadResult], None]
) -> None:
    """Reload whenever the file or an included file changes; runs until cancelled.

    Content is compared, not mtimes, so editors that save twice or touch a file
    without changing it cause no reload, and coarse mtime clocks miss nothing.
    """
    if holder.path is None or interval <= 0:
        return
    path = holder.path
    last = await asyncio.to_thread(fingerprint, path)
    while True:
        await asyncio.sleep(interval)
        current = await asyncio.to_thread(fingerprint, path)
        if current != last:
            last = current
            on_result(holder.reload())
