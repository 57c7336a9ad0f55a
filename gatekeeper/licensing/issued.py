"""The list of licence tokens issued: one JSON line per token, never the token itself.

The operator needs a token's id to revoke it and wants to see who holds what
(`gatekeeper token list`); the token's text is a bearer credential and is not kept.
Lines are appended (issuance is rare: one per licensee and licence period).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gatekeeper.licensing.tokens import LicenseClaims


@dataclass(frozen=True, slots=True)
class Issued:
    token_id: str
    licensee: str
    license: str
    crawler: str
    not_before: float
    expires: float


def record(path: Path, claims: LicenseClaims) -> None:
    line = json.dumps({"jti": claims.token_id, "sub": claims.subject, "license": claims.license,
                       "crawler": claims.crawler, "nbf": claims.not_before,
                       "exp": claims.expires}, sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read(path: Path) -> Iterator[Issued]:
    """Every complete, well-formed line; a torn or garbled one is passed over."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    for line in text.splitlines():
        try:
            d = json.loads(line)
            yield Issued(str(d["jti"]), str(d["sub"]), str(d["license"]), str(d["crawler"]),
                         float(d["nbf"]), float(d["exp"]))
        except (ValueError, KeyError, TypeError):
            continue
