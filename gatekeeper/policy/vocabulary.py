"""The policy format's keys and words, in one place.

The loader accepts exactly these keys and words; the JSON Schema is built from
the same tables (and the descriptions become editor hints), so the two cannot
drift apart. The enumerations that belong to the core (purposes, kinds,
identities, modes, rate-limit keys) are read from the core's enums instead.
"""

from __future__ import annotations

VERSION = 1

TOP_KEYS: dict[str, str] = {
    "version": "Format version of this file; must be 1.",
    "mode": "enforce, or monitor: every action becomes a dry run (logged, counted, forwarded).",
    "default": "The action for requests no rule matches.",
    "license_terms_url": "Where a 402 answer points crawlers to read the licence terms.",
    "licenses": "Named licence offers that require_license can ask for.",
    "rules": "Rules tried in order; the first that matches decides.",
    "hosts": "Per-host rule sections, tried before the top-level rules.",
    "include": "Rule files to append after these rules, relative to this file.",
    "declarations": "robots.txt, TDMRep and Content-Usage generated from this policy.",
}
# An included file contributes rules only: mode, default and licences belong to
# the main file, so two files can never disagree about them.
INCLUDED_KEYS: dict[str, str] = {
    "version": TOP_KEYS["version"],
    "rules": "Rules appended, in order, where the including file lists this file.",
    "include": TOP_KEYS["include"],
}
LICENSE_KEYS: dict[str, str] = {
    "name": "The name require_license refers to: letters, digits, '.', '_' and '-'.",
    "usages": "What the licence allows: all, ai-all, ai-train, ai-input, ai-index, search.",
    "description": "A sentence for people reading the licence terms.",
    "paths": "Path globs the licence covers; default every path its rules cover.",
    "price": "{amount: 0.002, currency: USD, per: request|day|month|year}; none: free.",
    "contact": "mailto: or https: URL: terms agreed by asking (no price needed).",
    "validity": "How long a token for it lasts: 30d, 12h, 3600s (default 30d).",
    "limits": "{requests: N, bytes: 10GiB, per: day|month|year} per licensee.",
}
PRICE_KEYS: dict[str, str] = {
    "amount": "A decimal number of the currency's units, e.g. 0.002.",
    "currency": "ISO 4217 code, e.g. USD, EUR.",
    "per": "request (default), day, month or year.",
}
LIMIT_KEYS: dict[str, str] = {
    "requests": "Requests per period.",
    "bytes": "Response bytes per period: a number or 500MiB, 10GiB, ...",
    "per": "The period: day, month (default) or year.",
}
DURATION_UNITS: dict[str, float] = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
SIZE_UNITS: dict[str, int] = {
    "": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}
