"""Range-list parsing, the membership structure, and the registry of packaged lists."""

from __future__ import annotations

import ipaddress
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.errors import GatekeeperError
from gatekeeper.verify.ranges import (
    CacheMeta,
    Network,
    RangeListError,
    RangeRegistry,
    RangeSet,
    cache_paths,
    load_sources,
    parse_range_list,
    parse_sources,
)

SNAPSHOTS = resources.files("gatekeeper.data").joinpath("ip-ranges")
WITHOUT_SNAPSHOT = ("anthropic-bots", "bing-bingbot", "perplexity-perplexitybot")
# Prefix counts as recorded when the snapshots were copied (SOURCES.md).
SNAPSHOT_COUNTS = {
    "apple-applebot": 24,
    "commoncrawl-ccbot": 6,
    "duckduckgo-duckassistbot": 300,
    "duckduckgo-duckduckbot": 281,
    "google-googlebot": 307,
    "google-special-crawlers": 264,
    "google-user-triggered-fetchers-google": 494,
    "mistralai-user-ips": 4,
    "openai-chatgpt-user": 217,
    "openai-gptbot": 8,
    "openai-searchbot": 24,
    "perplexity-user": 3,
}


def prefixes_doc(*prefixes: str, **extra: Any) -> str:
    items = [
        {"ipv6Prefix" if ":" in p else "ipv4Prefix": p} for p in prefixes
    ]
    return json.dumps({**extra, "prefixes": items}, indent=2)


def snapshot_networks(source_id: str) -> list[Network]:
    doc = json.loads(SNAPSHOTS.joinpath(f"{source_id}.json").read_text("utf-8"))
    return [
        ipaddress.ip_network(item.get("ipv4Prefix") or item["ipv6Prefix"])
        for item in doc["prefixes"]
    ]


# --- parsing -------------------------------------------------------------------------


def test_prefixes_format_reads_ipv4_and_ipv6_prefixes_and_creation_time() -> None:
    text = prefixes_doc("192.0.2.0/24", "2001:db8::/32", creationTime="2026-01-14T15:45:48Z")
    parsed = parse_range_list(text, "prefixes", "list.json")
    assert parsed.networks == (
        ipaddress.ip_network("192.0.2.0/24"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert parsed.created == 1768405548.0


def test_prefixes_format_tolerates_extra_keys_like_synctoken_and_notes() -> None:
    text = prefixes_doc("198.51.100.0/29", synctoken="20260804124020", notes="CCBot ranges",
                        creationTime="2026-08-04T12:40:20Z")
    parsed = parse_range_list(text.encode(), "prefixes", "ccbot.json")
    assert parsed.networks == (ipaddress.ip_network("198.51.100.0/29"),)


def test_creation_time_without_zone_is_read_as_utc() -> None:
    text = prefixes_doc("192.0.2.0/24", creationTime="2026-09-17T13:04:59.394838")
    assert parse_range_list(text, "prefixes", "x").created == pytest.approx(1789650299.394838)


@pytest.mark.parametrize("stamp", ["yesterday", 17, None])
def test_unreadable_creation_time_keeps_the_prefixes(stamp: object) -> None:
    text = json.dumps({"creationTime": stamp, "prefixes": [{"ipv4Prefix": "192.0.2.0/24"}]})
    parsed = parse_range_list(text, "prefixes", "x")
    assert parsed.created is None
    assert len(parsed.networks) == 1


def test_prefix_with_host_bits_set_is_read_as_its_network() -> None:
    parsed = parse_range_list(prefixes_doc("192.0.2.77/24"), "prefixes", "x")
    assert parsed.networks == (ipaddress.ip_network("192.0.2.0/24"),)


def test_invalid_json_error_names_the_file_and_line() -> None:
    text = '{\n  "prefixes": [\n    {"ipv4Prefix": "192.0.2.0/24"},\n  ]\n}'
    with pytest.raises(RangeListError, match=r"^gptbot\.json:4: not valid JSON"):
        parse_range_list(text, "prefixes", "gptbot.json")


def test_bad_prefix_error_names_its_index_and_value() -> None:
    text = prefixes_doc("192.0.2.0/24", "192.0.2.0/33")
    with pytest.raises(RangeListError, match=r"^x\.json: prefixes\[1\]: ipv4Prefix: "
                                             r"'192\.0\.2\.0/33' is not an IP network"):
        parse_range_list(text, "prefixes", "x.json")


def test_ipv6_prefix_under_the_ipv4_key_is_rejected() -> None:
    text = json.dumps({"prefixes": [{"ipv4Prefix": "2001:db8::/32"}]})
    with pytest.raises(RangeListError, match=r"prefixes\[0\]: ipv4Prefix: .* not an IPv4"):
        parse_range_list(text, "prefixes", "x")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "expected a JSON object"),
        ({"creationTime": "2026-01-01T00:00:00"}, "prefixes: expected a list"),
        ({"prefixes": ["192.0.2.0/24"]}, r"prefixes\[0\]: expected an object"),
        ({"prefixes": [{"ipPrefix": "192.0.2.0/24"}]}, r"prefixes\[0\]: expected an ipv4Prefix"),
        ({"prefixes": [{"ipv4Prefix": 3232235520}]}, r"prefixes\[0\]: ipv4Prefix: expected a str"),
    ],
)
def test_malformed_prefixes_document_is_rejected_with_the_reason(doc: object,
                                                                 message: str) -> None:
    with pytest.raises(RangeListError, match=message):
        parse_range_list(json.dumps(doc), "prefixes", "x")


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("prefixes", '{"creationTime": "2026-01-01T00:00:00", "prefixes": []}'),
        ("cidr-list", "# nothing published yet\n\n"),
        ("json-list", "[]"),
    ],
)
def test_empty_list_is_rejected_in_every_format(fmt: str, text: str) -> None:
    with pytest.raises(RangeListError, match=r"^empty\.txt: the list has no prefixes"):
        parse_range_list(text, fmt, "empty.txt")


