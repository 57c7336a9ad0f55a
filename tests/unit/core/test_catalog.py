"""The catalog and its user-agent classifier.

Rules on small hand-made catalogs first, then the packaged catalog against the
vectors in tests/vectors/user_agents.yaml and the real crawler user agents that
the installed crawler-user-agents package ships.
"""

from __future__ import annotations

import gc
import re
import weakref
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.catalog_loader import generic_bot_entries, load_catalog
from gatekeeper.core.catalog import (
    BOT_LIBRARY_TOKENS,
    CACHE_SIZE,
    Catalog,
    Classification,
    Crawler,
    Kind,
    Purpose,
    normalize,
)
from gatekeeper.errors import CatalogError

VECTORS = yaml.safe_load(
    (Path(__file__).parents[2] / "vectors" / "user_agents.yaml").read_text(encoding="utf-8")
)
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)


def crawler(
    name: str, *tokens: str, operator: str = "Example", purpose: Purpose = Purpose.AI_TRAINING
) -> Crawler:
    return Crawler(name, operator, purpose, tokens, robots_token=name)


def small() -> Catalog:
    return Catalog([
        crawler("GPTBot", "gptbot", operator="OpenAI"),
        crawler("ChatGPT-User", "chatgpt-user", operator="OpenAI", purpose=Purpose.AI_ASSISTANT),
        crawler("Claude-User", "claude-user", operator="Anthropic"),
        crawler("ClaudeBot", "claudebot", operator="Anthropic"),
        crawler("YouBot", "youbot", operator="You.com"),
        crawler("Googlebot", "googlebot", operator="Google", purpose=Purpose.SEARCH_ENGINE),
        crawler("Googlebot-Image", "googlebot-image", operator="Google"),
        crawler("Google-Extended", operator="Google"),
        crawler("Code", "code/", operator="GitHub", purpose=Purpose.AI_AGENT),
        crawler("Spider", "spider.com"),
        crawler("Brightbot", "brightbot 1.0"),
        crawler("Scrapy", "scrapy", purpose=Purpose.OTHER_BOT),
    ])


# --- the API -------------------------------------------------------------------------

def test_names_get_operators_iter_len() -> None:
    catalog = small()
    assert len(catalog) == 12
    assert [c.name for c in catalog][:2] == ["GPTBot", "ChatGPT-User"]
    assert "GPTBot" in catalog.names
    assert "gptbot" not in catalog.names
    assert catalog.get("gptbot") is catalog.get("GPTBOT") is catalog.get("GPTBot")
    assert catalog.get("nobody") is None
    assert catalog.operators == {"openai", "anthropic", "you.com", "google", "github", "example"}


def test_a_robots_only_entry_is_in_the_catalog_but_matches_nothing() -> None:
    catalog = small()
    assert catalog.get("Google-Extended") is not None
    result = catalog.classify("Mozilla/5.0 (compatible; Google-Extended/1.0)")
    assert result.crawler is None


