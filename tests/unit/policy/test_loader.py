"""The policy loader: every shipped policy loads; every bad file is refused with the
file, line and field of each problem; the model built is the one the text says.

Bad files live in tests/vectors/policies/bad/. Each starts with one or more lines

    # expect: <line>: <field>: <substring of the message>

(`-` as the field for problems of the whole document), and the loader must report
exactly those problems: one per line, no more.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.catalog import Purpose
from gatekeeper.core.facts import Identity
from gatekeeper.core.model import (
    Allow,
    Block,
    LimitKey,
    Mode,
    Monitor,
    Policy,
    RateLimit,
    RequireLicense,
)
from gatekeeper.errors import PolicyError, Problem
from gatekeeper.policy.loader import (
    DEFAULT_POLICY_NAME,
    load_default_policy,
    load_policy_file,
    load_policy_text,
    read_policy_file,
)

ROOT = Path(__file__).resolve().parents[3]
VECTORS = ROOT / "tests" / "vectors" / "policies"
BAD = sorted((VECTORS / "bad").glob("*.yaml"))
GOOD = sorted((VECTORS / "good").glob("*.yaml"))
SHIPPED = sorted((ROOT / "policies").rglob("*.yaml"))
CATALOG = load_catalog()
_EXPECT = re.compile(r"^# expect: (\d+): ([^:]*): (.+)$")


def expectations(path: Path) -> list[tuple[int, str, str]]:
    out = []
    for line in path.read_text().splitlines():
        found = _EXPECT.match(line)
        if found:
            field = "" if found.group(2) == "-" else found.group(2)
            out.append((int(found.group(1)), field, found.group(3)))
    return out


def problems_of(text: str, tmp_path: Path) -> list[Problem]:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as err:
        load_policy_file(path, CATALOG)
    return err.value.problems


def load(text: str) -> Policy:
    return load_policy_text(text, "inline.yaml", CATALOG)


# -- corpora ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_policy_loads(path: Path) -> None:
    policy = load_policy_file(path, CATALOG)
    assert policy.source == str(path)
    assert policy.rules


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_good_vectors_load(path: Path) -> None:
    assert load_policy_file(path, CATALOG).source == str(path)


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_vector_names_file_line_and_field(path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path.name} has no '# expect:' line"
    with pytest.raises(PolicyError) as err:
        load_policy_file(path, CATALOG)
    got = [(p.file, p.line, p.field, p.message) for p in err.value.problems]
    for line, field, message in expected:
        assert any(
            file == str(path) and ln == line and fld == field and message in msg
            for file, ln, fld, msg in got
        ), f"expected {line}: {field}: {message!r}, got {got}"
    assert len(got) == len(expected), got


def test_the_bad_corpus_is_large_enough() -> None:
    assert len(BAD) >= 20


def test_problems_render_as_file_line_field_message() -> None:
    with pytest.raises(PolicyError) as err:
        load_policy_file(VECTORS / "bad" / "unknown-crawler.yaml", CATALOG)
    assert str(err.value) == (
        f"{VECTORS / 'bad' / 'unknown-crawler.yaml'}:5: rules[0].match.crawlers[1]: "
        "unknown crawler 'GPTBott'; did you mean 'GPTBot'?"
    )


# -- the embedded default -----------------------------------------------------------------


def test_default_policy_is_the_shipped_file() -> None:
    embedded = load_default_policy(CATALOG)
    shipped = load_policy_file(ROOT / "policies" / "default.yaml", CATALOG)
    assert embedded.source == DEFAULT_POLICY_NAME
    assert [(r.name, r.match, r.action) for r in embedded.rules] == [
        (r.name, r.match, r.action) for r in shipped.rules
    ]


def test_there_is_exactly_one_copy_of_the_default_policy() -> None:
    packaged = ROOT / "gatekeeper" / "data" / "default-policy.yaml"
    assert packaged.is_symlink()
    assert packaged.resolve() == (ROOT / "policies" / "default.yaml").resolve()


def test_default_policy_stance() -> None:
    policy = load_default_policy(CATALOG)
    first = policy.rules[0]
    assert first.action == Allow()
    assert first.match.paths is not None
    assert {p.text for p in first.match.paths} == {"/robots.txt", "/.well-known/**"}
    by_purpose = {
        next(iter(r.match.purposes)): r.action for r in policy.rules if r.match.purposes
    }
    assert by_purpose[Purpose.AI_TRAINING] == Block()
    assert by_purpose[Purpose.SEARCH_ENGINE] == Allow()
    assert isinstance(by_purpose[Purpose.AI_ASSISTANT], RateLimit)
    assert policy.default == Allow()
    assert policy.mode is Mode.ENFORCE


# -- the model built ----------------------------------------------------------------------


def test_full_rule_syntax_builds_the_model() -> None:
    policy = load_policy_file(VECTORS / "good" / "full-syntax.yaml", CATALOG)
    assert policy.default == Block(status=403)
    assert policy.license_terms_url == "https://example.com/licensing"
    assert [lic.name for lic in policy.licenses] == ["ai-train-standard", "ai-input.metered"]
    assert policy.licenses[1].usages == ("ai-input", "ai-index")

    rule = policy.rules[1]
    assert rule.name == "everything-at-once"
    assert rule.source is not None
    assert rule.source.line == 17
    m = rule.match
    assert m.crawlers == frozenset({"GPTBot", "ClaudeBot"})  # canonical catalog names
    assert m.operators == frozenset({"openai", "anthropic"})  # case-folded
    assert m.purposes == frozenset({Purpose.AI_TRAINING, Purpose.AI_ASSISTANT})
    assert m.kinds == frozenset({"crawler"})
    assert m.identities == frozenset(Identity)
    assert m.methods == frozenset({"GET", "HEAD"})
    assert m.robots_disallowed is True
    assert m.paths is not None
    assert [p.text for p in m.paths][:2] == ["/premium/**", "/archive/*/full"]
    assert m.hosts is not None
    assert m.hosts[0].match("a.example.com")
    headers = {h.name: h for h in m.headers}
    assert headers["X-Api-Key"].present is False
    assert headers["Cookie"].present is True
    assert headers["Cookie"].value is None
    for name, yes, no in [
        ("Accept", "text/html", "text/html2"),
        ("Referer", "https://www.example.com/a", "https://evil.com/a"),
        ("Sec-Ch-Ua", '"Chromium";v="131"', '"Firefox"'),
    ]:
        value = headers[name].value
        assert value is not None
        assert value.match(yes)
        assert not value.match(no)
    assert rule.action == Block(451, "Unavailable for legal reasons.\n", (("X-Reason", "legal"),))

    assert policy.rules[2].name == "rules[2]"
    assert policy.rules[2].action == RateLimit(rate=1.0, burst=10, key=LimitKey.CRAWLER)
    assert policy.rules[3].action == RateLimit(rate=2.0, burst=2, key=LimitKey.CLIENT_NETWORK)
    assert policy.rules[4].action == RequireLicense(("ai-train-standard", "ai-input.metered"))
    assert policy.rules[5].action == Monitor()
    assert policy.rules[6].action == Allow()
    assert policy.host_sections[0].hosts[0].text == "blog.example.com"
    assert policy.host_sections[0].rules[0].name == "blog-is-open"


@pytest.mark.parametrize(
    ("rate", "per_second"),
    [("60/min", 1.0), ("60 / minute", 1.0), ("3600/h", 1.0), ("2/hour", 2 / 3600),
     ("5/s", 5.0), ("5/sec", 5.0), ("5/second", 5.0), ("10", 10.0), ("0.5", 0.5),
     ("1.5/s", 1.5)],
)
def test_rates(rate: str, per_second: float) -> None:
    policy = load(f"version: 1\nrules:\n  - action: {{rate_limit: {{rate: {rate}}}}}\n")
    action = policy.rules[0].action
    assert isinstance(action, RateLimit)
    assert action.rate == pytest.approx(per_second)
    assert action.burst == max(1, round(per_second))  # default burst: one second's worth


def test_single_values_numbers_and_aliases() -> None:
    policy = load_policy_file(VECTORS / "good" / "single-values-and-anchors.yaml", CATALOG)
    first = policy.rules[0]
    assert first.match.crawlers == frozenset({"GPTBot"})
    assert first.match.methods == frozenset({"POST"})
    assert policy.rules[1].action == first.action == Block()
    assert policy.rules[3].action == Block()
    assert policy.rules[3].match.crawlers is None


def test_yaml_integer_forms_are_read_as_yaml_says() -> None:
    policy = load("version: 1\nrules:\n  - action: {block: {status: 0x1C3}}\n")
    assert policy.rules[0].action == Block(status=451)


def test_monitor_mode_and_licence_default() -> None:
    assert load_policy_file(VECTORS / "good" / "monitor-mode.yaml", CATALOG).mode is Mode.MONITOR
    policy = load_policy_file(VECTORS / "good" / "license-as-default.yaml", CATALOG)
    assert policy.default == RequireLicense(("everything",))


def test_the_smallest_policy_allows_everything() -> None:
    policy = load("version: 1\n")
    assert policy.rules == ()
    assert policy.default == Allow()
    assert policy.mode is Mode.ENFORCE
    assert policy.license_terms_url == "/.well-known/gatekeeper/licenses"


def test_omitted_and_empty_match_match_everything() -> None:
    policy = load("version: 1\nrules:\n  - action: allow\n  - {match: {}, action: allow}\n")
    assert policy.rules[0].match == policy.rules[1].match
    assert policy.rules[0].match.crawlers is None


# -- includes -----------------------------------------------------------------------------


def test_includes_append_rules_in_order_relative_to_each_file() -> None:
    policy = load_policy_file(VECTORS / "good" / "with-include.yaml", CATALOG)
    assert [r.name for r in policy.rules] == [
        "declarations", "training-needs-licence", "parts/ai-rules.yaml:rules[1]", "nested",
        "last",
    ]
    nested = policy.rules[3].source
    assert nested is not None
    assert nested.file == str(VECTORS / "good" / "parts" / "more" / "nested.yaml")
    # Included rules may ask for licences the main file declares.
    assert policy.rules[1].action == RequireLicense(("std",))


def test_problems_in_an_included_file_name_that_file(tmp_path: Path) -> None:
    (tmp_path / "extra.yaml").write_text("rules:\n  - action: blok\n")
    problems = problems_of("version: 1\ninclude: [extra.yaml]\n", tmp_path)
    assert [(p.file, p.line, p.field) for p in problems] == [
        (str(tmp_path / "extra.yaml"), 2, "rules[0].action")
    ]


def test_included_files_hold_rules_only(tmp_path: Path) -> None:
    (tmp_path / "extra.yaml").write_text("version: 1\nmode: monitor\nrules: []\n")
    problems = problems_of("version: 1\ninclude: extra.yaml\n", tmp_path)
    assert len(problems) == 1
    assert problems[0].field == "mode"
    assert "not allowed in an included file" in problems[0].message


def test_include_cycles_are_refused_at_any_depth(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("include: [../policy.yaml]\n")
    problems = problems_of("version: 1\ninclude: [sub/b.yaml]\n", tmp_path)
    assert [(Path(p.file).name, p.line, p.field) for p in problems] == [("b.yaml", 1, "include[0]")]
    assert "include cycle" in problems[0].message


def test_the_same_file_may_be_included_twice_if_names_stay_unique(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("rules:\n  - action: monitor\n")
    (tmp_path / "main.yaml").write_text("version: 1\ninclude: [a.yaml, ./a.yaml]\n")
    with pytest.raises(PolicyError, match=r"rule name 'a.yaml:rules\[0\]' is already used"):
        load_policy_file(tmp_path / "main.yaml", CATALOG)


def test_an_empty_included_file_adds_no_rules(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    (tmp_path / "main.yaml").write_text("version: 1\ninclude: empty.yaml\n")
    assert load_policy_file(tmp_path / "main.yaml", CATALOG).rules == ()


def test_includes_need_a_file_to_be_relative_to() -> None:
    with pytest.raises(PolicyError, match="includes need a policy loaded from a file"):
        load("version: 1\ninclude: [x.yaml]\n")


def test_read_policy_file_reports_every_file_read(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("rules: []\ninclude: [missing.yaml]\n")
    (tmp_path / "main.yaml").write_text("version: 1\ninclude: [a.yaml]\n")
    read = read_policy_file(tmp_path / "main.yaml", CATALOG)
    assert read.policy is None
    assert [p.field for p in read.problems] == ["include[0]"]
    files = {f.path.name: f.digest for f in read.files}
    assert set(files) == {"main.yaml", "a.yaml", "missing.yaml"}
    assert files["missing.yaml"] is None
    assert files["main.yaml"] is not None


# -- files that cannot be read ------------------------------------------------------------


def test_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy_file(tmp_path / "missing.yaml", CATALOG)


def test_non_utf8_file_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("version: 1\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(PolicyError, match="not UTF-8 text"):
        load_policy_file(path, CATALOG)


def test_a_byte_order_mark_and_crlf_line_ends_are_fine() -> None:
    assert load("\ufeffversion: 1\r\nrules:\r\n  - action: allow\r\n").rules[0].name == "rules[0]"


def test_deeply_nested_yaml_is_a_policy_error() -> None:
    with pytest.raises(PolicyError) as err:
        load("version: 1\nrules: " + "[" * 5000 + "]" * 5000 + "\n")
    assert err.value.problems


def _alias_bomb(n: int) -> str:
    """n host sections, each n rules, each n paths: n**3 paths from 3n aliases."""
    lines = ["version: 1", "hosts:", "  - &h", "    hosts: [a.example]", "    rules:",
             "      - &r", "        match: {paths: [&p /x" + ", *p" * (n - 1) + "]}",
             "        action: allow"]
    return "\n".join([*lines, *["      - *r"] * (n - 1), *["  - *h"] * (n - 1)]) + "\n"


def test_a_few_aliases_are_fine() -> None:
    assert len(load(_alias_bomb(10)).host_sections) == 10


def test_an_alias_bomb_is_refused_before_it_is_walked() -> None:
    # 60 aliases per level: 216,000 paths from 1.4 KB, seconds of walking.
    with pytest.raises(PolicyError, match=r"more than 100 aliases"):
        load(_alias_bomb(60))


def test_surrogate_escapes_are_refused() -> None:
    with pytest.raises(PolicyError, match="lone surrogate"):
        load('version: 1\nrules:\n  - {match: {headers: {X: {glob: "a\\udcff*"}}}, '
             "action: block}\n")


# -- robustness ---------------------------------------------------------------------------

_FRAGMENTS = [
    "version: 1\n", "version: 2\n", "rules:\n", "  - ", "match: ", "action: ", "block",
    "allow", "{", "}", "[", "]", ", ", ": ", "\n", "    ", "paths: [/a/**]", "crawlers: GPTBot",
    "rate_limit: {rate: 5/s}", "status: 451", "!!python/name:os.system", "&a ", "*a", "<<: ",
    "headers: {X: {regex: '(?=x'}}", "include: [x.yaml]", "'", '"', "- ", "null", "~",
    "hosts:\n", "licenses:\n", "name: n", "mode: monitor", "---\n", "#", "\t", "0x1", "yes",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=30).map("".join))
def test_any_text_gives_a_policy_or_a_policy_error(text: str) -> None:
    problems: list[Problem] = []
    try:
        load(text)
    except PolicyError as exc:
        problems = exc.problems
        assert problems, "a PolicyError always says what is wrong"
    assert all(p.line >= 0 and p.file == "inline.yaml" for p in problems)


def test_licence_terms_build_the_model() -> None:
    from decimal import Decimal

    from gatekeeper.core.model import PricePer

    policy = load_policy_file(VECTORS / "good" / "licenses-with-terms.yaml", CATALOG)
    train, monthly, archive, free = policy.licenses
    assert train.price is not None
    assert (train.price.amount, train.price.currency, train.price.per) == (
        Decimal("0.002"), "USD", PricePer.REQUEST)
    assert train.validity == 30 * 86400
    assert train.limits is not None
    assert (train.limits.period, train.limits.requests, train.limits.bytes) == (
        PricePer.MONTH, 100_000, 10 * 2**30)
    assert train.covers("/articles/2026/a")
    assert not train.covers("/premium/a")
    assert monthly.price is not None
    assert monthly.price.per is PricePer.MONTH
    assert monthly.validity == 12 * 3600
    assert monthly.covers("/anything")
    assert archive.price is None
    assert archive.contact == "mailto:licensing@example.com"
    assert free.price is None
    assert free.contact == ""
    assert free.usages == ("search",)
