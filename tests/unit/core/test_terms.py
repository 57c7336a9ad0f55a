"""The licence terms page (HTML) and its JSON twin, rendered from one policy."""

from __future__ import annotations

import json
from decimal import Decimal
from html.parser import HTMLParser

import pytest

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.globs import compile_path_glob
from gatekeeper.core.model import License, LicenseLimits, Policy, Price, PricePer
from gatekeeper.core.terms import (
    duration_text,
    license_json,
    limits_text,
    render_terms_html,
    render_terms_json,
    size_text,
)
from gatekeeper.policy.loader import load_policy_text

URLS = {
    "site": "https://news.example.com",
    "rsl_url": "https://news.example.com/license.xml",
    "token_url": "https://news.example.com/.well-known/gatekeeper/token",
    "jwks_url": "https://news.example.com/.well-known/gatekeeper/jwks.json",
}
EXAMPLE = load_policy_text("""
version: 1
licenses:
  - name: ai-train-standard
    usages: [ai-train]
    description: Training on the public articles.
    paths: ["/articles/**"]
    price: {amount: 0.002, currency: USD, per: request}
    validity: 30d
    limits: {requests: 100000, bytes: 10GiB, per: month}
  - name: ai-input-contact
    usages: [ai-input, ai-index]
    contact: mailto:licensing@example.com
  - name: search-free
    usages: [search]
    validity: 12h
rules:
  - match: {purposes: [ai-training]}
    action: {require_license: {any_of: [ai-train-standard]}}
""", "test.yaml", load_catalog())
HOSTILE = "<script>alert('x')</script> & \"q\""
VOID = {"meta", "link", "br", "hr", "img", "input"}