@pytest.mark.parametrize(
    ("crawlers", "message"),
    [
        ([crawler("GPTBot", "gptbot"), crawler("gptbot", "other")], "listed twice"),
        ([crawler("A", "gptbot"), crawler("B", "GPTBot")], "already used by 'A'"),
        ([crawler("A", "two  words"), crawler("B", "two words")], "already used by 'A'"),
        ([crawler("A", " ")], "empty user-agent token"),
    ],
)
def test_duplicates_and_empty_tokens_are_errors(crawlers: list[Crawler], message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        Catalog(crawlers)


def test_classification_labels() -> None:
    catalog = small()
    hit = catalog.classify("GPTBot/1.1")
    assert (hit.kind, hit.name, hit.purpose) == (Kind.CRAWLER, "GPTBot", Purpose.AI_TRAINING)
    bot = catalog.classify("curl/8.5.0")
    assert (bot.kind, bot.name, bot.purpose) == (Kind.OTHER_BOT, "other-bot", Purpose.OTHER_BOT)
    unknown = catalog.classify(CHROME)
    assert (unknown.kind, unknown.name, unknown.purpose) == (Kind.UNKNOWN, "unknown", None)


# --- matching rules ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("ua", "expected"),
    [
        # Embedded in a browser-like string, any case, any whitespace.
        ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.1; "
         "+https://openai.com/gptbot)", "GPTBot"),
        ("mozilla/5.0 (COMPATIBLE; gptBOT/1.1)", "GPTBot"),
        ("\tGPTBot/1.1\n", "GPTBot"),
        ("GPTBot", "GPTBot"),
        ("Brightbot    1.0", "Brightbot"),
        ("Brightbot\t1.0", "Brightbot"),
        # A longer word is another name.
        ("Mozilla/5.0 (compatible; Claude-Usernames/1.0)", None),
        ("Mozilla/5.0 (compatible; Claude-User_x/1.0)", None),
        ("Mozilla/5.0 (compatible; XGPTBot/1.0)", None),
        ("Mozilla/5.0 (compatible; My-GPTBot/1.0)", None),
        ("Mozilla/5.0 (compatible; GPTBot2/1.0)", None),
        # A suffix after "-" is a variant of the same crawler.
        ("Mozilla/5.0 (compatible; Claude-User-Preview/1.0)", "Claude-User"),
        ("Googlebot-Mobile/2.1", "Googlebot"),
        # Inside a URL or an address, or named as what the agent imitates.
        ("Foo/1.0 (+https://example.com/gptbot/)", None),
        ("Foo/1.0 (bot@claudebot.example)", None),
        ("Foo/1.0 (like Googlebot)", None),
        ("Foo/1.0 (compatible with Googlebot)", None),
        # Host-name tokens are meant to be found in URLs.
        ("Mozilla/5.0 (compatible; Spider; +https://www.spider.com/)", "Spider"),
        ("Mozilla/5.0 (compatible; Spider; +https://www.myspider.com/)", None),
        # Tokens that carry their own delimiter ("code/") need only the other side.
        ("Mozilla/5.0 AppleWebKit/537.36 Code/1.115.0 Chrome/142.0 Electron/39.8.5", "Code"),
        ("Mozilla/5.0 (compatible; Foo/1.0; github.com/code/)", None),
        ("Mozilla/5.0 (compatible; Barcode/1.0)", None),
    ],
)
def test_token_boundaries(ua: str, expected: str | None) -> None:
    found = small().classify(ua).crawler
    assert (found.name if found else None) == expected


@pytest.mark.parametrize(
    ("ua", "expected"),
    [
        # Longest token first: the specific entry beats the generic one ...
        ("Googlebot-Image/1.0 (Googlebot/2.1)", "Googlebot-Image"),
        ("Googlebot/2.1 (Googlebot-Image/1.0)", "Googlebot-Image"),
        ("GPTBot/1.1 ChatGPT-User/1.0", "ChatGPT-User"),
        # ... then the earliest one among equally long tokens.
        ("GPTBot/1.1 YouBot/1.0", "GPTBot"),
        ("YouBot/1.0 GPTBot/1.1", "YouBot"),
    ],
)
def test_several_tokens_choose_deterministically(ua: str, expected: str) -> None:
    assert small().classify(ua).name == expected


def test_choice_does_not_depend_on_catalog_order() -> None:
    entries = list(small())
    forward, backward = Catalog(entries), Catalog(reversed(entries))
    for ua in ("GPTBot/1.1 YouBot/1.0", "Googlebot/2.1 Googlebot-Image/1.0", "x ClaudeBot GPTBot"):
        assert forward.classify(ua).name == backward.classify(ua).name


