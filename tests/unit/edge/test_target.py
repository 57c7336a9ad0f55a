from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from gatekeeper.edge.target import BadRequest, Target, canonicalize, check_host

VECTORS: dict[str, list[list[Any]]] = yaml.safe_load(
    (Path(__file__).parents[2] / "vectors" / "targets.yaml").read_text(encoding="utf-8")
)
# What a canonical path may contain: RFC 3986 pchar, "/" and upper-case escapes.
CANONICAL = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-F]{2})*")
REASON = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


def test_vector_file_covers_at_least_sixty_targets() -> None:
    assert len(VECTORS["accept"]) + len(VECTORS["reject"]) >= 60


@pytest.mark.parametrize(("method", "raw", "path", "query"), VECTORS["accept"])
def test_accepted_target_is_canonicalised(method: str, raw: str, path: str, query: str) -> None:
    assert canonicalize(method, raw) == Target(path, query)


@pytest.mark.parametrize(("method", "raw", "path", "query"), VECTORS["accept"])
def test_canonical_form_of_every_accepted_vector_is_a_fixed_point(
    method: str, raw: str, path: str, query: str
) -> None:
    again = canonicalize(method, path + ("?" + query if query else ""))
    assert again == Target(path, query)
    assert CANONICAL.fullmatch(path)


@pytest.mark.parametrize(("method", "raw", "reason"), VECTORS["reject"])
def test_ambiguous_target_is_refused_with_its_reason(method: str, raw: str, reason: str) -> None:
    with pytest.raises(BadRequest) as err:
        canonicalize(method, raw)
    assert err.value.reason == reason
    assert err.value.status == 400
    assert str(err.value)  # a human message for the 400 body and the log


def test_every_reason_is_a_short_snake_case_label() -> None:
    reasons = {reason for _m, _raw, reason in VECTORS["reject"]}
    assert all(REASON.fullmatch(r) and len(r) <= 24 for r in reasons), reasons


def test_bad_request_carries_a_custom_status() -> None:
    exc = BadRequest("body_too_large", "too large", 413)
    assert (exc.reason, exc.status, str(exc)) == ("body_too_large", 413, "too large")


def test_plain_path_is_returned_unchanged() -> None:
    raw = "/blog/2026/11/some-post_title~1.html"
    assert canonicalize("GET", raw + "?utm=x").path == raw


def test_very_long_dot_segment_chain_is_resolved() -> None:
    assert canonicalize("GET", "/" + "a/../" * 2000 + "x").path == "/x"


def test_very_long_run_of_slashes_collapses_to_one() -> None:
    assert canonicalize("GET", "/" * 8000 + "premium").path == "/premium"


def test_very_long_path_is_kept_whole() -> None:
    raw = "/" + "/".join(["segment"] * 1000) + "/"
    assert canonicalize("GET", raw).path == raw


def test_long_hostile_path_is_canonicalised_in_linear_time() -> None:
    raw = "/" + "%2e%2e/%41/./" * 600 + "x"
    started = time.perf_counter()
    assert canonicalize("GET", raw).path == "/A/x"  # each ".." removes the "A" before it
    assert time.perf_counter() - started < 0.5


# Pieces that exercise every rule: dot segments spelled every way, escapes of
# unreserved, reserved and forbidden bytes, separators and stray characters.
_PIECES = st.sampled_from([
    "/", "//", ".", "..", "%2e", "%2E", "%2e%2E", "a", "B", "~", "-", "_", "%41", "%7e",
    "%7E", "%20", "%25", "%2F", "%5c", "%00", "%0a", "%e2%82%ac", "%ff", "%", "%4", "%zz",
    ";", "..;", "|", "[", "]", "^", "\"", "<", "{", "`", "\\", "#", " ", "?", "é", ":", "@",
])
_RAW_PATHS = st.lists(_PIECES | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                                        max_size=3), max_size=16).map(lambda p: "/" + "".join(p))


@given(_RAW_PATHS)
@example("/%2e%2e/%2e%2e/premium")
@example("/a/.%2e/..%2E/b")
@example("//..//.//x/")
def test_accepted_paths_are_canonical(raw: str) -> None:
    try:
        target = canonicalize("GET", raw)
    except BadRequest:
        return
    path = target.path
    assert path.startswith("/")
    assert canonicalize("GET", path).path == path
    assert CANONICAL.fullmatch(path)
    assert "//" not in path
    for form in (path, unquote(path)):
        assert "/./" not in form
        assert "/../" not in form
        assert not form.endswith(("/.", "/.."))


