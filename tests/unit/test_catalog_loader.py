"""Loading and validating the catalog data file."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.catalog_loader import (
    GENERIC_PATTERN_EXCLUSIONS,
    PACKAGED_CATALOG,
    generic_bot_patterns,
    load_catalog,
    parse_catalog,
)
from gatekeeper.core.catalog import Kind, Purpose, normalize
from gatekeeper.errors import CatalogError

AI_ROBOTS_NAMES = [
    line
    for line in (Path(__file__).parents[1] / "vectors" / "ai_robots_names.txt")
    .read_text(encoding="utf-8")
    .splitlines()
    if line and not line.startswith("#")
]


def entry(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "GPTBot",
        "operator": "OpenAI",
        "purpose": "ai-training",
        "ua_tokens": ["gptbot"],
        "robots_token": "GPTBot",
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def document(*entries: Any, **top: Any) -> str:
    doc: dict[str, Any] = {"version": 1, "crawlers": list(entries)}
    doc.update(top)
    return json.dumps(doc, indent=1)


# --- the packaged catalog ------------------------------------------------------------

def test_packaged_catalog_loads_once() -> None:
    catalog = load_catalog()
    assert load_catalog() is catalog
    assert len(catalog) >= 230
    assert catalog.skipped_patterns == 0


def test_packaged_file_is_in_the_package_data() -> None:
    data = resources.files("gatekeeper.data")
    for name in ("catalog.json", "ai-robots.LICENSE", "NOTICE.md"):
        assert data.joinpath(name).is_file(), name


def test_every_ai_robots_name_is_recognised() -> None:
    """All 166 names: as a catalog name, a robots.txt token, or in a user agent."""
    catalog = load_catalog()
    robots_tokens = {c.robots_token.casefold() for c in catalog}
    assert len(AI_ROBOTS_NAMES) == 166
    missing = []
    for name in AI_ROBOTS_NAMES:
        if catalog.get(name) or name.casefold() in robots_tokens:
            continue
        if catalog.classify(f"Mozilla/5.0 (compatible; {name})").kind is Kind.CRAWLER:
            continue  # a spelling variant: "Brightbot 1.0", "MistralAI-User/1.0", ...
        missing.append(name)
    assert missing == []


def test_packaged_entries_are_clean() -> None:
    catalog = load_catalog()
    sources = json.loads(
        resources.files("gatekeeper.data").joinpath("ip-ranges/sources.json").read_text("utf-8")
    )["sources"]
    for crawler in catalog:
        assert "[" not in crawler.operator, crawler.name
        assert "http" not in crawler.operator, crawler.name
        assert set(crawler.ip_ranges) <= set(sources), crawler.name
        assert all(token == normalize(token) for token in crawler.ua_tokens)
    purposes = {crawler.purpose for crawler in catalog}
    assert purposes == set(Purpose) - {Purpose.UNDECLARED_BOT}


@pytest.mark.parametrize(
    ("name", "purpose"),
    [
        ("GPTBot", "ai-training"),
        ("ClaudeBot", "ai-training"),
        ("CCBot", "ai-training"),
        ("OAI-SearchBot", "ai-search"),
        ("PerplexityBot", "ai-search"),
        ("Claude-SearchBot", "ai-search"),
        ("ChatGPT-User", "ai-assistant"),
        ("Perplexity-User", "ai-assistant"),
        ("Claude-User", "ai-assistant"),
        ("GoogleAgent-Mariner", "ai-agent"),
        ("Googlebot", "search-engine"),
        ("Bingbot", "search-engine"),
        ("Applebot", "search-engine"),
        ("AhrefsBot", "seo"),
        ("ia_archiver", "archiver"),
        ("facebookexternalhit", "social-preview"),
        ("UptimeRobot", "monitor"),
    ],
)
def test_well_known_purposes(name: str, purpose: str) -> None:
    crawler = load_catalog().get(name)
    assert crawler is not None
    assert crawler.purpose.value == purpose


@pytest.mark.parametrize("name", ["Google-Extended", "Applebot-Extended"])
def test_robots_only_tokens_have_no_user_agent_tokens(name: str) -> None:
    crawler = load_catalog().get(name)
    assert crawler is not None
    assert crawler.ua_tokens == ()
    assert crawler.robots_token == name


def test_generic_patterns_come_from_the_installed_package() -> None:
    patterns = generic_bot_patterns()
    assert len(patterns) > 1000
    assert not set(GENERIC_PATTERN_EXCLUSIONS) & set(patterns)


def test_a_missing_crawler_user_agents_package_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = resources.files

    def files(package: str) -> Any:
        if package == "crawleruseragents":
            raise ModuleNotFoundError(package)
        return real(package)

    monkeypatch.setattr(resources, "files", files)
    with pytest.raises(CatalogError, match="crawler-user-agents package is not installed"):
        parse_catalog(document(entry()))


# --- files given by path -------------------------------------------------------------

def test_a_file_by_path_is_read_afresh(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(document(entry()), encoding="utf-8")
    assert load_catalog(path).names == {"GPTBot"}
    # Rewritten at once, likely within one timestamp tick: the content decides.
    path.write_text(document(entry(), entry(name="CCBot", ua_tokens=["ccbot"])), "utf-8")
    assert load_catalog(str(path)).names == {"GPTBot", "CCBot"}


def test_an_unchanged_file_is_compiled_once(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(document(entry()), encoding="utf-8")
    first = load_catalog(path)
    assert load_catalog(str(path)) is first
    path.write_text(document(entry(operator="OpenAI, Inc.")), encoding="utf-8")
    second = load_catalog(path)
    assert second is not first
    crawler = second.get("GPTBot")
    assert crawler is not None
    assert crawler.operator == "OpenAI, Inc."


def test_a_failed_load_is_not_cached(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(document(entry(purpose="training")), encoding="utf-8")
    with pytest.raises(CatalogError, match="purpose"):
        load_catalog(path)
    path.write_text(document(entry()), encoding="utf-8")
    assert load_catalog(path).names == {"GPTBot"}


def test_optional_fields(tmp_path: Path) -> None:
    text = document(entry(url="https://openai.com/gptbot", ip_ranges=["openai-gptbot"],
                          rdns_domains=["openai.com"], signature_agents=["https://chatgpt.com"],
                          source="ai.robots.txt", note="why"))
    crawler = parse_catalog(text).get("GPTBot")
    assert crawler is not None
    assert crawler.url == "https://openai.com/gptbot"
    assert crawler.ip_ranges == ("openai-gptbot",)
    assert crawler.rdns_domains == ("openai.com",)
    assert crawler.signature_agents == ("https://chatgpt.com",)
    assert crawler.verification == ("web-bot-auth", "ip-ranges", "reverse-dns")


def test_pinned_signature_keys_are_kept_as_their_public_value() -> None:
    x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"  # RFC 8037's Ed25519 example key
    text = document(entry(signature_agents=["https://chatgpt.com"],
                          signature_keys=[{"kty": "OKP", "crv": "Ed25519", "x": x}]))
    crawler = parse_catalog(text).get("GPTBot")
    assert crawler is not None
    assert crawler.signature_keys == (x,)


def test_an_unreadable_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"missing\.json: cannot read the crawler catalog"):
        load_catalog(tmp_path / "missing.json")


# --- validation ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"version": 1,\n "crawlers": [,]}', r"x\.json:2: not valid JSON"),
        ("[]", "expected an object with 'version' and 'crawlers'"),
        (document(version=2), r"x\.json: version: expected 1, found 2"),
        (document(extra=True), r"x\.json: extra: unknown field"),
        (document(crawlers={}), "crawlers: expected a list"),
        (document("GPTBot"), r"crawlers\[0\]: expected an object"),
        (document(entry(operator=None)), r"crawlers\[0\] \(GPTBot\): operator: missing"),
        (document(entry(colour="red")), r"crawlers\[0\] \(GPTBot\): colour: unknown field"),
        (document(entry(name="")), r"crawlers\[0\]: name: expected a non-empty string"),
        (document(entry(name=" GPTBot")), "name: ' GPTBot': printable ASCII"),
        (document(entry(operator="Open\nAI")), "operator: 'Open\\\\nAI': printable ASCII"),
        (document(entry(purpose="training")), "purpose: 'training' is not one of ai-training, "),
        (document(entry(ua_tokens="gptbot")), "ua_tokens: expected a list of non-empty strings"),
        (document(entry(ua_tokens=[""])), "ua_tokens: expected a list of non-empty strings"),
        (document(entry(ua_tokens=["gptbot", "gptbot"])), "ua_tokens: lists a value twice"),
        (document(entry(ua_tokens=["GPTBot"])), r"ua_tokens\[0\]: 'GPTBot': write it as 'gptbot'"),
        (document(entry(ua_tokens=["a  b"])), r"ua_tokens\[0\]: 'a  b': write it as 'a b'"),
        (document(entry(ua_tokens=["gpt"])), r"ua_tokens\[0\]: 'gpt': shorter than 4"),
        (document(entry(robots_token="GPT:Bot")), "robots_token: 'GPT:Bot': must not contain"),
        (document(entry(url="openai.com")), "url: 'openai.com': expected an http"),
        (document(entry(url=3)), "url: expected a string"),
        (document(entry(ip_ranges=[1])), "ip_ranges: expected a list of non-empty"),
        (document(entry(rdns_domains=[".google.com"])), r"rdns_domains\[0\]: '\.google\.com'"),
        (document(entry(rdns_domains=["*.google.com"])), r"rdns_domains\[0\]"),
        (document(entry(rdns_domains=["Google.com"])), r"rdns_domains\[0\]"),
        (document(entry(signature_agents=["http://x.com"])), r"signature_agents\[0\]: "),
        (document(entry(signature_agents=["https://x.com/p"])), r"signature_agents\[0\]: "),
        (document(entry(signature_keys=[{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}])),
         "signature_keys: pinned keys need signature_agents"),
        (document(entry(signature_agents=["https://x.com"],
                        signature_keys=[{"kty": "RSA", "n": "x", "e": "AQAB"}])),
         r"signature_keys\[0\]: not a usable Ed25519 JWK"),
        (document(entry(note=["x"])), "note: expected a string"),
        (document(entry(), entry(ua_tokens=["other"])), r"x\.json: crawler 'GPTBot' is listed"),
        (document(entry(), entry(name="B", ua_tokens=["gptbot"])),
         r"x\.json: user-agent token 'gptbot' of 'B' is already used by 'GPTBot'"),
    ],
)
def test_invalid_catalogs(text: str, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        parse_catalog(text, "x.json")


def test_every_problem_is_reported_at_once() -> None:
    text = document(
        entry(purpose="training"),
        entry(name="CCBot", ua_tokens=["CCBot"], url="ftp://x"),
    )
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, "x.json")
    lines = str(info.value).splitlines()
    assert lines == [
        "x.json: crawlers[0] (GPTBot): purpose: 'training' is not one of "
        + ", ".join(p.value for p in Purpose),
        "x.json: crawlers[1] (CCBot): ua_tokens[0]: 'CCBot': write it as 'ccbot'",
        "x.json: crawlers[1] (CCBot): url: 'ftp://x': expected an http(s) URL or an empty string",
    ]


def test_packaged_name_is_used_in_errors() -> None:
    assert PACKAGED_CATALOG == "gatekeeper/data/catalog.json"