def test_cidr_list_skips_comments_and_blank_lines_and_reads_bare_addresses() -> None:
    text = "# bot ranges\n\n192.0.2.0/24\n  2001:db8::/48  # v6 block\n198.51.100.7\n"
    parsed = parse_range_list(text, "cidr-list", "bots.txt")
    assert [str(n) for n in parsed.networks] == ["192.0.2.0/24", "2001:db8::/48",
                                                 "198.51.100.7/32"]
    assert parsed.created is None


def test_cidr_list_error_names_the_line() -> None:
    with pytest.raises(RangeListError, match=r"^bots\.txt:3: 'not-an-ip' is not an IP network"):
        parse_range_list("192.0.2.0/24\n\nnot-an-ip\n", "cidr-list", "bots.txt")


def test_json_list_reads_an_array_of_cidr_strings() -> None:
    parsed = parse_range_list('["192.0.2.0/24", "2001:db8::/32"]', "json-list", "x")
    assert [str(n) for n in parsed.networks] == ["192.0.2.0/24", "2001:db8::/32"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"prefixes": []}', "expected a JSON array"),
        ('["192.0.2.0/24", 7]', r"\[1\]: expected a CIDR string"),
        ('["192.0.2.0/24", "192.0.2.300/32"]', r"\[1\]: '192\.0\.2\.300/32' is not an IP"),
        ('["192.0.2.0/24",', r"x:1: not valid JSON"),
    ],
)
def test_json_list_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(RangeListError, match=message):
        parse_range_list(text, "json-list", "x")


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(RangeListError, match="unknown format 'yaml'"):
        parse_range_list("[]", "yaml", "x")


def test_bytes_that_are_not_utf8_are_rejected() -> None:
    with pytest.raises(RangeListError, match="not UTF-8"):
        parse_range_list(b"\xff\xfe1.2.3.0/24", "cidr-list", "x")


def test_range_list_error_is_a_gatekeeper_error() -> None:
    assert issubclass(RangeListError, GatekeeperError)


