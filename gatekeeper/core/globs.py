"""Policy match patterns (path globs, host globs, header-value globs and header
regexes) compiled into `Pattern` values.

Path globs are matched against the canonical path (see `gatekeeper.edge.target`),
case-sensitively:

- `*` is any run of characters within one segment (never `/`);
- `**` is any number of whole segments, and must be a segment of its own:
  `/premium/**` matches `/premium`, `/premium/` and everything below,
  `/a/**/b` matches `/a/b` and `/a/x/y/b`;
- `?` is one character other than `/`;
- `{a,b}` is one of the alternatives (literal text, no nesting);
- everything else is literal. Literal text is put in canonical form first,
  so `/café` matches the request path `/caf%C3%A9`; text that no canonical
  path contains (`//`, dot segments, spaces, `#`) is refused because a rule
  using it could never match.

Host globs are case-insensitive and never contain a port: they are
lower-cased here and matched against the host as the edge gives it
(`edge.target.check_host`: lower-case, without port). `*` is any run within
one label, except that a leading `*.` stands for one or more labels, so
`*.example.com` matches every subdomain but not `example.com` itself; `*`
alone matches every host. `?` and `{a,b}` work as in paths.

Header-value globs know only `*`, any run of characters; they are
case-sensitive. Header regexes are RE2 syntax and match anywhere in the value.

Speed: the gate calls `pattern.match` about thirty times per request, so the
common shapes compile to plain string operations: an exact glob to `==`,
`/x/**` to `startswith`, alternatives of literals to a set lookup. Everything
else runs on RE2, which matches in linear time whatever the input: a glob
with several `*` in one segment would make a backtracking engine take
polynomial time on an attacker's path. Wildcards are still capped per glob
(`MAX_WILDCARDS`) to keep each compiled automaton small.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

import re2

from gatekeeper.core.model import Matcher, Pattern

MAX_WILDCARDS = 8
# Up to this many expansions of `{...}` become a set of strings instead of a regex.
MAX_EXPANSIONS = 64

_PATH_LITERAL = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()+,;=:@/"
)
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
_HOST_LITERAL = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")


class GlobError(ValueError):
    """A pattern that cannot be compiled. The message is written for the policy author."""


class _Wild(Enum):
    STAR = "*"
    ONE = "?"
    SEGMENTS = "/**"  # includes the slash before it: zero or more "/segment"


@dataclass(frozen=True, slots=True)
class _Alt:
    options: tuple[str, ...]


_Piece = str | _Wild | _Alt
# Puts a literal run of glob text into the form the matched values have.
_Literal = Callable[[str], str]


def _options(bytewise: bool = False) -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # a bad policy regex is reported once, as a policy problem
    if bytewise:
        options.encoding = re2.Options.Encoding.LATIN1
    return options


_RE2_OPTIONS = _options()
_RE2_BYTEWISE = _options(bytewise=True)


# -- public compilers ---------------------------------------------------------------------


def compile_path_glob(text: str) -> Pattern:
    if not text.startswith("/"):
        raise GlobError("a path glob must start with '/'")
    pieces = _parse(text, _canonical_path_text, allow_segments=True)
    _check_segments(text)
    return Pattern(text, _path_matcher(pieces))


def compile_host_glob(text: str) -> Pattern:
    host = text.strip().lower()
    if not host:
        raise GlobError("a host glob must not be empty")
    if host.startswith("[") and host.endswith("]"):
        return Pattern(text, host.__eq__)  # IPv6 literal, compared exactly
    if "/" in host:
        raise GlobError("write a host name only, without scheme or path")
    if ":" in host:
        raise GlobError("write the host without a port: ports are ignored when matching")
    if "**" in host:
        raise GlobError("'**' has no meaning in a host; '*.example.com' covers every subdomain")
    if host == "*":
        return Pattern(text, _any)
    any_subdomain = host.startswith("*.")
    pieces = _parse(host[2:] if any_subdomain else host, _host_text, allow_segments=False)
    if any_subdomain:
        return Pattern(text, _subdomain_matcher(pieces))
    return Pattern(text, _host_matcher(pieces))


def compile_value_glob(text: str) -> Pattern:
    """A header-value glob: `*` is any run of characters, everything else is literal."""
    parts = text.split("*")
    if len(parts) - 1 > MAX_WILDCARDS:
        raise GlobError(f"more than {MAX_WILDCARDS} '*' in one glob")
    if len(parts) == 1:
        return Pattern(text, text.__eq__)
    if len(parts) == 2 and not parts[1]:
        return Pattern(text, _starts_with(parts[0]))
    if len(parts) == 2 and not parts[0]:
        return Pattern(text, _ends_with(parts[1]))
    if len(parts) == 3 and not parts[0] and not parts[2]:
        return Pattern(text, _contains(parts[1]))
    # Byte-wise (Latin-1 mode), so "*" also runs over header bytes that are not
    # UTF-8; the literal parts are written as their UTF-8 bytes.
    literal = [re2.escape(p.encode("utf-8").decode("latin-1")) for p in parts]
    return Pattern(text, _re2_matcher("(?s)" + ".*".join(literal), anchored=True, bytewise=True))


def compile_regex(text: str) -> Pattern:
    """An RE2 regular expression that matches anywhere in the value (anchor with ^ and $)."""
    try:
        # For RE2's own error message: the set below would only say "failed".
        re2.compile(text, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise GlobError(
            f"RE2 cannot compile {text!r}: {reason} (RE2 has no backreferences or lookaround)"
        ) from None
    return Pattern(text, _re2_matcher(text, anchored=False))


# -- parsing ------------------------------------------------------------------------------


def _parse(text: str, literal: _Literal, allow_segments: bool) -> list[_Piece]:
    """The glob as literal runs (already canonical), wildcards and alternatives."""
    pieces: list[_Piece] = []
    run: list[str] = []
    wildcards = 0
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "*?{":
            if run:
                pieces.append(literal("".join(run)))
                run.clear()
            wildcards += 1
            if wildcards > MAX_WILDCARDS:
                raise GlobError(f"more than {MAX_WILDCARDS} wildcards in one glob")
        if ch == "*" and text.startswith("**", i):
            if not allow_segments:
                raise GlobError("'**' is not allowed here")
            _take_segments(text, i, pieces)
            i += 2
        elif ch == "*":
            pieces.append(_Wild.STAR)
            i += 1
        elif ch == "?":
            pieces.append(_Wild.ONE)
            i += 1
        elif ch == "{":
            i = _take_alternatives(text, i, pieces, literal)
        elif ch == "}":
            raise GlobError("'}' without an opening '{'")
        else:
            run.append(ch)
            i += 1
    if run:
        pieces.append(literal("".join(run)))
    return pieces


def _take_segments(text: str, i: int, pieces: list[_Piece]) -> None:
    whole = i > 0 and text[i - 1] == "/" and (i + 2 == len(text) or text[i + 2] == "/")
    if not whole or text.startswith("***", i):
        raise GlobError(
            "'**' must be a whole segment, as in /a/**/b; use '*' within a segment"
        )
    # The piece includes the slash before it, so "/a/**" also matches "/a" itself.
    last = pieces[-1] if pieces else None
    if not isinstance(last, str) or not last.endswith("/"):
        raise GlobError("'**' must follow a '/'")
    if len(last) == 1:
        pieces.pop()
    else:
        pieces[-1] = last[:-1]
    pieces.append(_Wild.SEGMENTS)


def _take_alternatives(text: str, i: int, pieces: list[_Piece], literal: _Literal) -> int:
    end = text.find("}", i)
    if end < 0:
        raise GlobError("'{' without a closing '}'")
    inner = text[i + 1 : end]
    if any(c in inner for c in "{*?"):
        raise GlobError("'{...}' holds literal alternatives only (no wildcards, no nesting)")
    pieces.append(_Alt(tuple(dict.fromkeys(literal(a) for a in inner.split(",")))))
    return end + 1


def _canonical_path_text(text: str) -> str:
    """Literal glob text in the form the edge gives request paths (`edge.target`)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "%":
            out.append(_canonical_escape(text[i + 1 : i + 3]))
            i += 3
            continue
        if ch in _PATH_LITERAL:
            out.append(ch)
        elif ord(ch) > 0x7F:
            # Requests carry non-ASCII percent-encoded as UTF-8; match that form.
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
        else:
            raise GlobError(
                f"{ch!r} never appears in a request path; percent-encode it "
                f"(%{ord(ch):02X}) if the path really contains it"
            )
        i += 1
    return "".join(out)