@given(st.text(max_size=40))
def test_any_input_is_either_canonicalised_or_refused_with_bad_request(raw: str) -> None:
    for method in ("GET", "OPTIONS", "CONNECT"):
        reason = None
        try:
            canonicalize(method, raw)
        except BadRequest as exc:
            reason = exc.reason
        assert reason is None or REASON.fullmatch(reason)


@given(_RAW_PATHS, st.data())
def test_spelling_an_unreserved_character_as_an_escape_does_not_change_the_path(
    raw: str, data: st.DataObject
) -> None:
    try:
        path = canonicalize("GET", raw).path
    except BadRequest:
        return
    escapes = {i for m in re.finditer("%..", path) for i in range(m.start(), m.end())}
    positions = [
        i for i, ch in enumerate(path) if (ch.isalnum() or ch in "-._~") and i not in escapes
    ]
    if not positions:
        return
    i = data.draw(st.sampled_from(positions))
    respelled = f"{path[:i]}%{ord(path[i]):02x}{path[i + 1:]}"
    assert canonicalize("GET", respelled).path == path


@pytest.mark.parametrize(
    ("raw", "path", "query"),
    [
        ("/PREMIUM/X", "/premium/x", ""),
        ("/Premium/../ARTICLES/A%41", "/articles/aa", ""),
        ("/%50remium", "/premium", ""),
        ("/Caf%C3%89/x", "/caf%C3%89/x", ""),  # escaped bytes keep their case
        ("/a%7cB", "/a%7Cb", ""),
        ("/Q?Next=/PREMIUM", "/q", "Next=/PREMIUM"),  # the query is never folded
    ],
)
def test_folding_case_lowers_the_path_outside_escapes(raw: str, path: str, query: str) -> None:
    assert canonicalize("GET", raw, fold_case=True) == Target(path, query)


def test_paths_keep_their_case_by_default() -> None:
    assert canonicalize("GET", "/PREMIUM/X").path == "/PREMIUM/X"


@given(_RAW_PATHS)
def test_a_case_folded_path_is_canonical_and_a_fixed_point(raw: str) -> None:
    try:
        path = canonicalize("GET", raw, fold_case=True).path
    except BadRequest:
        return
    assert canonicalize("GET", path, fold_case=True).path == path
    assert path == canonicalize("GET", raw).path.lower() or "%" in path
    assert not re.search(r"[A-Z]", re.sub("%..", "", path))


@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E)
               .filter(lambda ch: ch != "#"), max_size=30))
def test_printable_query_is_kept_byte_for_byte(query: str) -> None:
    assert canonicalize("GET", "/q?" + query).query == query


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("example.com", "example.com"),
        ("Example.COM:8080", "example.com"),
        ("example.com:", "example.com"),
        ("example.com.", "example.com"),
        ("EXAMPLE.com.:443", "example.com"),
        ("a-b.c_d.example", "a-b.c_d.example"),
        ("localhost", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1:8080", "127.0.0.1"),
        ("[2001:db8::1]:443", "[2001:db8::1]"),
        ("[2001:DB8:0:0::1]", "[2001:db8::1]"),
        ("[::1]", "[::1]"),
        (" example.com ", "example.com"),
        ("x" * 63 + ".example", "x" * 63 + ".example"),
    ],
)
def test_host_header_is_lower_cased_without_port_or_trailing_dot(header: str, host: str) -> None:
    assert check_host(header) == host


@pytest.mark.parametrize(
    "header",
    [
        None, "", " ", "user@example.com", "user:pw@example.com", "example.com:http",
        "example.com:8080:1", "example.com:99999", "example.com:-1", "example.com:\u0661",
        "exa mple.com", "example.com/path", "example.com?x", "example.com#x", "-bad.example",
        "bad-.example", "a..example", ".example.com", "example.com..", "ex%41mple.com",
        "exämple.com", "[::1", "[::1]x", "[::1]:x", "[not-v6]", "[1.2.3.4]", "[fe80::1%eth0]",
        "::1", "x" * 64 + ".example", "a" * 300, "example.com\x00",
    ],
)
def test_malformed_host_header_is_refused(header: str | None) -> None:
    with pytest.raises(BadRequest) as err:
        check_host(header)
    assert err.value.reason == "bad_host"
    assert err.value.status == 400


def test_hostile_host_header_is_refused_without_backtracking() -> None:
    started = time.perf_counter()
    for header in ("a" * 250 + "!", "a." * 120 + "!", "a-" * 120 + "!"):
        with pytest.raises(BadRequest):
            check_host(header)
    assert time.perf_counter() - started < 0.5
