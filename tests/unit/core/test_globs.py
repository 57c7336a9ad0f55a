"""Path, host and header-value globs, and header regexes.

The tables pin the documented semantics; the Hypothesis tests compare every
compiled shape (string fast paths and RE2 alike) with a small, obviously
correct reference matcher written independently of the compiler.
"""

from __future__ import annotations

import itertools
import re
from fnmatch import fnmatchcase

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gatekeeper.core.globs import (
    MAX_WILDCARDS,
    GlobError,
    compile_host_glob,
    compile_path_glob,
    compile_regex,
    compile_value_glob,
)

PATHS = [
    # exact
    ("/robots.txt", "/robots.txt", True),
    ("/robots.txt", "/robots.txt/", False),
    ("/robots.txt", "/robots.txt/x", False),
    ("/Case", "/case", False),
    ("/a.b", "/axb", False),
    ("/a+b", "/a+b", True),
    ("/a%5bb%5d", "/a%5Bb%5D", True),
    # "/**" at the end: the directory itself, with or without slash, and all below
    ("/premium/**", "/premium", True),
    ("/premium/**", "/premium/", True),
    ("/premium/**", "/premium/a/b", True),
    ("/premium/**", "/premiumx", False),
    ("/premium/**", "/", False),
    ("/**", "/", True),
    ("/**", "/any/thing", True),
    # "/**/" in the middle: zero or more segments
    ("/a/**/c", "/a/c", True),
    ("/a/**/c", "/a/x/y/c", True),
    ("/a/**/c", "/ac", False),
    ("/a/**/c", "/a/x/c/d", False),
    ("/**/*.pdf", "/a/b/c.pdf", True),
    ("/**/*.pdf", "/c.pdf", True),
    ("/**/*.pdf", "/c.pdf/x", False),
    ("/docs/**/*.pdf", "/docs/x.pdf", True),
    ("/docs/**/*.pdf", "/docs.pdf", False),
    ("/a/**/b/**", "/a/x/b/y/z", True),
    # "*" stays within one segment
    ("/a/*/c", "/a/b/c", True),
    ("/a/*/c", "/a//c", True),
    ("/a/*/c", "/a/b/d/c", False),
    ("/a/*", "/a/", True),
    ("/a/*", "/a/b/", False),
    ("/archive/*/full", "/archive/2024/full", True),
    ("/archive/*/full", "/archive/full", False),
    ("/*.html", "/index.html", True),
    ("/*.html", "/d/index.html", False),
    ("/a*b*c", "/axxbyyc", True),
    ("/a*b*c", "/ab/c", False),
    # "?" is one character other than "/"
    ("/v?/items", "/v1/items", True),
    ("/v?/items", "/v10/items", False),
    ("/v?/items", "/v//items", False),
    # alternatives
    ("/*.{jpg,png}", "/x.jpg", True),
    ("/*.{jpg,png}", "/x.gif", False),
    ("/*.{jpg,png}", "/d/x.jpg", False),
    ("/{robots.txt,sitemap.xml}", "/sitemap.xml", True),
    ("/{a,b}/**", "/b/c", True),
    ("/{a,b}/**", "/a", True),
    ("/{a,b}/**", "/bc", False),
    ("/page{,.html}", "/page", True),
    ("/page{,.html}", "/page.html", True),
    # literal text in canonical form
    ("/café", "/caf%C3%A9", True),
    ("/a%7eb", "/a~b", True),
    ("/a%2cb", "/a%2Cb", True),
]


@pytest.mark.parametrize(("glob", "path", "expected"), PATHS)
def test_path_glob(glob: str, path: str, expected: bool) -> None:
    pattern = compile_path_glob(glob)
    assert pattern.match(path) is expected
    assert pattern.text == glob


