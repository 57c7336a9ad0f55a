"""The content-owner registry: a JSON file in the state directory, changed at run time.

The admin API (`PUT`/`DELETE /owners/{name}`) and the operator's editor both write
the file; the running proxy re-reads it when it changes, without a policy reload.
Writes are atomic (a temporary file renamed over the old one), so a reader never sees
half a file. A file with errors is refused with every problem named, and the last good
owners keep serving.

File format:

```json
{"version": 1, "owners": [
  {"name": "alice", "paths": ["/articles/alice/**"], "stance": "opt-out"},
  {"name": "bob", "paths": ["/articles/bob/**"], "stance": "licensable", "share": "70"}
]}
```
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from gatekeeper.core.globs import GlobError, compile_path_glob
from gatekeeper.core.owners import NO_OWNERS, Owner, Owners, Stance
from gatekeeper.errors import GatekeeperError
from gatekeeper.files import write_atomically

VERSION = 1
CHECK_INTERVAL = 1.0  # seconds between looks at the file for changes
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class OwnersError(GatekeeperError):
    """The owners file, or a change to it, is invalid; the message names each problem."""


class OwnerRegistry:
    """Owners from `path` (absent: none), re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._checked_at = float("-inf")
        self._owners = NO_OWNERS
        self._raw: list[dict[str, Any]] = []
        self.last_error: str | None = None
        self.current()

    def current(self) -> Owners:
        """The owners now; a changed file is re-read (a bad one keeps the last good).

        Called for every request, so the file is looked at once a second at most."""
        now = time.monotonic()
        if now - self._checked_at >= CHECK_INTERVAL:
            self._checked_at = now
            stamp = _stamp(self.path)
            if stamp != self._stamp:
                with self._lock:
                    self._reload(stamp)
        return self._owners

    def entries(self) -> list[dict[str, Any]]:
        self._checked_at = float("-inf")
        self.current()
        return [dict(e) for e in self._raw]

    def put(self, name: str, entry: Mapping[str, Any]) -> Owner:
        """Add or replace owner `name` (validated first; nothing is written on error)."""
        owner = parse_owner({**entry, "name": name}, f"owners[{name}]")
        with self._lock:
            self._reload(_stamp(self.path))
            raw = [e for e in self._raw if e.get("name") != name]
            raw.append({"name": name, "paths": [p.text for p in owner.paths],
                        "stance": owner.stance.value, "share": str(owner.share)})
            self._write(raw)
        return owner

    def delete(self, name: str) -> bool:
        with self._lock:
            self._reload(_stamp(self.path))
            raw = [e for e in self._raw if e.get("name") != name]
            if len(raw) == len(self._raw):
                return False
            self._write(raw)
        return True

    def _reload(self, stamp: tuple[int, int] | None) -> None:
        if stamp == self._stamp:
            return
        try:
            raw = _read(self.path) if stamp is not None else []
            owners = Owners(tuple(parse_owner(e, f"{self.path}: owners[{i}]")
                                  for i, e in enumerate(raw)))
        except OwnersError as exc:
            self.last_error = str(exc)  # keep serving the last good owners
            self._stamp = stamp
            return
        self._owners, self._raw, self._stamp, self.last_error = owners, raw, stamp, None

    def _write(self, raw: list[dict[str, Any]]) -> None:
        data = json.dumps({"version": VERSION, "owners": raw}, indent=2).encode() + b"\n"
        write_atomically(self.path, data, 0o600, parents=True)
        self._stamp = None
        self._reload(_stamp(self.path))
        self._checked_at = time.monotonic()


def parse_owner(entry: Mapping[str, Any], where: str) -> Owner:
    problems: list[str] = []
    unknown = sorted(set(entry) - {"name", "paths", "stance", "share"})
    if unknown:
        problems.append(f"{where}: unknown field(s) {', '.join(unknown)}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        problems.append(f"{where}: name: letters, digits, '.', '_' and '-' (up to 64)")
    paths = entry.get("paths")
    patterns = []
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        problems.append(f"{where}: paths: a non-empty list of path globs")
    else:
        for i, text in enumerate(paths):
            try:
                patterns.append(compile_path_glob(text))
            except GlobError as exc:
                problems.append(f"{where}: paths[{i}]: bad glob {text!r}: {exc}")
    stance = entry.get("stance")
    if stance not in [s.value for s in Stance]:
        problems.append(f"{where}: stance: {stance!r} is not one of opt-out, licensable")
    share = _share(entry.get("share", "0"), where, problems)
    if stance == Stance.OPT_OUT.value and share:
        problems.append(f"{where}: share: an owner who opted out takes no licence revenue")
    if problems:
        raise OwnersError("\n".join(problems))
    return Owner(str(name), tuple(patterns), Stance(str(stance)), share)


def _share(value: object, where: str, problems: list[str]) -> Decimal:
    try:
        share = Decimal(str(value))
    except InvalidOperation:
        share = Decimal(-1)
    if not share.is_finite() or not 0 <= share <= 100:
        problems.append(f"{where}: share: {value!r}: a percentage from 0 to 100")
        return Decimal(0)
    return share


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise OwnersError(f"{path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise OwnersError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(
            doc.get("owners"), list):
        raise OwnersError(f"{path}: expected {{\"version\": 1, \"owners\": [...]}}")
    entries: Iterable[Any] = doc["owners"]
    if not all(isinstance(e, dict) for e in entries):
        raise OwnersError(f"{path}: owners: every entry must be an object")
    return list(doc["owners"])


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
