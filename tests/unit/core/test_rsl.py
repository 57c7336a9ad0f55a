"""The RSL document rendered from a policy, read back with xml.etree as a crawler would."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from decimal import Decimal
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.catalog import Catalog
from gatekeeper.core.globs import compile_path_glob
from gatekeeper.core.model import License, Policy, Price
from gatekeeper.core.robots import RobotsRules
from gatekeeper.core.rsl import (
    RSL_MEDIA_TYPE,
    RSL_NAMESPACE,
    license_patterns,
    render_rsl,
    rfc9309_patterns,
)
from gatekeeper.policy.loader import load_policy_text

NS = {"rsl": RSL_NAMESPACE}
SITE = "https://news.example.com"
SERVER = "https://news.example.com/.well-known/gatekeeper"
TERMS = "/.well-known/gatekeeper/licenses"

EXAMPLE = """
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
rules:
  - match: {purposes: [ai-training]}
    action: {require_license: {any_of: [ai-train-standard]}}
"""


@cache
def catalog() -> Catalog:
    return load_catalog()


def policy(licenses: str) -> Policy:
    text = f"version: 1\nlicenses:\n{licenses}\nrules: []\n" if licenses else "version: 1\n"
    return load_policy_text(text, "test.yaml", catalog())


def render(p: Policy, *, server: str = SERVER, terms_url: str = TERMS) -> ET.Element:
    return ET.fromstring(render_rsl(p, site=SITE, server=server, terms_url=terms_url))


def contents(root: ET.Element) -> dict[str, ET.Element]:
    return {c.attrib["url"]: c for c in root.findall("rsl:content", NS)}


def permits(content: ET.Element) -> list[str]:
    return [el.text or "" for el in content.findall("rsl:license/rsl:permits", NS)]


def only_license(p: Policy) -> ET.Element:
    (content,) = render(p).findall("rsl:content", NS)
    (lic,) = content.findall("rsl:license", NS)
    return lic


def direct(*licenses: License) -> Policy:
    """A policy built without the loader, to feed the renderer values it would refuse."""
    return Policy(rules=(), licenses=licenses)


# -- structure --------------------------------------------------------------------------


def test_the_root_is_an_unprefixed_rsl_element_in_the_rsl_namespace() -> None:
    raw = render_rsl(policy(""), site=SITE, server=SERVER, terms_url=TERMS)
    assert raw.startswith(b"<?xml version='1.0' encoding='utf-8'?>\n<rsl ")
    assert b'xmlns="https://rslstandard.org/rsl"' in raw
    assert b"xmlns:" not in raw
    root = ET.fromstring(raw)
    assert root.tag == "{https://rslstandard.org/rsl}rsl"
    assert root.attrib["max-age"] == "1"


def test_the_media_type_is_application_rsl_xml() -> None:
    assert RSL_MEDIA_TYPE == "application/rsl+xml"


def test_max_age_is_given_in_days() -> None:
    raw = render_rsl(policy(""), site=SITE, server=SERVER, terms_url=TERMS, max_age_days=7)
    assert ET.fromstring(raw).attrib["max-age"] == "7"


def test_every_licence_appears_with_its_usages_under_each_scope_it_covers() -> None:
    root = render(load_policy_text(EXAMPLE, "test.yaml", catalog()))
    found = contents(root)
    assert list(found) == ["/articles$", "/articles/", "/"]
    for url in ("/articles$", "/articles/"):
        assert permits(found[url]) == ["ai-train", "ai-input ai-index"]
    assert permits(found["/"]) == ["ai-input ai-index"]


def test_a_licence_without_paths_covers_the_site_root() -> None:
    found = contents(render(policy("  - {name: site, usages: [search]}")))
    assert list(found) == ["/"]


def test_site_wide_licences_are_repeated_in_narrower_scopes_so_none_hides_them() -> None:
    # RSL gives a narrower <content> precedence: /premium/ alone would hide "site".
    p = policy("""  - {name: site, usages: [ai-input]}
  - {name: premium, usages: [ai-train], paths: ["/premium/**"]}
  - {name: deep, usages: [ai-index], paths: ["/premium/deep/**"]}""")
    found = contents(render(p))
    assert permits(found["/premium/deep/"]) == ["ai-input", "ai-train", "ai-index"]
    assert permits(found["/premium/"]) == ["ai-input", "ai-train"]
    assert permits(found["/"]) == ["ai-input"]


def test_a_wildcard_scope_takes_only_licences_that_surely_contain_it() -> None:
    p = policy("""  - {name: pdfs, usages: [ai-train], paths: ["/docs/*.pdf"]}
  - {name: docs, usages: [ai-input], paths: ["/docs/**"]}
  - {name: other, usages: [ai-index], paths: ["/other/**"]}""")
    found = contents(render(p))
    assert permits(found["/docs/*.pdf$"]) == ["ai-train", "ai-input"]
    assert permits(found["/docs/"]) == ["ai-input"]
    assert permits(found["/other/"]) == ["ai-index"]


def test_every_content_names_the_licence_server_and_the_terms_page_as_absolute_urls() -> None:
    for content in render(policy("  - {name: a, usages: [search]}"), server="/olp"):
        assert content.attrib["server"] == "https://news.example.com/olp"
        terms = content.find("rsl:terms", NS)
        assert terms is not None
        assert terms.text == "https://news.example.com/.well-known/gatekeeper/licenses"


def test_an_absolute_terms_url_is_kept_and_empty_ones_are_left_out() -> None:
    p = policy("  - {name: a, usages: [search]}")
    (content,) = render(p, terms_url="https://legal.example.org/ai").findall("rsl:content", NS)
    assert content.findtext("rsl:terms", namespaces=NS) == "https://legal.example.org/ai"
    (bare,) = render(p, server="", terms_url="").findall("rsl:content", NS)
    assert "server" not in bare.attrib
    assert bare.find("rsl:terms", NS) is None


def test_usages_are_listed_once_each_separated_by_spaces() -> None:
    lic = only_license(direct(License("x", usages=("ai-train", "ai-input", "ai-train"))))
    assert lic.findtext("rsl:permits[@type='usage']", namespaces=NS) == "ai-train ai-input"


# -- payment ----------------------------------------------------------------------------


def test_a_per_request_price_is_a_crawl_payment_with_the_exact_amount() -> None:
    lic = only_license(policy("""  - name: a
    usages: [ai-train]
    price: {amount: 0.0015, currency: EUR, per: request}"""))
    payment = lic.find("rsl:payment", NS)
    assert payment is not None
    assert payment.attrib == {"type": "crawl"}
    amount = payment.find("rsl:amount", NS)
    assert amount is not None
    assert (amount.attrib, amount.text) == ({"currency": "EUR"}, "0.0015")


@pytest.mark.parametrize("per", ["day", "month", "year"])
def test_a_price_per_period_is_a_subscription_payment(per: str) -> None:
    lic = only_license(policy(f"""  - name: a
    usages: [ai-input]
    price: {{amount: 500, currency: USD, per: {per}}}"""))
    assert lic.find("rsl:payment[@type='subscription']/rsl:amount", NS) is not None
    assert lic.findtext("rsl:payment/rsl:amount", namespaces=NS) == "500"


def test_an_amount_never_uses_exponent_notation() -> None:
    p = direct(License("a", usages=("ai-train",), price=Price(Decimal("1E+2"), "USD")))
    assert only_license(p).findtext("rsl:payment/rsl:amount", namespaces=NS) == "100"


def test_contact_terms_are_a_custom_payment_carrying_the_contact_url() -> None:
    lic = only_license(policy("""  - name: a
    usages: [ai-input]
    contact: https://example.com/licensing"""))
    payment = lic.find("rsl:payment", NS)
    assert payment is not None
    assert "type" not in payment.attrib
    assert payment.findtext("rsl:custom", namespaces=NS) == "https://example.com/licensing"
    assert payment.find("rsl:amount", NS) is None