# --- RangeSet ------------------------------------------------------------------------


def rangeset(*cidrs: str) -> RangeSet:
    return RangeSet(ipaddress.ip_network(c) for c in cidrs)


def test_ipv4_address_inside_a_range_matches_and_outside_does_not() -> None:
    ranges = rangeset("192.0.2.0/24", "198.51.100.0/25")
    assert "192.0.2.77" in ranges
    assert ranges.contains("198.51.100.1")
    assert "198.51.100.200" not in ranges
    assert "8.8.8.8" not in ranges


def test_first_and_last_address_of_a_network_match_and_neighbours_do_not() -> None:
    ranges = rangeset("192.0.2.16/28", "2001:db8::/126")
    assert "192.0.2.16" in ranges
    assert "192.0.2.31" in ranges
    assert "192.0.2.15" not in ranges
    assert "192.0.2.32" not in ranges
    assert "2001:db8::" in ranges
    assert "2001:db8::3" in ranges
    assert "2001:db8::4" not in ranges
    assert "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff" not in ranges


def test_ipv6_address_matches_ipv6_range_in_any_spelling() -> None:
    ranges = rangeset("2600:1f28:365:8000::/56")
    assert "2600:1f28:365:80ff:ffff::1" in ranges
    assert "2600:1F28:0365:8000:0000:0000:0000:0001" in ranges
    assert "2600:1f28:365:8100::" not in ranges


def test_ipv4_mapped_ipv6_address_matches_ipv4_range() -> None:
    ranges = rangeset("192.0.2.0/24")
    assert "::ffff:192.0.2.9" in ranges
    assert "::ffff:c000:209" in ranges
    assert "::ffff:198.51.100.9" not in ranges


def test_ipv4_address_does_not_match_an_ipv6_range_with_the_same_numbers() -> None:
    # ::/96 holds the integers 0..2**32-1, which are every IPv4 address as integers.
    ranges = rangeset("::/96")
    assert "192.0.2.1" not in ranges
    assert "::c000:201" in ranges


def test_ipv4_only_set_does_not_match_ipv6_addresses() -> None:
    ranges = rangeset("0.0.0.0/0")
    assert "203.0.113.1" in ranges
    assert "2001:db8::1" not in ranges


def test_overlapping_nested_and_adjacent_networks_merge_into_one_range() -> None:
    ranges = rangeset("192.0.2.0/25", "192.0.2.128/25", "192.0.2.64/26", "192.0.3.0/24",
                      "10.0.0.0/8", "2001:db8::/33", "2001:db8:8000::/33")
    assert len(ranges) == 3  # 192.0.2.0-192.0.3.255, 10/8, 2001:db8::/32
    assert "192.0.3.255" in ranges
    assert "192.0.4.0" not in ranges


def test_networks_with_a_gap_stay_separate_ranges() -> None:
    ranges = rangeset("192.0.2.0/26", "192.0.2.128/26")
    assert len(ranges) == 2
    assert "192.0.2.100" not in ranges


@pytest.mark.parametrize(
    "ip", ["", "192.0.2", "192.0.2.256", "192.0.2.1/32", " 192.0.2.1", "example.com",
           "2001:db8:::1", "::ffff:192.0.2.300"],
)
def test_malformed_address_is_in_no_set(ip: str) -> None:
    ranges = rangeset("0.0.0.0/0", "::/0")
    assert not ranges.contains(ip)
    assert ip not in ranges


def test_non_string_is_in_no_set() -> None:
    assert 3221225985 not in rangeset("0.0.0.0/0")


def test_empty_set_contains_nothing() -> None:
    ranges = RangeSet()
    assert len(ranges) == 0
    assert "192.0.2.1" not in ranges


_V4 = st.builds(
    lambda addr, plen: ipaddress.IPv4Network((addr, plen), strict=False),
    st.integers(0, 2**32 - 1), st.integers(8, 32),
)
_V6 = st.builds(
    lambda addr, plen: ipaddress.IPv6Network((addr, plen), strict=False),
    st.integers(0, 2**128 - 1), st.integers(16, 128),
)


