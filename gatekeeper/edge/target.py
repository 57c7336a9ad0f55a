"""The request target, decided once: canonical path or a 400.

The gate evaluates policy on the canonical path and forwards exactly that
path, so a form the upstream could read differently from the gate is refused
instead of guessed at. Contract:

- only origin-form targets (`/path?query`); absolute-form, authority-form,
  asterisk-form and CONNECT are refused (a reverse proxy has no use for them,
  and absolute-form can smuggle a different host or scheme past the gate);
- in the path: encoded `/` or `\\`, raw `\\`, NUL, control characters, spaces,
  `#`, non-ASCII and malformed percent-escapes are refused;
- percent-escapes of unreserved characters are decoded, the rest upper-cased,
  then dot segments are removed (RFC 3986 §5.2.4) and runs of `/` collapsed.

The result is idempotent: canonicalising a canonical path returns it unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# Everything a path may contain literally (RFC 3986 pchar plus "/"), except "%"
# which is checked escape by escape.
_PATH_OK = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_QUERY_OK = re.compile(r"[\x21-\x22\x24-\x7e]*")  # printable ASCII except "#"
_HOST_OK = re.compile(r"(?:[a-z0-9](?:[a-z0-9\-_]*[a-z0-9])?\.?)+|\[[0-9a-f:.]+\]")


class BadRequest(Exception):
    """A request the gate refuses before deciding anything; the upstream sees nothing."""

    def __init__(self, reason: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.reason = reason  # bounded snake_case label, also a metric label value
        self.status = status


@dataclass(frozen=True, slots=True)
class Target:
    path: str
    query: str  # raw, without "?"; "" when absent


def canonicalize(method: str, raw_target: str) -> Target:
    if method == "CONNECT":
        raise BadRequest("connect", "CONNECT is not proxied")
    if not raw_target.startswith("/"):
        if raw_target == "*":
            # OPTIONS * asks about the server itself; the gate has no answer to forward.
            raise BadRequest("asterisk_form", "asterisk-form request target is not accepted")
        if "://" in raw_target:
            raise BadRequest("absolute_form", "absolute-form request target is not accepted")
        raise BadRequest("not_origin_form", "request target must start with '/'")
    path, sep, query = raw_target.partition("?")
    if sep and not _QUERY_OK.fullmatch(query):
        raise BadRequest(
            "bad_query", "query contains spaces, '#', control or non-ASCII characters"
        )
    if "%" not in path and "/." not in path and "//" not in path:
        # Fast path: nothing to decode or resolve; only the character check remains.
        if not _PATH_OK.fullmatch(path):
            raise _bad_char(path)
        return Target(path, query)
    return Target(_canonical_path(path), query)


def _canonical_path(path: str) -> str:
    if not _PATH_OK.fullmatch(path):
        raise _bad_char(path)
    decoded = _normalise_escapes(path) if "%" in path else path
    # Slashes are merged before dot segments are resolved, as common origins do
    # (`/a//../b` is `/b`), so the gate resolves the path the way the upstream would.
    return _collapse_slashes(_remove_dot_segments(_collapse_slashes(decoded)))


def _normalise_escapes(path: str) -> str:
    out: list[str] = []
    i, n = 0, len(path)
    while i < n:
        ch = path[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        hexpair = path[i + 1 : i + 3]
        if len(hexpair) != 2 or not (hexpair[0] in _HEX and hexpair[1] in _HEX):
            raise BadRequest("bad_escape", f"invalid percent-escape at offset {i}")
        value = int(hexpair, 16)
        if value == 0x2F:
            raise BadRequest("encoded_slash", "encoded '/' (%2F) in the path is ambiguous")
        if value == 0x5C:
            raise BadRequest("encoded_backslash", "encoded '\\' (%5C) in the path is ambiguous")
        if value == 0:
            raise BadRequest("nul", "NUL in the path")
        if value < 0x20 or value == 0x7F:
            raise BadRequest("control_char", "encoded control character in the path")
        decoded = chr(value)
        out.append(decoded if decoded in _UNRESERVED else "%" + hexpair.upper())
        i += 3
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    if "." not in path:
        return path
    segments = path.split("/")
    out: list[str] = []
    for seg in segments[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    result = "/" + "/".join(out)
    # A trailing "." or ".." names a directory: keep the slash that says so.
    if segments[-1] in (".", "..") and not result.endswith("/"):
        result += "/"
    return result


def _collapse_slashes(path: str) -> str:
    while "//" in path:
        path = path.replace("//", "/")
    return path


def _bad_char(path: str) -> BadRequest:
    for ch in path:
        if ch == "\x00":
            return BadRequest("nul", "NUL in the path")
        if ch == "\\":
            return BadRequest("backslash", "'\\' in the path is ambiguous")
        if ch == "#":
            return BadRequest("fragment", "a fragment is not part of a request target")
        if ord(ch) < 0x20 or ord(ch) == 0x7F or ch == " ":
            return BadRequest("control_char", "space or control character in the path")
        if ord(ch) > 0x7E:
            return BadRequest("non_ascii", "non-ASCII character in the path")
    return BadRequest("bad_char", "character not allowed in a path")


def check_host(host_header: str | None) -> str:
    """The request's host, lower-cased and without port; 400 when missing or malformed."""
    if not host_header:
        raise BadRequest("bad_host", "missing Host header")
    host = host_header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[: end + 1], host[end + 1 :]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            raise BadRequest("bad_host", "malformed Host header")
    else:
        name, sep, port = host.partition(":")
        if sep and not port.isdigit():
            raise BadRequest("bad_host", "malformed Host header")
    if not name or len(name) > 255 or not _HOST_OK.fullmatch(name):
        raise BadRequest("bad_host", "malformed Host header")
    return name