class Structure(HTMLParser):
    """Collects what a browser would load and checks that elements nest."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.balanced = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.balanced = False


def structure(page: str) -> Structure:
    parser = Structure()
    parser.feed(page)
    parser.close()
    return parser


def html(policy: Policy = EXAMPLE) -> str:
    return render_terms_html(policy, **URLS)


# -- the page ---------------------------------------------------------------------------


def test_every_licence_appears_on_the_page_with_its_terms() -> None:
    page = html()
    for text in (
        "ai-train-standard", "Training on the public articles.", "<code>/articles/**</code>",
        "USD 0.002 per request", "30 days",
        "Up to 100,000 requests and 10 GiB per month per licensee",
        "ai-input-contact", '<a href="mailto:licensing@example.com">', "The whole site",
        "search-free", "Free; a token is still required", "12 hours",
        "training or fine-tuning AI models",
    ):
        assert text in page, text


def test_the_page_is_self_contained_html5_with_balanced_elements() -> None:
    page = html()
    assert page.startswith("<!DOCTYPE html>\n")
    found = structure(page)
    assert found.balanced
    assert found.open == []
    tags = {tag for tag, _ in found.tags}
    assert "script" not in tags
    assert "img" not in tags
    assert "style" in tags
    for tag, attrs in found.tags:
        assert "src" not in attrs, tag
        assert "style" not in attrs, tag  # all CSS in one <style>
        if tag == "link":
            assert attrs["rel"] == "license"


def test_the_page_links_the_rsl_document_with_its_media_type() -> None:
    links = [a for t, a in structure(html()).tags if t == "link"]
    assert links == [{"rel": "license", "type": "application/rsl+xml",
                      "href": URLS["rsl_url"]}]
    assert f'<a href="{URLS["rsl_url"]}">' in html()


def test_the_page_explains_how_to_obtain_and_present_a_token() -> None:
    page = html()
    assert f"POST {URLS['token_url']}" in page
    assert "grant_type=client_credentials&amp;license=NAME&amp;resource=URL" in page
    assert "Authorization: License &lt;access_token&gt;" in page
    assert f'<a href="{URLS["jwks_url"]}">' in page


def test_hostile_policy_text_is_escaped_everywhere() -> None:
    lic = License(
        name=HOSTILE, usages=("ai-train", HOSTILE), description=HOSTILE,
        paths=(compile_path_glob("/a&b/**"),), contact=f"https://x.example/{HOSTILE}",
    )
    page = render_terms_html(Policy(rules=(), licenses=(lic,)), site=HOSTILE,
                             rsl_url=f"/{HOSTILE}", token_url=HOSTILE, jwks_url=HOSTILE)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;q&quot;" in page
    assert "<code>/a&amp;b/**</code>" in page
    assert structure(page).balanced


@pytest.mark.parametrize("url", ["javascript:alert(1)", "//evil.example/x", "data:text/html,x"])
def test_only_web_and_mail_urls_become_links(url: str) -> None:
    lic = License("a", usages=("ai-input",), contact=url)
    page = render_terms_html(Policy(rules=(), licenses=(lic,)), **URLS)
    hrefs = [a.get("href") for t, a in structure(page).tags if t == "a"]
    assert url not in hrefs
    assert f"<code>{url}</code>" in page


def test_a_policy_without_licences_says_none_are_offered() -> None:
    page = html(Policy(rules=()))
    assert "This site offers no licences at the moment." in page
    assert structure(page).balanced


# -- the JSON ---------------------------------------------------------------------------


def test_the_json_carries_every_licence_exactly() -> None:
    licences = render_terms_json(EXAMPLE, **URLS)["licenses"]
    assert isinstance(licences, list)
    assert [lic["name"] for lic in licences] == [
        "ai-train-standard", "ai-input-contact", "search-free"]
    assert license_json(EXAMPLE.licenses[0]) == {
        "name": "ai-train-standard",
        "description": "Training on the public articles.",
        "usages": ["ai-train"],
        "paths": ["/articles/**"],
        "terms": "paid",
        "price": {"amount": "0.002", "currency": "USD", "per": "request"},
        "contact": None,
        "token_validity_seconds": 30 * 86400,
        "limits": {"per": "month", "requests": 100000, "bytes": 10 * 2**30},
    }
    assert license_json(EXAMPLE.licenses[1])["terms"] == "contact"
    assert license_json(EXAMPLE.licenses[1])["paths"] is None
    assert license_json(EXAMPLE.licenses[2])["terms"] == "free"


def test_the_json_names_the_documents_and_the_token_request() -> None:
    doc = render_terms_json(EXAMPLE, **URLS)
    assert doc["rsl"] == URLS["rsl_url"]
    assert doc["rsl_type"] == "application/rsl+xml"
    assert doc["token_endpoint"] == URLS["token_url"]
    assert doc["jwks_uri"] == URLS["jwks_url"]
    how = doc["how_to_obtain"]
    assert isinstance(how, dict)
    assert how["authorization"] == "License <access_token>"
    assert how["token_request"]["parameters"]["grant_type"] == "client_credentials"
    usages = doc["usages"]
    assert isinstance(usages, dict)
    assert list(usages) == ["ai-train", "ai-input", "ai-index", "search"]


def test_the_json_serialises_and_agrees_with_the_page() -> None:
    doc = json.loads(json.dumps(render_terms_json(EXAMPLE, **URLS)))
    page = html()
    for lic in doc["licenses"]:
        assert f'id="licence-{lic["name"]}"' in page
        assert f'<span class="tag {lic["terms"]}">' in page
        if lic["price"]:
            assert f'{lic["price"]["currency"]} {lic["price"]["amount"]}' in page
        for path in lic["paths"] or []:
            assert f"<code>{path}</code>" in page


def test_an_amount_is_an_exact_decimal_string() -> None:
    lic = License("a", usages=("ai-train",), price=Price(Decimal("1E+1"), "EUR", PricePer.DAY))
    assert license_json(lic)["price"] == {"amount": "10", "currency": "EUR", "per": "day"}
    assert "EUR 10 per day (subscription)" in html(Policy(rules=(), licenses=(lic,)))


# -- plain words ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(86400.0, "1 day"), (30 * 86400.0, "30 days"), (5400.0, "90 minutes"),
     (7200.0, "2 hours"), (45.0, "45 seconds"), (1.0, "1 second")],
)
def test_durations_use_the_largest_whole_unit(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [(10 * 2**30, "10 GiB"), (500 * 2**20, "500 MiB"), (10**9, "1 GB"),
     (1500, "1,500 bytes"), (1, "1 byte")],
)
def test_sizes_use_the_largest_exact_unit(size: int, text: str) -> None:
    assert size_text(size) == text


def test_limits_read_as_a_sentence() -> None:
    assert limits_text(None) == "No limits"
    assert limits_text(LicenseLimits(PricePer.DAY, requests=1)) == (
        "Up to 1 request per day per licensee")
    assert limits_text(LicenseLimits(PricePer.YEAR, bytes=2**40)) == (
        "Up to 1 TiB per year per licensee")
