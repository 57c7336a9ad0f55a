"""The policy format's keys and words, in one table shared by the loader and the schema."""

from __future__ import annotations

TOP_KEYS = frozenset(
    {"version", "mode", "default", "license_terms_url", "licenses", "rules", "hosts", "include"}
)
LICENSE_KEYS = frozenset({"name", "usages", "description"})
RULE_KEYS = frozenset({"name", "match", "action"})
MATCH_KEYS = frozenset(
    {"crawlers", "operators", "purposes", "kinds", "identities", "paths", "methods", "hosts",
     "headers"}
)
HEADER_VALUE_KEYS = frozenset({"equals", "glob", "regex"})
ACTIONS = frozenset({"allow", "block", "rate_limit", "require_license", "monitor"})
BLOCK_KEYS = frozenset({"status", "body", "headers"})
RATE_LIMIT_KEYS = frozenset({"rate", "burst", "key"})
REQUIRE_LICENSE_KEYS = frozenset({"any_of"})
HOST_SECTION_KEYS = frozenset({"hosts", "rules"})
INCLUDE_KEYS = frozenset({"rules", "include"})

# RSL 1.0 usage vocabulary, which licences grant.
USAGES = ("all", "ai-all", "ai-train", "ai-input", "ai-index", "search")
DEFAULT_TERMS_URL = "/.well-known/gatekeeper/licenses"

ACTION_EXAMPLES = {
    "rate_limit": "{rate_limit: {rate: 60/min, burst: 10}}",
    "require_license": "{require_license: {any_of: [my-licence]}}",
}