def _canonical_escape(pair: str) -> str:
    if len(pair) != 2 or not set(pair) <= _HEX:
        raise GlobError("'%' must start a two-digit hex escape such as %20")
    value = int(pair, 16)
    if value in (0x2F, 0x5C) or value < 0x20 or value == 0x7F:
        raise GlobError(f"%{pair} is refused at the edge, so this glob could never match")
    char = chr(value)
    return char if char in _UNRESERVED else "%" + pair.upper()


def _host_text(text: str) -> str:
    bad = set(text) - _HOST_LITERAL
    if bad:
        raise GlobError(f"{sorted(bad)[0]!r} is not allowed in a host name")
    return text


def _check_segments(text: str) -> None:
    if "//" in text:
        raise GlobError("'//' never appears in a canonical path (runs of '/' are merged)")
    if any(seg in (".", "..") for seg in text.split("/")):
        raise GlobError("'.' and '..' segments are resolved before matching; remove them")


# -- matchers -----------------------------------------------------------------------------


def _path_matcher(pieces: list[_Piece]) -> Matcher:
    """The cheapest matcher for the glob's shape; RE2 for the shapes without one."""
    if _literal_only(pieces):
        words = _expand(pieces)
        if words is not None:
            return _one_of(words)
    if pieces and pieces[-1] is _Wild.SEGMENTS and _literal_only(pieces[:-1]):
        bases = _expand(pieces[:-1])
        if bases is not None:
            return _under(bases)
    if len(pieces) <= 3 and pieces.count(_Wild.STAR) == 1 and _plain_text(pieces):
        # "/x/*", "/*.pdf", "/archive/*/full": one star, literal text around it.
        star = pieces.index(_Wild.STAR)
        return _one_segment(str(pieces[0]), str(pieces[2]) if star + 1 < len(pieces) else "")
    deep = _deep_suffix(pieces)
    if deep is not None:
        return _below_with_suffix(*deep)
    return _re2_matcher(_regex(pieces, segment="[^/]"), anchored=True)


