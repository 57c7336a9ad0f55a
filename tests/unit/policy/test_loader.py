"""The policy loader: every shipped policy loads; every bad file is refused with the
file, line and field of each problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.catalog import Purpose
from gatekeeper.core.model import Block, LimitKey, Mode, Monitor, RateLimit, RequireLicense
from gatekeeper.errors import PolicyError
from gatekeeper.policy.loader import (
    load_default_policy,
    load_policy_file,
    load_policy_text,
)

ROOT = Path(__file__).resolve().parents[3]
BAD = sorted((ROOT / "tests" / "vectors" / "policies" / "bad").glob("*.yaml"))
GOOD = sorted((ROOT / "tests" / "vectors" / "policies" / "good").glob("*.yaml"))
SHIPPED = sorted((ROOT / "policies").rglob("*.yaml"))
CATALOG = load_catalog()
_EXPECT = re.compile(r"^# expect: (\d+): ([^:]*): (.+)$")


def expectations(path: Path) -> list[tuple[int, str, str]]:
    out = []
    for line in path.read_text().splitlines():
        m = _EXPECT.match(line)
        if m:
            out.append((int(m.group(1)), m.group(2), m.group(3)))
    return out


@pytest.mark.parametrize("path", SHIPPED + GOOD, ids=lambda p: p.name)
def test_shipped_and_good_policies_load(path: Path) -> None:
    policy = load_policy_file(path, CATALOG)
    assert policy.source == str(path)


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_policy_names_file_line_and_field(path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path.name} has no '# expect:' line"
    with pytest.raises(PolicyError) as err:
        load_policy_file(path, CATALOG)
    got = [(p.file, p.line, p.field, p.message) for p in err.value.problems]
    for line, field, message in expected:
        assert any(
            f == str(path) and ln == line and fld == field and message in msg
            for f, ln, fld, msg in got
        ), f"expected {line}: {field}: {message!r}, got {got}"
    assert len(got) == len(expected), got


def test_at_least_twenty_bad_cases_are_covered() -> None:
    assert len(BAD) >= 20


def test_default_policy_is_the_shipped_file() -> None:
    embedded = load_default_policy(CATALOG)
    shipped = load_policy_file(ROOT / "policies" / "default.yaml", CATALOG)
    assert [r.name for r in embedded.rules] == [r.name for r in shipped.rules]
    assert [r.action for r in embedded.rules] == [r.action for r in shipped.rules]


def test_full_rule_syntax_builds_the_model() -> None:
    policy = load_policy_text(
        """
version: 1
mode: monitor
default: {block: {status: 451}}
licenses:
  - {name: std, usages: [ai-train], description: d}
rules:
  - name: everything
    match:
      crawlers: [gptbot]
      operators: [OpenAI]
      purposes: [ai-training]
      kinds: [crawler]
      identities: [unverified, verified]
      paths: ["/a/**", "/b"]
      methods: [get, HEAD]
      hosts: ["*.example.com"]
      headers: {X-A: present, X-B: absent, X-C: {equals: v}, X-D: {glob: "v*"},
                X-E: {regex: "^v[0-9]+$"}}
    action: {rate_limit: {rate: 120/min, burst: 7, key: client_network}}
  - {match: {purposes: [ai-search]}, action: {require_license: {any_of: [std]}}}
  - {action: monitor}
hosts:
  - hosts: [blog.example.com]
    rules:
      - {name: blog-open, action: allow}
""",
        "inline.yaml",
        CATALOG,
    )
    assert policy.mode is Mode.MONITOR
    assert policy.default == Block(status=451)
    first = policy.rules[0]
    assert first.match.crawlers == frozenset({"GPTBot"})
    assert first.match.operators == frozenset({"openai"})
    assert first.match.purposes == frozenset({Purpose.AI_TRAINING})
    assert first.match.methods == frozenset({"GET", "HEAD"})
    assert first.action == RateLimit(rate=2.0, burst=7, key=LimitKey.CLIENT_NETWORK)
    assert first.source is not None
    assert first.source.line == 8
    headers = {h.name: h for h in first.match.headers}
    assert headers["X-B"].present is False
    assert headers["X-D"].value is not None
    assert headers["X-D"].value.match("v123")
    assert headers["X-E"].value is not None
    assert not headers["X-E"].value.match("x1")
    assert policy.rules[1].action == RequireLicense(("std",))
    assert policy.rules[1].name == "rules[1]"
    assert policy.rules[2].action == Monitor()
    assert policy.host_sections[0].rules[0].name == "blog-open"


def test_includes_append_rules_and_refuse_cycles(tmp_path: Path) -> None:
    (tmp_path / "extra.yaml").write_text("rules:\n  - {name: extra, action: monitor}\n")
    main = tmp_path / "main.yaml"
    main.write_text("version: 1\ninclude: [extra.yaml]\nrules:\n  - {name: first, action: allow}\n")
    assert [r.name for r in load_policy_file(main, CATALOG).rules] == ["first", "extra"]

    (tmp_path / "loop.yaml").write_text("include: [loop.yaml]\n")
    main.write_text("version: 1\ninclude: [loop.yaml]\n")
    with pytest.raises(PolicyError, match="cycle"):
        load_policy_file(main, CATALOG)


def test_problems_in_an_included_file_name_that_file(tmp_path: Path) -> None:
    (tmp_path / "extra.yaml").write_text("rules:\n  - action: blok\n")
    main = tmp_path / "main.yaml"
    main.write_text("version: 1\ninclude: [extra.yaml]\n")
    with pytest.raises(PolicyError) as err:
        load_policy_file(main, CATALOG)
    problem = err.value.problems[0]
    assert problem.file.endswith("extra.yaml")
    assert problem.line == 2


def test_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy_file(tmp_path / "missing.yaml", CATALOG)