RULE_KEYS: dict[str, str] = {
    "name": "Shown in logs, metrics and answers; default rules[N].",
    "match": "Conditions that must all hold; omitted or empty matches every request.",
    "action": "What to do with a matching request.",
}
MATCH_KEYS: dict[str, str] = {
    "crawlers": "Catalog crawler names (any case).",
    "operators": "Operators of catalog crawlers, e.g. OpenAI (any case).",
    "purposes": "Why the crawler fetches pages.",
    "kinds": "crawler (in the catalog), other-bot, undeclared-bot (by behaviour), or unknown.",
    "identities": "How sure the gate is of who sent the request.",
    "paths": "Path globs: * within a segment, ** any segments, ?, {a,b}.",
    "methods": "HTTP methods (any case).",
    "hosts": "Host globs: *.example.com is every subdomain.",
    "headers": "Header name: present, absent, {equals: v}, {glob: g} or {regex: r}.",
    "robots": "disallowed or allowed: what the origin's robots.txt says for the crawler here.",
}
ROBOTS_STATES = ("disallowed", "allowed")
HEADER_STATES = ("present", "absent")
HEADER_VALUE_KEYS: dict[str, str] = {
    "equals": "The value, exactly (case-sensitive).",
    "glob": "A glob over the value: * is any run of characters.",
    "regex": "An RE2 regular expression found anywhere in the value.",
}
ACTIONS: dict[str, str] = {
    "allow": "Forward the request.",
    "block": "Answer 403 (or the given status) instead of forwarding.",
    "rate_limit": "Forward within a token-bucket rate; answer 429 beyond it.",
    "require_license": "Answer 402 unless the request carries one of the licences.",
    "monitor": "Forward, and log and count the request under this rule.",
}
# Actions that can be written as a bare word; the others need settings.
SIMPLE_ACTIONS = ("allow", "block", "monitor")
ACTION_EXAMPLES = {
    "rate_limit": "{rate_limit: {rate: 60/min, burst: 10}}",
    "require_license": "{require_license: {any_of: [my-licence]}}",
}
BLOCK_KEYS: dict[str, str] = {
    "status": "A 4xx or 5xx status; default 403.",
    "body": "Plain-text body instead of the standard JSON body.",
    "headers": "Extra response headers.",
}
BLOCK_STATUS_MIN, BLOCK_STATUS_MAX = 400, 599
# Headers that describe the message framing or the connection. The server sets
# them; a policy that set them could corrupt the answer.
RESERVED_RESPONSE_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
     "trailer", "proxy-connection"}
)
RATE_LIMIT_KEYS: dict[str, str] = {
    "rate": "Requests per time: N/s, N/min, N/h, or a number (per second).",
    "burst": "Requests allowed at once; default the per-second rate, at least 1.",
    "key": "Who shares a bucket: crawler, operator, client_ip or client_network.",
}
RATE_UNITS: dict[str, float] = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hour": 3600.0,
}
# Used by the loader (on policy text, with Python's re: the pattern is ours) and
# by the schema; group 1 is the count, group 2 the unit.
RATE_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(" + "|".join(RATE_UNITS) + r"))?\s*$"
REQUIRE_LICENSE_KEYS: dict[str, str] = {
    "any_of": "Licences (declared under licenses) any one of which grants access.",
}
HOST_SECTION_KEYS: dict[str, str] = {
    "hosts": "Host globs this section is for.",
    "rules": "Rules for these hosts, tried before the top-level rules.",
}

# RSL 1.0 usage vocabulary, which licences grant.
USAGES = ("all", "ai-all", "ai-train", "ai-input", "ai-index", "search")
LICENSE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
DEFAULT_TERMS_URL = "/.well-known/gatekeeper/licenses"
# RFC 9110 methods, PATCH, and the WebDAV ones a site might see; anything else
# is most likely a typo, and a rule naming it would never match.
METHODS = (
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH",
)
# Rule names appear in logs, metrics and answer bodies; "default" already names
# the outcome when no rule matches.
RESERVED_RULE_NAMES = frozenset({"default"})
MAX_RULE_NAME = 100
# Includes may nest; this bounds a runaway include tree (cycles are refused anyway).
MAX_INCLUDED_FILES = 64
# Bytes in one policy file. Real policies are kilobytes; loading takes about 0.4 ms per
# rule, so the cap bounds the time a reload can take (a 50 MiB file would hold a
# reload for minutes) and the memory the YAML nodes need.
MAX_POLICY_FILE_BYTES = 1024 * 1024
# YAML aliases (`*name`) in one file. An alias is never expanded, but the walk visits
# what it names each time: 60 aliases at each of three levels (hosts, rules, paths)
# already mean 216,000 paths from a 1.4 KB file. Real policies reuse an anchor a
# few times.
MAX_YAML_ALIASES = 100
DECLARATION_KEYS: dict[str, str] = {
    "robots_txt": "merge (default): origin's file plus generated groups; replace; off.",
    "tdmrep": "Serve /.well-known/tdmrep.json and tdm-* headers (default true).",
    "content_usage": "Send Content-Usage headers and robots.txt usage lines (default true).",
    "usage": "Stated usage preferences per path: [{paths: [...], train-ai: n, ...}].",
}
USAGE_PATHS_KEY = "paths"
USAGE_VALUES: dict[str, bool] = {"y": True, "n": False}