@pytest.mark.parametrize(
    ("ua", "kind"),
    [
        ("", Kind.OTHER_BOT),
        ("   ", Kind.OTHER_BOT),
        ("-", Kind.OTHER_BOT),
        ("Mozilla/5.0", Kind.OTHER_BOT),
        ("curl/8.5.0", Kind.OTHER_BOT),
        ("python-requests/2.32.3", Kind.OTHER_BOT),
        ("Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/131.0.0.0 Safari/537.36", Kind.OTHER_BOT),
        ("Mozilla/5.0 (compatible; FooBot/1.0)", Kind.OTHER_BOT),
        ("Mozilla/5.0 (compatible; Foo/1.0; +http://foo.example/)", Kind.OTHER_BOT),
        ("Mozilla/5.0 (compatible; Javascript-Thing/1.0)", Kind.UNKNOWN),
        ("Mozilla/5.0 (Linux; Android 12; CUBOT KINGKONG 7) Chrome/120.0.0.0 Mobile", Kind.UNKNOWN),
        (CHROME, Kind.UNKNOWN),
    ],
)
def test_without_a_catalog_token(ua: str, kind: Kind) -> None:
    assert small().classify(ua).kind is kind


def test_a_catalog_token_beats_a_library_token() -> None:
    ua = "Scrapy/2.11 (+https://scrapy.org) python-requests/2.0"
    assert small().classify(ua).name == "Scrapy"
    assert small().classify("python-requests/2.32 GPTBot/1.1").name == "GPTBot"


def test_library_tokens_are_in_matching_form() -> None:
    assert all(token == normalize(token) for token in BOT_LIBRARY_TOKENS)


def test_generic_patterns_run_only_without_a_catalog_token() -> None:
    catalog = Catalog([crawler("GPTBot", "gptbot")], generic_bot_patterns=["GPT"])
    assert catalog.classify("GPTBot/1.1").name == "GPTBot"
    assert catalog.classify("Mozilla/5.0 GPT-Thing").kind is Kind.OTHER_BOT


def test_generic_patterns_are_case_sensitive_and_skipped_when_re2_cannot_compile() -> None:
    catalog = Catalog([], generic_bot_patterns=["Thing", "(?<=look)behind", "a(b"])
    assert catalog.skipped_patterns == 2
    assert catalog.classify("Mozilla/5.0 Thing").kind is Kind.OTHER_BOT
    assert catalog.classify("Mozilla/5.0 thing").kind is Kind.UNKNOWN


def test_a_user_agent_with_bytes_that_are_not_utf8_classifies_without_error() -> None:
    # How aiohttp passes such header bytes on: as surrogate escapes.
    ua = (b"Mozilla/5.0 " + bytes(range(0x80, 0x100))).decode("utf-8", "surrogateescape")
    catalog = Catalog([crawler("GPTBot", "gptbot")], generic_bot_patterns=["Thing"])
    assert catalog.classify(ua).kind is Kind.UNKNOWN
    assert catalog.classify(ua + " Thing").kind is Kind.OTHER_BOT
    assert catalog.classify(ua + " GPTBot/1.2").name == "GPTBot"


SMALL = small()


@given(st.text(max_size=300))
def test_any_text_classifies_without_error(ua: str) -> None:
    assert SMALL.classify(ua).kind in set(Kind)


@given(st.text(max_size=60), st.text(max_size=60))
def test_a_token_standing_as_a_product_is_never_missed(before: str, after: str) -> None:
    # Whatever surrounds it; a longer token in the surroundings may win instead.
    assert SMALL.classify(f"{before} (compatible; GPTBot/1.1; {after}").crawler is not None


# --- the cache -----------------------------------------------------------------------

def test_results_are_cached_with_a_bound() -> None:
    catalog = small()
    first = catalog.classify("GPTBot/1.1")
    assert catalog.classify("GPTBot/1.1") is first
    for i in range(CACHE_SIZE + 100):
        catalog.classify(f"Mozilla/5.0 Agent{i}")
    assert catalog._lookup.cache_info().currsize == CACHE_SIZE  # type: ignore[attr-defined]


def test_a_dropped_catalog_is_freed_without_the_cycle_collector() -> None:
    catalog = small()
    catalog.classify("GPTBot/1.1")
    ref = weakref.ref(catalog)
    gc.disable()
    try:
        del catalog
        assert ref() is None
    finally:
        gc.enable()