def _near(network: Network) -> st.SearchStrategy[str]:
    """Addresses at and just beyond the edges of `network`, where off-by-ones live."""
    top = 2**32 - 1 if network.version == 4 else 2**128 - 1
    edges = [int(network.network_address) + d for d in (-1, 0)]
    edges += [int(network.broadcast_address) + d for d in (0, 1)]
    cls = ipaddress.IPv4Address if network.version == 4 else ipaddress.IPv6Address
    return st.sampled_from([str(cls(e)) for e in edges if 0 <= e <= top])


def _mapped(ip: str) -> str:
    return f"::ffff:{ip}"


@settings(max_examples=300, deadline=None)
@given(networks=st.lists(st.one_of(_V4, _V6), max_size=12), data=st.data())
def test_rangeset_agrees_with_checking_every_network(networks: list[Network],
                                                     data: st.DataObject) -> None:
    ranges = RangeSet(networks)
    candidates: list[st.SearchStrategy[str]] = [st.ip_addresses().map(str)]
    candidates += [_near(n) for n in networks]
    ips = data.draw(st.lists(st.one_of(candidates), min_size=1, max_size=20))
    ips += [_mapped(ip) for ip in ips if "." in ip]
    for ip in ips:
        address = ipaddress.ip_address(ip)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        expected = any(address in net for net in networks)
        assert ranges.contains(ip) is expected, ip
    assert len(ranges) <= len(networks)


# --- packaged snapshots and the registry ----------------------------------------------


@pytest.mark.parametrize("source_id", sorted(SNAPSHOT_COUNTS))
def test_every_packaged_snapshot_loads_and_its_own_prefixes_match(source_id: str) -> None:
    registry = RangeRegistry.load()
    state = registry.info(source_id)
    assert state.origin == "snapshot"
    assert state.prefixes == SNAPSHOT_COUNTS[source_id]
    assert state.updated_at is not None
    assert state.updated_at == state.created
    for net in snapshot_networks(source_id):
        for address in (net.network_address, net.broadcast_address):
            assert registry.match([source_id], str(address)) == source_id, net


def test_packaged_sources_all_have_snapshots_except_the_three_without_one() -> None:
    sources = load_sources()
    assert {sid for sid, info in sources.items() if info.snapshot is None} == set(
        WITHOUT_SNAPSHOT)
    assert {sid for sid, info in sources.items() if info.snapshot} == set(SNAPSHOT_COUNTS)
    assert all(info.url.startswith("https://") for info in sources.values())


def test_gptbot_address_matches_the_gptbot_list_and_a_public_resolver_does_not() -> None:
    registry = RangeRegistry.load()
    gptbot = snapshot_networks("openai-gptbot")[0]
    inside = str(gptbot.network_address + 5)
    assert registry.match(["openai-gptbot"], inside) == "openai-gptbot"
    assert registry.match(["openai-gptbot"], f"::ffff:{inside}") == "openai-gptbot"
    assert registry.match(["openai-gptbot"], "8.8.8.8") is None
    assert registry.match(["openai-gptbot"], "not an address") is None


def test_match_returns_the_first_listed_source_containing_the_address() -> None:
    registry = RangeRegistry.load()
    inside = str(snapshot_networks("openai-gptbot")[0].network_address)
    assert registry.match(["openai-searchbot", "openai-gptbot"], inside) == "openai-gptbot"
    assert registry.match(["no-such-list", "openai-gptbot"], inside) == "openai-gptbot"
    assert registry.match(["openai-searchbot"], inside) is None
    assert registry.match([], inside) is None


@pytest.mark.parametrize("source_id", WITHOUT_SNAPSHOT)
def test_sources_without_snapshot_have_no_data(source_id: str) -> None:
    registry = RangeRegistry.load()
    assert not registry.has_data(source_id)
    assert registry.info(source_id).origin == "none"
    assert registry.info(source_id).updated_at is None
    assert source_id in registry.sources()
    assert source_id not in registry.ages(2e9)
    assert registry.match([source_id], "216.73.216.1") is None


