from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.edge.target import BadRequest, Target, canonicalize, check_host

VECTORS: dict[str, list[list[Any]]] = yaml.safe_load(
    (Path(__file__).parents[2] / "vectors" / "targets.yaml").read_text(encoding="utf-8")
)


@pytest.mark.parametrize(("method", "raw", "path", "query"), VECTORS["accept"])
def test_accepted_target_is_canonicalised(method: str, raw: str, path: str, query: str) -> None:
    assert canonicalize(method, raw) == Target(path, query)


@pytest.mark.parametrize(("method", "raw", "reason"), VECTORS["reject"])
def test_ambiguous_target_is_refused_with_its_reason(method: str, raw: str, reason: str) -> None:
    with pytest.raises(BadRequest) as err:
        canonicalize(method, raw)
    assert err.value.reason == reason
    assert err.value.status == 400


def test_very_long_path_is_handled_linearly() -> None:
    long = "/" + "a/../" * 2000 + "x"
    assert canonicalize("GET", long).path == "/x"


_SEGMENT = st.sampled_from(["a", "b", ".", "..", "%2e", "%2E%2e", "", "%41", "%7e", "x%20y",
                            "%e2%82%ac", "~", "-_"])


@given(st.lists(_SEGMENT, max_size=12), st.booleans())
def test_canonical_path_is_idempotent_and_free_of_dot_segments(
    segments: list[str], trailing: bool
) -> None:
    raw = "/" + "/".join(segments) + ("/" if trailing else "")
    path = canonicalize("GET", raw).path
    assert path.startswith("/")
    assert canonicalize("GET", path).path == path
    assert "//" not in path
    decoded = unquote(path)
    for bad in ("/./", "/../"):
        assert bad not in decoded + "/"
    assert not decoded.endswith(("/.", "/.."))


@pytest.mark.parametrize(
    ("header", "host"),
    [("example.com", "example.com"), ("Example.COM:8080", "example.com"),
     ("[2001:db8::1]:443", "[2001:db8::1]"), ("127.0.0.1", "127.0.0.1"),
     ("a-b.c_d.example", "a-b.c_d.example"), ("example.com.", "example.com.")],
)
def test_host_header_is_lower_cased_without_port(header: str, host: str) -> None:
    assert check_host(header) == host


@pytest.mark.parametrize(
    "header", [None, "", "user@example.com", "example.com:http", "exa mple.com", "[::1",
               "example.com/path", "-bad.example", "a" * 300],
)
def test_malformed_host_header_is_refused(header: str | None) -> None:
    with pytest.raises(BadRequest) as err:
        check_host(header)
    assert err.value.reason == "bad_host"