def test_a_priced_licence_with_a_contact_gives_both_amount_and_custom() -> None:
    lic = only_license(policy("""  - name: a
    usages: [ai-input]
    price: {amount: 1, currency: USD, per: request}
    contact: mailto:sales@example.com"""))
    assert lic.findtext("rsl:payment/rsl:amount", namespaces=NS) == "1"
    assert lic.findtext("rsl:payment/rsl:custom", namespaces=NS) == "mailto:sales@example.com"


@pytest.mark.parametrize("price", ["", "\n    price: {amount: 0, currency: USD}"])
def test_a_licence_without_price_or_contact_is_a_free_payment(price: str) -> None:
    lic = only_license(policy(f"  - name: a\n    usages: [search]{price}"))
    payment = lic.find("rsl:payment", NS)
    assert payment is not None
    assert payment.attrib == {"type": "free"}
    assert list(payment) == []


# -- prohibitions -----------------------------------------------------------------------


def test_prohibits_names_the_ai_usages_no_licence_of_the_policy_grants() -> None:
    p = policy("""  - {name: a, usages: [ai-input]}
  - {name: b, usages: [search], paths: ["/news/**"]}""")
    for content in render(p):
        for lic in content.findall("rsl:license", NS):
            assert lic.findtext("rsl:prohibits[@type='usage']",
                                namespaces=NS) == "ai-train ai-index"


