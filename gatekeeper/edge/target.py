"""The request target, decided once: one canonical path, or a 400.

The gate evaluates policy on the canonical path and forwards exactly that
path. A target that the upstream could read differently from the gate is
refused, not guessed at. Contract of `canonicalize(method, raw_target)`:

- Only origin-form targets (`/path?query`) are accepted. Absolute-form
  (`http://h/x`), authority-form (`h:443`), asterisk-form (`*`) and the method
  CONNECT are refused. A reverse proxy has no use for them, and absolute-form
  can carry a host or scheme that differs from what the gate checked.
- The path must be printable ASCII. Each of these is refused with its own
  reason: raw `\\`, `#`, NUL, control characters, space, non-ASCII, a
  malformed `%` escape, an escape that decodes to `/`, `\\` or a control
  character, a `%25` escape that would decode a second time to `/`, `\\`, `.`
  or NUL, escapes whose bytes are not valid UTF-8 (`%FF`, or the overlong
  `%C0%AE` that old decoders read as `.`), and a dot segment with `;`
  parameters (`..;`).
- Escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded. Every
  other escape keeps its byte, with the hex upper-cased. Printable characters
  outside RFC 3986 pchar (`"<>[]^`{|}`) are percent-encoded. Runs of `/` are
  then merged, and dot segments are removed (RFC 3986 §5.2.4, clamped at the
  root). A trailing slash is kept, and a trailing `.` or `..` leaves one.
  The canonical path therefore holds only pchar, `/` and upper-case `%XX`.
- The query is everything after the first `?`, kept byte for byte. It may
  not contain NUL, control characters, space, `#` or non-ASCII.

With `fold_case` (the `path_case: insensitive` setting, for origins that ignore
case), the canonical path's letters outside `%XX` escapes are then lower-cased,
so the decision and the forwarded request see one spelling of the path (and
policy globs must be written in lower case). Escaped bytes keep their case.

The result is idempotent: `canonicalize(m, t.path + q)` gives back the same
path. It also holds no `//`, no `.` or `..` segment, and no escape a decoder
could turn into one.

`check_host(value)` returns the request's host, lower-cased, without port or
trailing dot. Anything outside the host-name or IP-literal grammar is a 400.
"""

from __future__ import annotations

import ipaddress
import re
import string
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_HEX = frozenset(string.hexdigits)
# RFC 3986 pchar and "/": what a canonical path holds besides "%XX" escapes.
_CANONICAL_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
# Printable ASCII except "\" and "#" ("?" never reaches the path). Browsers send
# "|", "^", "[" and "]" raw in paths, so these are accepted and percent-encoded,
# together with the rest of this set that is not pchar.
_PATH_OK = re.compile(r"[!-\"$-\[\]-~]*")
_NOT_PCHAR = re.compile(r"[\"<>\[\]^`{|}]")
_QUERY_OK = re.compile(r"[!-\"$-~]*")
# Escapes whose decoded byte would change the path's structure or end it.
_FORBIDDEN_ESCAPES = {
    0x2F: ("encoded_slash", "an encoded '/' (%2F) in the path is ambiguous"),
    0x5C: ("encoded_backslash", "an encoded '\\' (%5C) in the path is ambiguous"),
    0x00: ("nul", "NUL in the path"),
}
# After "%25", these would survive one decoding as "/", "\", "." or NUL. Only an
# origin that decodes twice would act on them, and the gate cannot tell which do.
_DOUBLE_ENCODED = frozenset({"2f", "5c", "2e", "00"})
_MULTI_SLASH = re.compile(r"//+")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_PORT = re.compile(r"[0-9]{0,5}")


class BadRequest(Exception):
    """A request the gate refuses before it decides anything. The upstream sees nothing."""

    def __init__(self, reason: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        # A short snake_case label from a fixed set; it is also a metric label value.
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True)
class Target:
    path: str
    query: str  # raw, without "?"; "" when absent


def canonicalize(method: str, raw_target: str, *, fold_case: bool = False) -> Target:
    """The canonical form of an origin-form request target; BadRequest otherwise.
    `fold_case`: lower-case the path's letters outside escapes (see the module docstring)."""
    if method.upper() == "CONNECT":
        raise BadRequest("connect", "CONNECT is not proxied")
    if not raw_target.startswith("/"):
        raise _not_origin_form(raw_target)
    path, _, query = raw_target.partition("?")
    if query and not _QUERY_OK.fullmatch(query):
        raise _bad_char(query, "query")
    # Fast path, which most requests take: nothing to decode, encode or resolve.
    plain = "%" not in path and "/." not in path and "//" not in path
    if not (plain and _CANONICAL_CHARS.fullmatch(path)):
        path = _canonical_path(path)
    if fold_case:
        path = _lower_outside_escapes(path)
    return Target(path, query)


def _lower_outside_escapes(path: str) -> str:
    # A canonical path's escapes are exactly "%" and two upper-case hex digits.
    if "%" not in path:
        return path.lower()
    head, *rest = path.split("%")
    return head.lower() + "".join("%" + piece[:2] + piece[2:].lower() for piece in rest)


def _not_origin_form(raw_target: str) -> BadRequest:
    if raw_target == "*":
        # `OPTIONS *` asks about the server itself. Answering it would mean
        # speaking for the upstream, and forwarding it would send a request
        # that no path policy covers.
        return BadRequest("asterisk_form", "asterisk-form request target is not accepted")
    if "://" in raw_target:
        return BadRequest("absolute_form", "absolute-form request target is not accepted")
    return BadRequest("not_origin_form", "request target must start with '/'")


