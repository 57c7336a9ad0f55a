"""Path and host globs compiled into `Pattern` values.

Path globs are matched against the canonical path, case-sensitively:
`*` is any run of characters within one segment, `**` any number of whole
segments, `?` one character other than `/`, `{a,b}` one of the alternatives;
everything else is literal. `/premium/**` matches `/premium`, `/premium/` and
everything below. Host globs are case-insensitive; `*.example.com` matches
any subdomain but not `example.com` itself.

Exact and prefix patterns (the common case) compile to string comparisons;
the rest to a regular expression whose wildcards cannot overlap, with a cap
on their number so no pattern can make matching slow.
"""

from __future__ import annotations

import re

from gatekeeper.core.model import Pattern

MAX_WILDCARDS = 8


class GlobError(ValueError):
    pass


def compile_path_glob(text: str) -> Pattern:
    if not text.startswith("/"):
        raise GlobError("a path glob must start with '/'")
    if not any(c in text for c in "*?{"):
        return Pattern(text, text.__eq__)
    if text.endswith("/**") and not any(c in text[:-3] for c in "*?{}"):
        base = text[:-3]
        below = base + "/"
        return Pattern(text, lambda p: p == base or p.startswith(below))
    regex = re.compile(_translate(text, segment=r"[^/]", any_depth=True))
    return Pattern(text, lambda p: regex.fullmatch(p) is not None)


def compile_host_glob(text: str) -> Pattern:
    host = text.strip().lower()
    if not host or any(c in host for c in "/: "):
        raise GlobError("a host glob is a host name, optionally with '*' (no scheme or port)")
    if "*" not in host and "?" not in host and "{" not in host:
        return Pattern(text, host.__eq__)
    if host.startswith("*.") and not any(c in host[2:] for c in "*?{"):
        suffix = host[1:]
        return Pattern(text, lambda h: h.endswith(suffix) and len(h) > len(suffix))
    regex = re.compile(_translate(host, segment=r"[^.]", any_depth=False))
    return Pattern(text, lambda h: regex.fullmatch(h) is not None)


def _translate(glob: str, segment: str, any_depth: bool) -> str:
    out: list[str] = []
    wildcards = 0
    free = 0
    i, n = 0, len(glob)
    while i < n:
        ch = glob[i]
        if ch == "*":
            wildcards += 1
            if any_depth and glob.startswith("**", i):
                if glob.startswith("/**", i - 1) and (i + 2 == n or glob[i + 2] == "/"):
                    # "/**" also matches the directory itself: the slash is optional.
                    out.pop()
                    out.append("(?:/.*)?" if i + 2 == n else "(?:/[^/]+)*")
                else:
                    # Free-floating ".*" runs are what can make a regex slow; allow few.
                    free += 1
                    if free > 2:
                        raise GlobError("more than two '**' that are not whole segments")
                    out.append(".*")
                i += 2
                continue
            out.append(segment + "*")
        elif ch == "?":
            wildcards += 1
            out.append(segment)
        elif ch == "{":
            end = glob.find("}", i)
            if end < 0:
                raise GlobError("'{' without a closing '}'")
            alternatives = glob[i + 1 : end].split(",")
            if any(c in glob[i + 1 : end] for c in "{*?"):
                raise GlobError("wildcards or nesting inside '{...}' are not supported")
            out.append("(?:" + "|".join(re.escape(a) for a in alternatives) + ")")
            wildcards += 1
            i = end + 1
            continue
        elif ch == "}":
            raise GlobError("'}' without an opening '{'")
        else:
            out.append(re.escape(ch))
        i += 1
    if wildcards > MAX_WILDCARDS:
        raise GlobError(f"more than {MAX_WILDCARDS} wildcards in one glob")
    return "".join(out)