@pytest.mark.parametrize(
    ("glob", "host", "expected"),
    [
        ("example.com", "example.com", True),
        ("Example.COM", "example.com", True),
        ("example.com", "www.example.com", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", ".example.com", False),
        ("*.example.com", "badexample.com", False),
        ("*.{a,b}.com", "x.b.com", True),
        ("*.{a,b}.com", "b.com", False),
        ("*.ex*.com", "q.exy.com", True),
        ("*.ex*.com", "exy.com", False),
        ("shop-?.example.com", "shop-1.example.com", True),
        ("shop-?.example.com", "shop-12.example.com", False),
        ("www*.example.com", "www2.example.com", True),
        ("www*.example.com", "www.a.example.com", False),
        ("*", "anything.example", True),
        ("[::1]", "[::1]", True),
    ],
)
def test_host_glob(glob: str, host: str, expected: bool) -> None:
    assert compile_host_glob(glob).match(host) is expected


@pytest.mark.parametrize(
    ("glob", "value", "expected"),
    [
        ("exact", "exact", True),
        ("exact", "Exact", False),
        ("Bearer *", "Bearer abc", True),
        ("Bearer *", "bearer abc", False),
        ("*.example.com/", "https://a.example.com/", True),
        ("*token*", "my-token-1", True),
        ("*token*", "tok", False),
        ("https://*.example.com/*", "https://a.b.example.com/x?y", True),
        ("https://*.example.com/*", "http://a.example.com/x", False),
        ("a?b", "a?b", True),  # only "*" is special in value globs
        ("a?b", "axb", False),
        ("a*b*c", "a\nb\nc", True),
    ],
)
def test_value_glob(glob: str, value: str, expected: bool) -> None:
    assert compile_value_glob(glob).match(value) is expected


def test_regex_matches_anywhere_unless_anchored() -> None:
    assert compile_regex("bot").match("my-bot/1.0")
    assert not compile_regex("^bot").match("my-bot/1.0")
    assert compile_regex("(?i)^MOZILLA").match("mozilla/5.0")


def test_value_matchers_survive_undecodable_header_bytes() -> None:
    # aiohttp decodes header bytes with surrogateescape; matching must not raise.
    value = "abc\udcff"
    assert compile_regex("^abc").match(value)
    assert compile_value_glob("a*c*").match(value)  # "*" runs over any byte


@pytest.mark.parametrize(
    ("glob", "message"),
    [
        ("premium", "must start with '/'"),
        ("/a/{b", "without a closing '}'"),
        ("/a*/}", "without an opening '{'"),
        ("/{a,*}", "literal alternatives only"),
        ("/{a,{b}}", "literal alternatives only"),
        ("/" + "*/" * (MAX_WILDCARDS + 1), f"more than {MAX_WILDCARDS} wildcards"),
        ("/**x", "must be a whole segment"),
        ("/a**", "must be a whole segment"),
        ("/a/***", "must be a whole segment"),
        ("/a//b", "'//' never appears"),
        ("/a/./b", "'.' and '..' segments"),
        ("/a/..", "'.' and '..' segments"),
        ("/a b", "percent-encode it (%20)"),
        ("/a#b", "never appears in a request path"),
        ("/a[b]", "percent-encode it (%5B)"),
        ("/a\\b", "never appears in a request path"),
        ("/%2F", "refused at the edge"),
        ("/%zz", "two-digit hex escape"),
    ],
)
def test_bad_path_globs_are_refused_with_a_reason(glob: str, message: str) -> None:
    with pytest.raises(GlobError, match=re.escape(message)):
        compile_path_glob(glob)


def test_eight_wildcards_are_fine() -> None:
    assert compile_path_glob("/" + "*/" * MAX_WILDCARDS).match("/a/b/c/d/e/f/g/h/")


@pytest.mark.parametrize(
    ("glob", "message"),
    [
        ("", "must not be empty"),
        ("https://example.com", "without scheme or path"),
        ("example.com:8080", "without a port"),
        ("a.**.com", "'**' has no meaning in a host"),
        ("exa mple.com", "not allowed in a host name"),
        ("ex_ample.com/", "without scheme or path"),
    ],
)
def test_bad_host_globs_are_refused_with_a_reason(glob: str, message: str) -> None:
    with pytest.raises(GlobError, match=re.escape(message)):
        compile_host_glob(glob)


def test_bad_value_globs_and_regexes_are_refused() -> None:
    with pytest.raises(GlobError, match="more than 8"):
        compile_value_glob("*" * (MAX_WILDCARDS + 1))
    with pytest.raises(GlobError, match=r"RE2 cannot compile '\(a\)\\\\1'"):
        compile_regex(r"(a)\1")
    with pytest.raises(GlobError, match="lookaround"):
        compile_regex("(?=x)")


def test_adversarial_inputs_match_in_linear_time() -> None:
    # A backtracking engine needs about n**6 steps for this glob on this path
    # (it would not return for hours); RE2 answers in microseconds.
    pattern = compile_path_glob("/*a*a*a*a*a*a*b")
    assert pattern.match("/" + "a" * 20_000) is False
    header = compile_value_glob("*a*a*a*a*a*a*b")
    assert header.match("a" * 20_000) is False


# -- reference matchers and properties ----------------------------------------------------


def _expand_braces(glob: str) -> list[str]:
    parts = re.split(r"(\{[^{}]*\})", glob)
    choices = [p[1:-1].split(",") if p.startswith("{") else [p] for p in parts]
    return ["".join(c) for c in itertools.product(*choices)]


def _segments_match(globs: list[str], parts: list[str]) -> bool:
    if not globs:
        return not parts
    if globs[0] == "**":
        return any(_segments_match(globs[1:], parts[i:]) for i in range(len(parts) + 1))
    return (
        bool(parts)
        and fnmatchcase(parts[0], globs[0].replace("[", "[[]"))
        and _segments_match(globs[1:], parts[1:])
    )


def reference_path_match(glob: str, path: str) -> bool:
    """Segment by segment: "**" is any number of segments, fnmatch within one."""
    return any(
        _segments_match(g.split("/"), path.split("/")) for g in _expand_braces(glob)
    )


def reference_host_match(glob: str, host: str) -> bool:
    glob = glob.lower()
    if glob.startswith("*."):
        labels = host.split(".")
        rest = glob[2:].split(".")
        return len(labels) > len(rest) and all(labels[:-len(rest)]) and any(
            all(fnmatchcase(h, g) for h, g in zip(labels[-len(rest):], alt.split("."),
                                                  strict=True))
            for alt in _expand_braces(glob[2:])
        )
    return any(
        len(labels := host.split(".")) == len(alt.split("."))
        and all(fnmatchcase(h, g) for h, g in zip(labels, alt.split("."), strict=True))
        for alt in _expand_braces(glob)
    )


_SEGMENT_TEXT = st.text(alphabet="ab.", min_size=1, max_size=3)
_GLOB_SEGMENT = st.one_of(
    _SEGMENT_TEXT,
    st.just("**"),
    st.just("*"),
    st.builds(lambda a, b: f"{a}*{b}", st.text("ab.", max_size=2), st.text("ab.", max_size=2)),
    st.builds(lambda a: f"{a}?", st.text("ab", max_size=2)),
    st.builds(lambda a, b: "{" + a + "," + b + "}", _SEGMENT_TEXT, _SEGMENT_TEXT),
    st.builds(lambda a, b: f"*.{{{a},{b}}}", st.text("ab", min_size=1, max_size=2),
              st.text("ab", min_size=1, max_size=2)),
)
_PATH_SEGMENT = st.text(alphabet="ab.", min_size=1, max_size=4)


@st.composite
def canonical_paths(draw: st.DrawFn) -> str:
    parts = draw(st.lists(_PATH_SEGMENT, max_size=5))
    parts = [p for p in parts if p not in (".", "..")]
    trailing = "/" if draw(st.booleans()) else ""
    return ("/" + "/".join(parts) + trailing).replace("//", "/")


@settings(max_examples=400, deadline=None)
@given(st.lists(_GLOB_SEGMENT, min_size=1, max_size=4), st.lists(canonical_paths(), max_size=8))
def test_path_globs_agree_with_the_reference(segments: list[str], paths: list[str]) -> None:
    glob = "/" + "/".join(segments)
    try:
        pattern = compile_path_glob(glob)
    except GlobError:
        assume(False)
        return
    for path in [*paths, *_expand_braces(glob)]:
        if "*" in path or "?" in path:
            continue
        assert pattern.match(path) == reference_path_match(glob, path), (glob, path)


_LABEL = st.text(alphabet="ab-", min_size=1, max_size=3)
_GLOB_LABEL = st.one_of(_LABEL, st.just("*"), st.builds(lambda a: a + "?", _LABEL),
                        st.builds(lambda a: a + "*", _LABEL))


@settings(max_examples=300, deadline=None)
@given(
    st.booleans(),
    st.lists(_GLOB_LABEL, min_size=1, max_size=3),
    st.lists(st.lists(_LABEL, min_size=1, max_size=4).map(".".join), max_size=8),
)
def test_host_globs_agree_with_the_reference(
    any_subdomain: bool, labels: list[str], hosts: list[str]
) -> None:
    glob = ("*." if any_subdomain else "") + ".".join(labels)
    assume(glob != "*")
    pattern = compile_host_glob(glob)
    for host in hosts:
        assert pattern.match(host) == reference_host_match(glob, host), (glob, host)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text("ab", max_size=2), min_size=1, max_size=5), st.text("ab*", max_size=8))
def test_value_globs_agree_with_fnmatch(parts: list[str], value: str) -> None:
    glob = "*".join(parts)
    # fnmatch's "*" is also any run of characters; "[" and "?" never occur here.
    assert compile_value_glob(glob).match(value) == fnmatchcase(value, glob)
