"""RobotsRules against the RFC 9309 conformance vectors, and its precedence rules.

The vectors live in tests/vectors/robots/ (see the README there): the Google
robots.txt spec test suite, and the RFC 9309 cases of google/robotstxt's and
Protego's test-suites transcribed as YAML. `load_cases` is shared with
test_robots_parsers.py, which runs the same cases against the two libraries.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.core.robots import PARSE_LIMIT, RobotsRules, RobotsVerdict

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "robots"
TRANSCRIBED = ("google-robots-test.yaml", "protego-tests.yaml")


@dataclass(frozen=True, slots=True)
class RobotsCase:
    id: str
    body: bytes
    agent: str
    url: str
    allowed: bool

    @property
    def path(self) -> str:
        return path_of(self.url)


def path_of(url: str) -> str:
    """The path and query of a URL, as the gate hands them to `verdict`."""
    parts = urlsplit(url)
    path = parts.path or "/"
    if not path.startswith("/"):
        path = "/" + path
    return f"{path}?{parts.query}" if parts.query else path


def _spec_cases() -> list[RobotsCase]:
    suite = json.loads((VECTORS / "google-spec-test.json").read_text(encoding="utf-8"))
    overrides = {
        entry["id"]: entry
        for entry in yaml.safe_load(
            (VECTORS / "google-spec-test-overrides.yaml").read_text(encoding="utf-8")
        )["overrides"]
    }
    seen: Counter[tuple[str, int]] = Counter()
    cases = []
    for raw in suite["cases"]:
        key = (raw["file"], raw["test_index"])
        case_id = f"google-spec:{raw['file'].removesuffix('.textproto')}:{key[1]}:{seen[key]}"
        seen[key] += 1
        if raw["test_type"] != "STANDARD":
            continue  # GOOGLE_SPECIFIC: Google extensions, not RFC 9309
        expected = raw["rfc9309_expected"]
        override = overrides.pop(case_id, None)
        if override is not None:
            # An override that no longer points at the case it was written for is stale.
            assert (override["url"], override["useragent"]) == (raw["url"], raw["useragent"])
            expected = override["expected"]
        cases.append(RobotsCase(case_id, base64.b64decode(raw["robotstxt_b64"]),
                                raw["useragent"], raw["url"], expected == "allowed"))
    assert not overrides, f"overrides for unknown cases: {sorted(overrides)}"
    return cases


def _transcribed_cases(name: str) -> list[RobotsCase]:
    data: dict[str, Any] = yaml.safe_load((VECTORS / name).read_text(encoding="utf-8"))
    stem = name.removesuffix(".yaml")
    seen: Counter[str] = Counter()
    cases = []
    for test in data["tests"]:
        body = test["robots"].encode("utf-8")
        for case in test["cases"]:
            case_id = f"{stem}:{test['test']}:{seen[test['test']]}"
            seen[test["test"]] += 1
            assert case["expected"] in ("allowed", "disallowed"), case_id
            cases.append(RobotsCase(case_id, body, str(case["agent"]), case["url"],
                                    case["expected"] == "allowed"))
    return cases


def load_cases() -> list[RobotsCase]:
    """Every conformance case, with the expectation Gatekeeper follows."""
    cases = _spec_cases()
    for name in TRANSCRIBED:
        cases.extend(_transcribed_cases(name))
    return cases


CASES = load_cases()


def test_the_vectors_are_all_there_and_have_unique_ids() -> None:
    counts = Counter(case.id.split(":", 1)[0] for case in CASES)
    assert counts == {"google-spec": 378, "google-robots-test": 129, "protego-tests": 357}
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_verdict_follows_rfc9309_on_the_conformance_vectors(case: RobotsCase) -> None:
    verdict = RobotsRules.parse(case.body).verdict(case.agent, case.path)
    assert verdict.allowed is case.allowed


def _rules(text: str) -> RobotsRules:
    return RobotsRules.parse(text.encode())


# (robots.txt, token, path, allowed, rule, group)
PRECEDENCE = [
    # The longest matching pattern wins, whatever the order of the lines.
    ("User-agent: *\nDisallow: /a/\nAllow: /a/b/\n", "X", "/a/b/c", True, "Allow: /a/b/", "*"),
    ("User-agent: *\nAllow: /a/b/\nDisallow: /a/\n", "X", "/a/x", False, "Disallow: /a/", "*"),
    ("User-agent: *\nAllow: /a\nDisallow: /a/b/c\n", "X", "/a/b/c", False,
     "Disallow: /a/b/c", "*"),
    # Equal length: allow wins, in either order.
    ("User-agent: *\nDisallow: /a\nAllow: /a\n", "X", "/a", True, "Allow: /a", "*"),
    ("User-agent: *\nAllow: /a\nDisallow: /a\n", "X", "/a", True, "Allow: /a", "*"),
    ("User-agent: *\nDisallow: /ab\nAllow: /a*\n", "X", "/abc", True, "Allow: /a*", "*"),
    ("User-agent: *\nDisallow: /a*\nAllow: /ab\n", "X", "/abc", True, "Allow: /ab", "*"),
    ("User-agent: *\nAllow: /ab\nDisallow: /a*c\n", "X", "/abc", False, "Disallow: /a*c", "*"),
    # "*" and "$" count as octets of the pattern.
    ("User-agent: *\nDisallow: /\nAllow: /$\n", "X", "/", True, "Allow: /$", "*"),
    ("User-agent: *\nDisallow: /\nAllow: /$\n", "X", "/x", False, "Disallow: /", "*"),
    ("User-agent: *\nAllow: /page\nDisallow: /*.html\n", "X", "/page.html", False,
     "Disallow: /*.html", "*"),
    # "*" spans segments and the query; a final "$" anchors; a middle "$" is literal.
    ("User-agent: *\nDisallow: /*/private/\n", "X", "/a/b/private/x", False,
     "Disallow: /*/private/", "*"),
    ("User-agent: *\nDisallow: /*session=\n", "X", "/p?a=1&session=2", False,
     "Disallow: /*session=", "*"),
    ("User-agent: *\nDisallow: /*.pdf$\n", "X", "/a.pdf?download", True, "", "*"),
    ("User-agent: *\nDisallow: /*.pdf$\n", "X", "/a.pdf", False, "Disallow: /*.pdf$", "*"),
    ("User-agent: *\nDisallow: /a$b\n", "X", "/a$b", False, "Disallow: /a$b", "*"),
    ("User-agent: *\nDisallow: /a$b\n", "X", "/ab", True, "", "*"),
    # Matching is case-sensitive on paths, case-insensitive on tokens and names.
    ("User-agent: *\nDisallow: /Private\n", "X", "/private", True, "", "*"),
    ("USER-AGENT: gptbot\nDISALLOW: /\n", "GPTBot", "/x", False, "Disallow: /", "gptbot"),
    # A specific group replaces "*" entirely, even when it has no rules.
    ("User-agent: *\nDisallow: /\n\nUser-agent: GPTBot\nDisallow: /x\n", "GPTBot", "/y",
     True, "", "GPTBot"),
    ("User-agent: *\nDisallow: /\n\nUser-agent: GPTBot\n", "GPTBot", "/y", True, "", "GPTBot"),
    ("User-agent: *\nDisallow: /\n\nUser-agent: GPTBot\nDisallow: /x\n", "CCBot", "/y",
     False, "Disallow: /", "*"),
    # Groups naming the same token merge; consecutive user-agent lines share rules.
    ("User-agent: GPTBot\nDisallow: /a\n\nUser-agent: CCBot\nUser-agent: GPTBot\n"
     "Disallow: /b\n", "GPTBot", "/b", False, "Disallow: /b", "GPTBot"),
    ("User-agent: GPTBot\nDisallow: /a\n\nUser-agent: CCBot\nUser-agent: GPTBot\n"
     "Disallow: /b\n", "CCBot", "/a", True, "", "CCBot"),
    # A line names a token by its whole value or by its leading product-token characters.
    ("User-agent: GPTBot/1.0\nDisallow: /\n", "GPTBot", "/x", False, "Disallow: /",
     "GPTBot/1.0"),
    ("User-agent: MJ12bot\nDisallow: /\n", "MJ12bot", "/x", False, "Disallow: /", "MJ12bot"),
    ("User-agent: Google-Extended\nDisallow: /\n", "Google", "/x", True, "", ""),
    # No group at all: everything allowed.
    ("User-agent: GPTBot\nDisallow: /\n", "CCBot", "/x", True, "", ""),
    # An empty pattern matches nothing; rules before any user-agent line are ignored.
    ("User-agent: *\nDisallow:\n", "X", "/x", True, "", "*"),
    ("Disallow: /\nUser-agent: *\nAllow: /a\n", "X", "/x", True, "", "*"),
    # Unknown lines do not end a group.
    ("User-agent: A\nCrawl-delay: 5\nUser-agent: B\nDisallow: /\n", "A", "/x", False,
     "Disallow: /", "A"),
    # Comments end at the line break, and the rule text is the value as written.
    ("User-agent: * # all\nDisallow: /private/  # secret\n", "X", "/private/x", False,
     "Disallow: /private/", "*"),
    # Patterns and paths compare in one normal form.
    ("User-agent: *\nDisallow: /%7Euser/\n", "X", "/~user/x", False, "Disallow: /%7Euser/",
     "*"),
    ("User-agent: *\nDisallow: /caf\u00e9\n", "X", "/caf%C3%A9", False,
     "Disallow: /caf\u00e9", "*"),
    ("User-agent: *\nDisallow: /a%3cb\n", "X", "/a%3Cb", False, "Disallow: /a%3cb", "*"),
    ("User-agent: *\nDisallow: /a%2Ab\n", "X", "/a*b", False, "Disallow: /a%2Ab", "*"),
    ("User-agent: *\nDisallow: /a%2Ab\n", "X", "/axb", True, "", "*"),
    # /robots.txt itself is always allowed.
    ("User-agent: *\nDisallow: /\n", "X", "/robots.txt", True, "", "*"),
    ("User-agent: *\nDisallow: /robots.txt\n", "X", "/robots.txt", True, "", "*"),
]


@pytest.mark.parametrize(
    ("robots", "token", "path", "allowed", "rule", "group"), PRECEDENCE,
    ids=[f"{i}:{row[2]}" for i, row in enumerate(PRECEDENCE)],
)
def test_verdict_names_the_deciding_rule_and_group(
    robots: str, token: str, path: str, allowed: bool, rule: str, group: str
) -> None:
    assert _rules(robots).verdict(token, path) == RobotsVerdict(allowed, rule, group)


def test_the_star_token_and_the_empty_token_get_the_star_group() -> None:
    rules = _rules("User-agent: *\nDisallow: /x\nUser-agent: a\nAllow: /\n")
    assert rules.verdict("*", "/x") == RobotsVerdict(False, "Disallow: /x", "*")
    assert rules.verdict("", "/x") == RobotsVerdict(False, "Disallow: /x", "*")


def test_verdicts_are_cached_per_token_without_changing_the_answer() -> None:
    rules = _rules("User-agent: GPTBot\nDisallow: /a\nUser-agent: *\nDisallow: /b\n")
    for _ in range(3):
        assert not rules.verdict("GPTBot", "/a").allowed
        assert not rules.verdict("gptbot", "/a/x").allowed
        assert rules.verdict("GPTBot", "/b").allowed
        assert not rules.verdict("CCBot", "/b").allowed


def test_allow_all_allows_everything_and_names_no_group() -> None:
    rules = RobotsRules.allow_all()
    assert rules.source == "allow-all"
    assert rules.verdict("GPTBot", "/anything") == RobotsVerdict(True, "", "")


def test_disallow_all_disallows_everything_but_robots_txt() -> None:
    rules = RobotsRules.disallow_all()
    assert rules.source == "disallow-all"
    assert rules.verdict("GPTBot", "/anything") == RobotsVerdict(False, "Disallow: /", "*")
    assert rules.verdict("GPTBot", "/robots.txt").allowed


def test_only_the_first_500_kib_are_parsed() -> None:
    head = b"User-agent: *\nDisallow: /early\n"
    filler = b"# " + b"x" * 77 + b"\n"
    body = head + filler * ((PARSE_LIMIT - len(head)) // len(filler) + 1)
    body += b"Disallow: /late\n"
    assert len(body) > PARSE_LIMIT
    rules = RobotsRules.parse(body)
    assert rules.truncated
    assert not rules.verdict("X", "/early").allowed
    assert rules.verdict("X", "/late").allowed


def test_a_rule_cut_by_the_parsing_limit_is_dropped_not_shortened() -> None:
    head = b"User-agent: *\n"
    cut = b"Disallow: /p"  # what is left of the last line at the limit
    prefix = head + b"#" * (PARSE_LIMIT - len(head) - len(cut) - 1) + b"\n"
    rules = RobotsRules.parse(prefix + b"Disallow: /private-area\n")
    assert rules.truncated
    # Shortened, the line would forbid /public too; dropped, it forbids nothing.
    assert rules.verdict("X", "/public").allowed
    assert rules.verdict("X", "/private-area").allowed


def test_a_body_of_exactly_500_kib_is_parsed_whole() -> None:
    rule = b"Disallow: /last"
    head = b"User-agent: *\n"
    body = head + b"#" * (PARSE_LIMIT - len(head) - len(rule) - 1) + b"\n" + rule
    assert len(body) == PARSE_LIMIT
    rules = RobotsRules.parse(body)
    assert not rules.truncated
    assert not rules.verdict("X", "/last").allowed


@pytest.mark.parametrize("bom", [b"\xef\xbb\xbf", b"\xef\xbb", b"\xef"])
def test_a_leading_byte_order_mark_is_skipped(bom: bytes) -> None:
    rules = RobotsRules.parse(bom + b"User-agent: *\nDisallow: /x\n")
    assert not rules.verdict("X", "/x").allowed


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    rules = RobotsRules.parse(b"User-agent: *\nDisallow: /\xff\xfe\nDisallow: /y\n")
    assert not rules.verdict("X", "/%EF%BF%BD%EF%BF%BD").allowed
    assert not rules.verdict("X", "/y").allowed


def test_many_wildcards_do_not_make_matching_backtrack() -> None:
    rules = _rules("User-agent: *\nDisallow: /" + "*a" * 200 + "*b$\n")
    path = "/" + "a" * 20_000
    started = time.perf_counter()
    assert rules.verdict("X", path).allowed
    assert time.perf_counter() - started < 0.5


def _reference(rules: list[tuple[bool, str]], path: str) -> bool:
    """RFC 9309 §2.2.2 by brute force: every matching rule, then the longest, allow on a tie."""
    matching = []
    for allow, pattern in rules:
        anchored = pattern.endswith("$")
        body = pattern[:-1] if anchored else pattern
        regex = ".*".join(re.escape(part) for part in body.split("*")) + ("$" if anchored else "")
        if pattern and re.match(regex, path, re.DOTALL):
            matching.append((len(pattern), allow))
    return max(matching, default=(0, True))[1]


_PATTERNS = st.text(alphabet="/ab*", max_size=6).map(lambda p: "/" + p) | st.text(
    alphabet="/ab*", max_size=6).map(lambda p: "/" + p + "$")


@settings(max_examples=500, deadline=None)
@given(rules=st.lists(st.tuples(st.booleans(), _PATTERNS), max_size=8),
       path=st.text(alphabet="/ab", max_size=8).map(lambda p: "/" + p))
def test_verdict_agrees_with_a_brute_force_reading_of_the_rfc(
    rules: list[tuple[bool, str]], path: str
) -> None:
    text = "User-agent: *\n" + "".join(
        f"{'Allow' if allow else 'Disallow'}: {pattern}\n" for allow, pattern in rules)
    assert _rules(text).verdict("X", path).allowed is _reference(rules, path)