def test_snapshot_sources_have_data_and_unknown_ids_do_not() -> None:
    registry = RangeRegistry.load()
    assert registry.has_data("google-googlebot")
    assert not registry.has_data("no-such-list")
    with pytest.raises(KeyError):
        registry.info("no-such-list")


def test_ages_count_seconds_since_each_lists_creation_time() -> None:
    registry = RangeRegistry.load()
    created = registry.info("openai-gptbot").created
    assert created is not None
    ages = registry.ages(created + 90.0)
    assert ages["openai-gptbot"] == pytest.approx(90.0)
    assert set(ages) == set(SNAPSHOT_COUNTS)
    assert all(age >= 0.0 for age in ages.values())


def write_cache(cache_dir: Path, source_id: str, body: str, fetched_at: float) -> None:
    body_path, meta_path = cache_paths(cache_dir, source_id)
    body_path.write_text(body, encoding="utf-8")
    meta_path.write_text(CacheMeta("https://example.test/x.json", '"v1"', None,
                                   fetched_at).to_json(), encoding="utf-8")


def test_cached_copy_overrides_the_packaged_snapshot(tmp_path: Path) -> None:
    write_cache(tmp_path, "openai-gptbot", prefixes_doc("192.0.2.0/24"), fetched_at=1.8e9)
    registry = RangeRegistry.load(cache_dir=tmp_path)
    old = str(snapshot_networks("openai-gptbot")[0].network_address)
    assert registry.match(["openai-gptbot"], "192.0.2.200") == "openai-gptbot"
    assert registry.match(["openai-gptbot"], old) is None
    state = registry.info("openai-gptbot")
    assert (state.origin, state.prefixes, state.fetched_at) == ("cache", 1, 1.8e9)
    assert state.updated_at == 1.8e9  # no creationTime in the copy: its fetch time
    assert registry.info("openai-searchbot").origin == "snapshot"


def test_cached_copy_with_creation_time_is_dated_by_it(tmp_path: Path) -> None:
    body = prefixes_doc("192.0.2.0/24", creationTime="2026-11-01T00:00:00Z")
    write_cache(tmp_path, "openai-gptbot", body, fetched_at=1.8e9)
    state = RangeRegistry.load(cache_dir=tmp_path).info("openai-gptbot")
    assert state.updated_at == state.created == 1793491200.0


def test_cached_copy_gives_data_to_a_source_without_snapshot(tmp_path: Path) -> None:
    write_cache(tmp_path, "bing-bingbot", prefixes_doc("157.55.39.0/24"), fetched_at=1.8e9)
    registry = RangeRegistry.load(cache_dir=tmp_path)
    assert registry.has_data("bing-bingbot")
    assert registry.match(["bing-bingbot"], "157.55.39.1") == "bing-bingbot"
    assert registry.ages(1.8e9 + 60)["bing-bingbot"] == 60.0


def test_invalid_cached_copy_falls_back_to_the_snapshot_and_says_why(tmp_path: Path) -> None:
    write_cache(tmp_path, "openai-gptbot", '{"prefixes": []}', fetched_at=1.8e9)
    registry = RangeRegistry.load(cache_dir=tmp_path)
    state = registry.info("openai-gptbot")
    assert state.origin == "snapshot"
    assert state.cache_error is not None
    assert "no prefixes" in state.cache_error
    inside = str(snapshot_networks("openai-gptbot")[0].network_address)
    assert registry.match(["openai-gptbot"], inside) == "openai-gptbot"


def test_cached_copy_without_meta_is_dated_by_its_file(tmp_path: Path) -> None:
    body_path, _ = cache_paths(tmp_path, "openai-gptbot")
    body_path.write_text(prefixes_doc("192.0.2.0/24"), encoding="utf-8")
    state = RangeRegistry.load(cache_dir=tmp_path).info("openai-gptbot")
    assert state.origin == "cache"
    assert state.updated_at == body_path.stat().st_mtime


