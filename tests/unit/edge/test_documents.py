"""Which paths are public documents and who serves them; declarations plans are built
off the event loop, once per policy; the headers forwarded responses carry."""

from __future__ import annotations

import asyncio

import pytest

from gatekeeper.catalog_loader import load_catalog
from gatekeeper.core.model import Policy
from gatekeeper.edge.documents import Documents
from gatekeeper.policy.loader import load_default_policy, load_policy_text
from gatekeeper.vocabulary_loader import load_vocabularies

CATALOG = load_catalog()


def _documents(policy: list[Policy], built: list[int]) -> Documents:
    return Documents(lambda: policy[0], lambda: None, "/token", crawlers=CATALOG,
                     vocab=load_vocabularies(), on_new_plan=lambda: built.append(1))


async def _tick(ticks: list[int]) -> None:
    """Counts the event loop's turns until cancelled: proof that it kept running."""
    while True:
        ticks[0] += 1
        await asyncio.sleep(0)


async def test_a_plan_is_built_once_in_a_thread_while_the_loop_keeps_running() -> None:
    built: list[int] = []
    documents = _documents([load_default_policy(CATALOG)], built)
    assert documents.ready_headers("example.com", "/a", "https") is None
    ticks = [0]
    running = asyncio.create_task(_tick(ticks))
    await asyncio.gather(*(documents.build_plan("example.com") for _ in range(5)))
    running.cancel()
    assert built == [1]  # five waiters, one build
    assert ticks[0] > 5  # the loop went on while the plan was derived
    headers = documents.ready_headers("example.com", "/a", "https")
    assert headers == documents.response_headers("example.com", "/a", "https")
    assert dict(headers or ())["Content-Usage"]


async def test_a_new_policy_needs_a_new_plan() -> None:
    built: list[int] = []
    policy = [load_default_policy(CATALOG)]
    documents = _documents(policy, built)
    await documents.build_plan("example.com")
    policy[0] = load_default_policy(CATALOG)  # a reload: another policy object
    assert documents.ready_headers("example.com", "/a", "https") is None
    await documents.build_plan("example.com")
    assert len(built) == 2


async def test_the_front_ends_headers_are_derived_off_the_loop_on_first_use() -> None:
    # What the proxy, forward-auth and the mitmproxy addon call for each response.
    built: list[int] = []
    documents = _documents([load_default_policy(CATALOG)], built)
    ticks = [0]
    running = asyncio.create_task(_tick(ticks))
    first = await asyncio.gather(*(documents.declared_headers("example.com", "/a", "https")
                                   for _ in range(3)))
    running.cancel()
    assert built == [1]
    assert ticks[0] > 5
    assert first[0] == first[2] == documents.response_headers("example.com", "/a", "https")
    assert await documents.declared_headers("example.com", "/a", "https") == first[0]
    assert built == [1]  # the second time, from the plan already built


def _policy(text: str) -> Policy:
    return load_policy_text("version: 1\n" + text, "test.yaml", CATALOG)


@pytest.mark.parametrize(("settings", "path", "kind", "origin"), [
    ("", "/robots.txt", "robots.txt", False),
    ("declarations: {robots_txt: 'off'}\n", "/robots.txt", "robots.txt", True),
    ("", "/.well-known/tdmrep.json", "tdmrep.json", False),
    ("declarations: {tdmrep: false}\n", "/.well-known/tdmrep.json", "tdmrep.json", True),
    ("declarations: {robots_txt: 'off'}\n", "/license.xml", "license.xml", False),
    ("declarations: {robots_txt: 'off'}\n", "/robots", None, False),
])
def test_a_public_document_gatekeeper_does_not_write_is_the_origins_and_never_gated(
        settings: str, path: str, kind: str | None, origin: bool) -> None:
    documents = _documents([_policy("default: block\n" + settings + "rules: []\n")], [])
    assert documents.kind("GET", path) == kind
    if kind is not None:
        assert documents.origin_serves(kind) is origin


def test_without_a_usage_vocabulary_robots_txt_is_the_origins() -> None:
    documents = Documents(lambda: load_default_policy(CATALOG), lambda: None, "/token",
                          crawlers=CATALOG)
    assert documents.kind("GET", "/robots.txt") == "robots.txt"
    assert documents.origin_serves("robots.txt")


def test_the_licence_link_is_sent_with_tdmrep_and_content_usage_off() -> None:
    documents = _documents([_policy("""
declarations: {tdmrep: false, content_usage: false}
licenses: [{name: idx, usages: [search]}]
rules:
  - {match: {purposes: [search-engine], paths: ["/archive/**"]},
     action: {require_license: {any_of: [idx]}}}
""")], [])
    assert documents.response_headers("example.com", "/archive/x", "https") == (
        ("Link", '<https://example.com/license.xml>; rel="license"; '
                 'type="application/rsl+xml"'),)
    assert documents.response_headers("example.com", "/a", "https") == ()


async def test_a_robots_txt_longer_than_parsers_read_is_served_and_logged_once() -> None:
    from structlog.testing import capture_logs

    pages = "\n".join(f"        - /{'section/' * 400}{n}" for n in range(40))
    policy = load_policy_text(
        "version: 1\nrules:\n  - name: open\n    match:\n      paths:\n" + pages +
        "\n    action: allow\n  - name: ai\n    match: {purposes: [ai-training]}\n"
        "    action: block\n", "long.yaml", CATALOG)
    documents = _documents([policy], [])
    with capture_logs() as logs:
        for _ in range(2):
            served = await documents.answer("robots.txt", "GET", "", "example.com", "https",
                                            "text/plain")
            assert served.status == 200
    warned = [e for e in logs if e["event"] == "robots_txt_over_limit"]
    assert len(warned) == 1
    assert "512000" in warned[0]["detail"]