@pytest.mark.parametrize("umbrella", ["ai-all", "all"])
def test_nothing_is_prohibited_when_a_licence_grants_every_ai_usage(umbrella: str) -> None:
    p = policy(f"""  - {{name: a, usages: [{umbrella}], paths: ["/x/**"]}}
  - {{name: b, usages: [search]}}""")
    assert render(p).findall(".//rsl:prohibits", NS) == []


def test_a_usage_sold_by_one_licence_is_never_prohibited_by_another() -> None:
    root = render(load_policy_text(EXAMPLE, "test.yaml", catalog()))
    assert root.findall(".//rsl:prohibits", NS) == []


# -- nothing to offer -------------------------------------------------------------------


def test_no_licences_give_a_well_formed_document_that_grants_nothing() -> None:
    root = render(policy(""))
    assert root.tag == f"{{{RSL_NAMESPACE}}}rsl"
    assert list(root) == []
    assert root.findall(".//rsl:permits", NS) == []


def test_a_licence_granting_no_usage_is_left_out_rather_than_granting_everything() -> None:
    # In RSL a <license> without <permits> restricts no usage at all.
    root = render(policy("  - {name: empty, description: nothing yet}"))
    assert list(root) == []


# -- escaping ---------------------------------------------------------------------------


HOSTILE = "<script>alert('x')</script> & \"quoted\" ]]> &amp;"


def test_hostile_contact_and_urls_round_trip_through_the_xml_unchanged() -> None:
    p = direct(License("a", usages=("ai-input",), contact=f"mailto:{HOSTILE}"))
    raw = render_rsl(p, site=SITE, server=f"https://h.example/{HOSTILE}",
                     terms_url=f"/{HOSTILE}")
    assert b"<script>" not in raw
    root = ET.fromstring(raw)
    (content,) = root.findall("rsl:content", NS)
    assert content.attrib["server"] == f"https://h.example/{HOSTILE}"
    assert content.findtext("rsl:terms", namespaces=NS) == f"{SITE}/{HOSTILE}"
    assert content.findtext("rsl:license/rsl:payment/rsl:custom",
                            namespaces=NS) == f"mailto:{HOSTILE}"


def test_characters_xml_cannot_carry_are_dropped_so_the_document_stays_well_formed() -> None:
    p = direct(License("a", usages=("ai-input",), contact="mailto:a\x00b\x1bc@example.com"))
    lic = only_license(p)
    assert lic.findtext("rsl:payment/rsl:custom", namespaces=NS) == "mailto:abc@example.com"


def test_path_characters_are_percent_encoded_as_rfc_9309_compares_them() -> None:
    p = policy("""  - name: a
    usages: [ai-train]
    paths: ["/caf\u00e9/it's&more/**", "/price$list"]""")
    assert list(contents(render(p))) == [
        "/caf%C3%A9/it's&more$", "/caf%C3%A9/it's&more/", "/price%24list$"]


# -- determinism ------------------------------------------------------------------------