def _canonical_path(path: str) -> str:
    if not _PATH_OK.fullmatch(path):
        raise _bad_char(path, "path")
    if "%" in path:
        path = _normalise_escapes(path)
    # One spelling per path: "/a|b" and "/a%7Cb" are the same resource to any
    # decoder, and policy globs are written in the encoded form.
    path = _NOT_PCHAR.sub(_percent_encode, path)
    # Slashes are merged before dot segments are resolved, as nginx and most
    # origins do: `/a//../b` is `/b`, not RFC 3986's `/a/b`. The forwarded form
    # contains neither, so the upstream cannot read it any other way.
    return _remove_dot_segments(_MULTI_SLASH.sub("/", path))


def _normalise_escapes(path: str) -> str:
    pieces = path.split("%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        pair = piece[:2]
        if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
            raise BadRequest("bad_escape", "'%' must be followed by two hex digits")
        value = int(pair, 16)
        if value in _FORBIDDEN_ESCAPES:
            raise BadRequest(*_FORBIDDEN_ESCAPES[value])
        if value < 0x20 or value == 0x7F:
            raise BadRequest("control_char", "encoded control character in the path")
        if value == 0x25 and piece[2:4].lower() in _DOUBLE_ENCODED:
            raise BadRequest("double_encoding", "double-encoded '/', '\\', '.' or NUL")
        char = chr(value)
        out.append(char if char in _UNRESERVED else "%" + pair.upper())
        out.append(piece[2:])
    normalised = "".join(out)
    if any(pair[0] in "89abcdefABCDEF" for pair in pieces[1:]):
        # Escaped bytes above 0x7F must spell UTF-8. Origins decode other bytes
        # their own way (dropped, replaced, read as Latin-1, overlong forms such
        # as %C0%AE taken for "."), so the path they act on is not the one decided on.
        try:
            unquote_to_bytes(normalised).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("invalid_utf8", "escaped bytes in the path are not UTF-8") from None
    return normalised


def _percent_encode(match: re.Match[str]) -> str:
    return f"%{ord(match.group()):02X}"


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on a path that starts with "/" and has no empty segments
    (except a trailing one). `..` at the root stays at the root."""
    if "/." not in path:
        return path
    segments = path.split("/")[1:]
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            if out:
                out.pop()
        elif segment == ".":
            pass
        elif segment.startswith(".") and segment.partition(";")[0] in (".", ".."):
            # Tomcat, Jetty and Spring resolve `/..;x/` as `..`. The gate
            # would not, so the form is refused.
            raise BadRequest("dot_segment_param", "a dot segment with ';' parameters")
        else:
            out.append(segment)
    if segments[-1] in (".", ".."):
        out.append("")  # a trailing dot segment names a directory: keep its slash
    return "/" + "/".join(out)


def _bad_char(text: str, where: str) -> BadRequest:
    """The reason for the first character that `_PATH_OK`/`_QUERY_OK` refused."""
    for char in text:
        code = ord(char)
        if code == 0:
            return BadRequest("nul", f"NUL in the {where}")
        if code < 0x20 or code == 0x7F:
            return BadRequest("control_char", f"control character in the {where}")
        if char == " ":
            return BadRequest("space", f"unencoded space in the {where}")
        if code > 0x7F:
            return BadRequest("non_ascii", f"non-ASCII character in the {where}")
        if char == "#":
            return BadRequest("fragment", "a fragment is not part of a request target")
        if char == "\\":
            return BadRequest("backslash", "'\\' in the path is ambiguous")
    return BadRequest("bad_char", f"character not allowed in the {where}")


# A site sees a handful of Host values; checking one costs microseconds, looking it
# up a tenth of that. Only good values are kept, and the map is emptied when full
# so that a flood of made-up hosts cannot grow it.
_HOSTS: dict[str, str] = {}
_MAX_HOSTS = 1024


def check_host(host_header: str | None) -> str:
    """The request's host: lower-cased, no port, no trailing dot. IPv6 literals
    keep their brackets in compressed form. BadRequest("bad_host") otherwise."""
    if not host_header:
        raise BadRequest("bad_host", "missing or empty Host header")
    known = _HOSTS.get(host_header)
    if known is not None:
        return known
    host = _check_host(host_header)
    if len(_HOSTS) >= _MAX_HOSTS:
        _HOSTS.clear()
    _HOSTS[host_header] = host
    return host


def _check_host(host_header: str) -> str:
    host = host_header.strip()
    if not host.isascii() or len(host) > 260:
        raise BadRequest("bad_host", "malformed Host header")
    host = host.lower()
    if host.startswith("["):
        name, bracket, port = host[1:].partition("]")
        name = _ipv6_literal(name)
        if not bracket or (port and not port.startswith(":")):
            raise BadRequest("bad_host", "malformed Host header")
        port = port[1:]
    else:
        name, _, port = host.partition(":")
        name = _host_name(name)
    if not _PORT.fullmatch(port) or (port and int(port) > 65535):
        raise BadRequest("bad_host", "malformed port in Host header")
    return name


def _ipv6_literal(text: str) -> str:
    try:
        # IPv6Address accepts a "%zone" suffix, which has no place in a Host.
        if "%" in text:
            raise ValueError(text)
        return f"[{ipaddress.IPv6Address(text).compressed}]"
    except ValueError:
        raise BadRequest("bad_host", "malformed IPv6 literal in Host header") from None


def _host_name(name: str) -> str:
    # A trailing dot names the same host. Dropping it keeps `site.example.` from
    # slipping past a policy written for `site.example`.
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        raise BadRequest("bad_host", "malformed Host header")
    # One label at a time: a single regex over the whole name with optional
    # dots backtracks exponentially on a long label followed by a bad character.
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise BadRequest("bad_host", "malformed Host header")
    return name