def _plain_text(pieces: list[_Piece]) -> bool:
    return all(p is _Wild.STAR or isinstance(p, str) for p in pieces)


def _deep_suffix(pieces: list[_Piece]) -> tuple[str, tuple[str, ...]] | None:
    """For "/base/**/*suffix" (suffix: literal text or alternatives, no "/"), the head
    "/base/" and the suffixes; None for any other shape."""
    if _Wild.SEGMENTS not in pieces:
        return None
    at = pieces.index(_Wild.SEGMENTS)
    before, after = pieces[:at], pieces[at + 1 :]
    if len(before) > 1 or (before and not isinstance(before[0], str)):
        return None
    if after[:2] != ["/", _Wild.STAR] or not _literal_only(after[2:]):
        return None
    suffixes = _expand(after[2:])
    if suffixes is None or any("/" in s for s in suffixes):
        return None
    return (str(before[0]) if before else "") + "/", suffixes


def _host_matcher(pieces: list[_Piece]) -> Matcher:
    if _literal_only(pieces):
        words = _expand(pieces)
        if words is not None:
            return _one_of(words)
    return _re2_matcher(_regex(pieces, segment=r"[^.]"), anchored=True)


def _subdomain_matcher(pieces: list[_Piece]) -> Matcher:
    """`*.` + rest: one or more labels, then `.rest`."""
    if _literal_only(pieces):
        words = _expand(pieces)
        if words is not None:
            return _ends_with_any(tuple("." + w for w in words))
    return _re2_matcher(r"[^.]+(?:\.[^.]+)*\." + _regex(pieces, segment=r"[^.]"), True)