def test_the_same_policy_always_gives_the_same_bytes() -> None:
    first = load_policy_text(EXAMPLE, "test.yaml", catalog())
    second = load_policy_text(EXAMPLE, "test.yaml", catalog())
    out = {render_rsl(p, site=SITE, server=SERVER, terms_url=TERMS)
           for p in (first, second, first)}
    assert len(out) == 1


# -- path translation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("glob", "patterns"),
    [
        ("/about", ("/about$",)),
        ("/articles/**", ("/articles$", "/articles/")),
        ("/**", ("/",)),
        ("/a/**/b", ("/a/b$", "/a/*/b$")),
        ("/**/feed.xml", ("/feed.xml$", "/*/feed.xml$")),
        ("/{news,blog}/**", ("/news$", "/news/", "/blog$", "/blog/")),
        ("/docs/*.pdf", ("/docs/*.pdf$",)),
        ("/docs/*", ("/docs/",)),
        ("/v?/api", ("/v*/api$",)),
    ],
)
def test_policy_globs_become_rfc_9309_patterns(glob: str, patterns: tuple[str, ...]) -> None:
    assert rfc9309_patterns(glob) == patterns


def test_too_many_brace_alternatives_become_one_wider_pattern() -> None:
    glob = "/{a,b,c,d,e,f,g,h,i}/{a,b,c,d,e,f,g,h,i}/x"
    assert rfc9309_patterns(glob) == ("/*/*/x$",)


def test_license_patterns_join_every_path_of_a_licence() -> None:
    p = policy("""  - {name: a, usages: [ai-train], paths: ["/a/**", "/a/**", "/b"]}""")
    assert license_patterns(p.licenses[0]) == ("/a$", "/a/", "/b$")


def robots_matches(patterns: tuple[str, ...], path: str) -> bool:
    body = "User-agent: *\n" + "".join(f"Disallow: {p}\n" for p in patterns)
    return not RobotsRules.parse(body.encode()).verdict("anybot", path).allowed


SEGMENT = st.sampled_from(["a", "b", "ab", "x.pdf", "caf%C3%A9", ""])
PATHS = st.lists(SEGMENT, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts))
EXACT = ["/a", "/a/**", "/a/**/b", "/**/b", "/{a,b}/**", "/ab/**/x.pdf", "/caf\u00e9/**"]
WIDER = ["/a/*", "/*/b", "/a?", "/*.pdf", "/a/*/b/**"]


@settings(max_examples=300, deadline=None)
@given(path=PATHS, glob=st.sampled_from(EXACT))
def test_exact_globs_match_the_same_paths_as_their_rfc_9309_patterns(
    path: str, glob: str
) -> None:
    assert compile_path_glob(glob).match(path) == robots_matches(rfc9309_patterns(glob), path)


@settings(max_examples=300, deadline=None)
@given(path=PATHS, glob=st.sampled_from(WIDER))
def test_other_globs_never_match_a_path_their_rfc_9309_patterns_miss(
    path: str, glob: str
) -> None:
    if compile_path_glob(glob).match(path):
        assert robots_matches(rfc9309_patterns(glob), path)


def test_withheld_paths_get_their_own_content_that_prohibits_ai_use() -> None:
    from gatekeeper.catalog_loader import load_catalog
    from gatekeeper.core.rsl import RSL_NAMESPACE, render_rsl
    from gatekeeper.policy.loader import load_policy_text

    policy = load_policy_text(
        "version: 1\nlicenses:\n  - name: train\n    usages: [ai-train]\n"
        "    price: {amount: 1, currency: USD}\n", "p.yaml", load_catalog())
    doc = ET.fromstring(render_rsl(policy, site="https://news.example", server="/lic",
                                   terms_url="/terms", withheld=["/articles/alice/**"]))
    ns = {"r": RSL_NAMESPACE}
    contents = {c.get("url"): c for c in doc.findall("r:content", ns)}
    alice = contents["/articles/alice/"]
    assert alice.get("server") is None  # nothing to obtain there
    assert alice.find("r:license/r:permits", ns).text == "search"  # type: ignore[union-attr]
    assert alice.find("r:license/r:prohibits", ns).text == "ai-all"  # type: ignore[union-attr]
    assert contents["/"].get("server") == "https://news.example/lic"