# --- the packaged catalog: vectors ---------------------------------------------------

@pytest.fixture(scope="module")
def packaged() -> Catalog:
    return load_catalog()


@pytest.mark.parametrize("ua", VECTORS["browsers"])
def test_browsers_are_unknown(packaged: Catalog, ua: str) -> None:
    assert packaged.classify(ua) == Classification(Kind.UNKNOWN)


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda case: case["ua"][:60] or "(empty)")
def test_vector(packaged: Catalog, case: dict[str, Any]) -> None:
    result = packaged.classify(case["ua"])
    if "kind" in case:
        assert result.kind.value == case["kind"]
        if case["kind"] == "crawler":
            assert result.name == case["crawler"]
        else:
            assert result.crawler is None
    if "purpose" in case:
        assert result.purpose is not None
        assert result.purpose.value == case["purpose"]
    if "not_crawler" in case:
        assert result.name != case["not_crawler"]


def test_every_token_is_found_in_a_browser_like_string_and_not_inside_a_word(
    packaged: Catalog,
) -> None:
    for entry in packaged:
        for token in entry.ua_tokens:
            product = token if token[-1] in "/_(+" else f"{token}/1.0"
            for text in (product, product.upper(), product.title()):
                ua = f"Mozilla/5.0 (X11; Linux x86_64; compatible; {text}) Chrome/131.0"
                assert packaged.classify(ua).crawler is entry, (token, ua)
            if token[0].isalnum() and token[-1].isalnum():
                ua = f"Mozilla/5.0 (compatible; x{token}y/1.0)"
                assert packaged.classify(ua).crawler is not entry, (token, ua)


# --- the packaged catalog: real crawler user agents ----------------------------------

def _literal(pattern: str) -> str | None:
    """The text a crawler-user-agents pattern matches, when it is a plain literal."""
    text = re.sub(r"\\(.)", r"\1", pattern)
    return None if re.search(r"[\[\]()^$*+?|{}]", text) else normalize(text)


# Instances where the pattern's literal occurs without naming the crawler: the
# pattern matches a substring, our tokens match whole names.
_NOT_THE_CRAWLER = {
    "alexabot/1.0": "'exabot' inside 'Alexabot', another product",
    "sukibot_heritrix": "a crawler built on Heritrix, not the Internet Archive's",
    "librabot/": "'msnbot' only in the URL of its info page",
    "daumoa/": "Daum's crawler, 'Following Mediapartners-Google'",
}


def test_real_crawler_user_agents_classify_as_their_catalog_entry(packaged: Catalog) -> None:
    owners = {t.rstrip("/"): c for c in packaged for t in c.ua_tokens}
    checked = 0
    mismatches = []
    for item in generic_bot_entries():
        literal = _literal(item["pattern"])
        owner = owners.get(literal) if literal else None
        if owner is None:
            continue
        for ua in item["instances"]:
            if any(marker in ua.lower() for marker in _NOT_THE_CRAWLER):
                continue
            checked += 1
            got = packaged.classify(ua).crawler
            # A more specific entry of the same operator may win ("adidxbot ... bingbot.htm").
            if got is None or got.operator != owner.operator:
                mismatches.append((item["pattern"], ua, got.name if got else None))
    assert checked > 250
    assert mismatches == []


def test_every_real_crawler_user_agent_is_a_bot(packaged: Catalog) -> None:
    kinds = dict.fromkeys(Kind, 0)
    for item in generic_bot_entries():
        for ua in item["instances"]:
            kinds[packaged.classify(ua).kind] += 1
    assert kinds[Kind.UNKNOWN] == 0
    assert kinds[Kind.CRAWLER] > 400


def test_the_only_browser_the_generic_list_flags_is_excluded_by_the_loader() -> None:
    raw = Catalog([], [item["pattern"] for item in generic_bot_entries()])
    flagged = [ua for ua in VECTORS["browsers"] if raw.classify(ua).kind is not Kind.UNKNOWN]
    assert [ua for ua in flagged if "Slack_SSB" not in ua] == []