def test_missing_cache_directory_means_snapshots_only(tmp_path: Path) -> None:
    registry = RangeRegistry.load(cache_dir=tmp_path / "not-created-yet")
    assert registry.info("openai-gptbot").origin == "snapshot"


def sources_doc(**sources: dict[str, Any]) -> str:
    return json.dumps({"version": 1, "sources": sources})


def entry(**overrides: Any) -> dict[str, Any]:
    return {"operator": "Example", "url": "https://example.test/bot.json",
            "format": "prefixes", "snapshot": None, **overrides}


def test_own_sources_file_reads_snapshots_next_to_it(tmp_path: Path) -> None:
    (tmp_path / "bot.txt").write_text("192.0.2.0/24\n", encoding="utf-8")
    sources_file = tmp_path / "sources.json"
    sources_file.write_text(sources_doc(**{"example-bot": entry(format="cidr-list",
                                                                snapshot="bot.txt")}))
    registry = RangeRegistry.load(sources_file)
    assert list(registry.sources()) == ["example-bot"]
    assert registry.match(["example-bot"], "192.0.2.1") == "example-bot"
    state = registry.info("example-bot")
    assert state.updated_at == (tmp_path / "bot.txt").stat().st_mtime


def test_missing_snapshot_file_error_names_the_source(tmp_path: Path) -> None:
    sources_file = tmp_path / "sources.json"
    sources_file.write_text(sources_doc(**{"example-bot": entry(snapshot="gone.json")}))
    with pytest.raises(RangeListError, match=r"gone\.json: cannot read the snapshot of ex"):
        RangeRegistry.load(sources_file)


def test_invalid_snapshot_error_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bot.json").write_text('{"prefixes": [{"ipv4Prefix": "nope"}]}')
    sources_file = tmp_path / "sources.json"
    sources_file.write_text(sources_doc(**{"example-bot": entry(snapshot="bot.json")}))
    with pytest.raises(RangeListError, match=r"bot\.json: prefixes\[0\]: ipv4Prefix: 'nope'"):
        RangeRegistry.load(sources_file)


def test_unreadable_sources_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RangeListError, match="cannot read the range sources"):
        RangeRegistry.load(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("source_id", "fields", "message"),
    [
        ("Example_Bot", {}, "sources.Example_Bot: source ids are lowercase"),
        ("../etc", {}, r"sources\.\.\./etc: source ids are lowercase"),
        ("example-bot", {"url": "http://example.test/bot.json"}, "url: expected an https://"),
        ("example-bot", {"format": "yaml"}, "format: 'yaml' is not one of"),
        ("example-bot", {"snapshot": "../bot.json"}, "snapshot: expected a file name"),
        ("example-bot", {"operator": ""}, "operator: expected a non-empty string"),
        ("example-bot", {"mirror": "x"}, "mirror: unknown field"),
    ],
)
def test_invalid_source_entry_is_reported_with_file_and_id(
    source_id: str, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(RangeListError, match=message) as caught:
        parse_sources(sources_doc(**{source_id: entry(**fields)}), "my-sources.json")
    assert str(caught.value).startswith("my-sources.json: ")


def test_sources_file_reports_every_problem_at_once() -> None:
    text = json.dumps({"version": 2, "sources": {"a": entry(format="x"), "b": entry(url=1)}})
    with pytest.raises(RangeListError) as caught:
        parse_sources(text, "s.json")
    assert len(str(caught.value).splitlines()) == 3


def test_registry_from_prefixes_serves_given_lists() -> None:
    registry = RangeRegistry.from_prefixes({"test-gptbot": ["127.0.1.0/24"]})
    assert registry.match(["test-gptbot"], "127.0.1.7") == "test-gptbot"
    assert registry.match(["test-gptbot"], "127.0.0.2") is None
    assert registry.info("test-gptbot").origin == "inline"