def _literal_only(pieces: Iterable[_Piece]) -> bool:
    return all(isinstance(p, str | _Alt) for p in pieces)


def _expand(pieces: list[_Piece]) -> tuple[str, ...] | None:
    """Every string the literal pieces spell, or None when there would be too many."""
    choices: list[tuple[str, ...]] = [p.options if isinstance(p, _Alt) else (str(p),)
                                      for p in pieces]
    count = 1
    for options in choices:
        count *= len(options)
    if count > MAX_EXPANSIONS:
        return None
    return tuple("".join(parts) for parts in itertools.product(*choices))


def _regex(pieces: list[_Piece], segment: str) -> str:
    out: list[str] = []
    for piece in pieces:
        if isinstance(piece, str):
            out.append(re2.escape(piece))
        elif isinstance(piece, _Alt):
            out.append("(?:" + "|".join(re2.escape(o) for o in piece.options) + ")")
        elif piece is _Wild.STAR:
            out.append(segment + "*")
        elif piece is _Wild.ONE:
            out.append(segment)
        else:
            out.append("(?:/[^/]*)*")
    return "".join(out)


# Small closures rather than lambdas in place, so each shape has one tested definition.


def _one_of(words: tuple[str, ...]) -> Matcher:
    if len(words) == 1:
        return words[0].__eq__
    return frozenset(words).__contains__


def _under(bases: tuple[str, ...]) -> Matcher:
    """The bases themselves and everything below them."""
    exact = frozenset(bases)
    below = tuple(b + "/" for b in bases)

    def matches(path: str) -> bool:
        return path.startswith(below) or path in exact

    return matches


def _one_segment(left: str, right: str) -> Matcher:
    """left + one run without "/" + right."""
    least = len(left) + len(right)

    def matches(path: str) -> bool:
        return (
            path.startswith(left)
            and path.endswith(right)
            and len(path) >= least
            and path.find("/", len(left), len(path) - len(right)) < 0
        )

    return matches


def _below_with_suffix(head: str, suffixes: tuple[str, ...]) -> Matcher:
    """Paths starting with `head` (which ends in "/") and ending with a suffix. A
    suffix has no "/", so it cannot overlap the head: no length check is needed."""

    def matches(path: str) -> bool:
        return path.startswith(head) and path.endswith(suffixes)

    return matches


def _starts_with(prefix: str) -> Matcher:
    def matches(value: str) -> bool:
        return value.startswith(prefix)

    return matches


def _ends_with(suffix: str) -> Matcher:
    def matches(value: str) -> bool:
        return value.endswith(suffix)

    return matches


def _ends_with_any(suffixes: tuple[str, ...]) -> Matcher:
    """Hosts that end with one of the suffixes (each starts with ".") and have a
    label before it: "a.example.com", not ".example.com"."""
    if len(suffixes) == 1:
        (suffix,) = suffixes
        size = len(suffix)

        def matches_one(host: str) -> bool:
            return host.endswith(suffix) and len(host) > size

        return matches_one

    def matches(host: str) -> bool:
        return host.endswith(suffixes) and not host.startswith(".")

    return matches


def _any(value: str) -> bool:
    return True


def _contains(part: str) -> Matcher:
    def matches(value: str) -> bool:
        return part in value

    return matches


def _re2_matcher(regex: str, anchored: bool, bytewise: bool = False) -> Matcher:
    # A one-pattern RE2 set: the public API with the least per-call overhead
    # (the `re2.compile` wrapper spends microseconds in Python per match).
    options = _RE2_BYTEWISE if bytewise else _RE2_OPTIONS
    regex_set = (re2.Set.FullMatchSet if anchored else re2.Set.SearchSet)(options)
    regex_set.Add(regex.encode("latin-1") if bytewise else regex)
    regex_set.Compile()
    match = regex_set.Match

    def matches(value: str) -> bool:
        # surrogateescape: header bytes that are not UTF-8 must not raise here.
        return match(value.encode("utf-8", "surrogateescape")) is not None

    return matches
