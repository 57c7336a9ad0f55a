"""The policy's licences as an RSL 1.0 document (`application/rsl+xml`).

`render_rsl` writes one `<content>` element per URL pattern a licence covers and,
inside it, one `<license>` per licence on offer there. docs/rsl.md says how each
policy field maps to RSL and which parts of the specification were checked.

Three choices keep the document from saying more than the policy does:

- Scope. RSL gives the narrower `<content>` precedence over a broader one, so a
  `<content>` also lists every licence whose own scope contains it (a licence
  without paths contains every scope). Otherwise `/articles/` would hide the
  site-wide licences from a crawler reading terms for `/articles/42`.
- Prohibitions. A `<prohibits>` names only AI usages that no licence of the
  policy grants: RSL reads a use that one licence permits and another prohibits
  as not licensed, so prohibiting what a sibling licence sells would withdraw it.
- Paths. Policy globs become RFC 9309 patterns (`*`, final `$`). `**` and `{a,b}`
  translate exactly; `*` and `?` inside a segment cannot (RFC 9309 `*` also
  crosses `/`) and become the nearest wider pattern. The gate's own matching
  decides what a token covers; the document only advertises.

The element order follows the policy, so one policy gives the same bytes.
"""

from __future__ import annotations

import functools
import itertools
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

from gatekeeper.core.model import License, Policy, PricePer

RSL_NAMESPACE: Final = "https://rslstandard.org/rsl"
RSL_MEDIA_TYPE: Final = "application/rsl+xml"
# RSL `max-age` is in days (30 when absent). The policy reloads while Gatekeeper
# runs, so crawlers are asked to look again daily rather than keep stale prices.
DEFAULT_MAX_AGE_DAYS: Final = 1

ROOT_PATTERN: Final = "/"
# The AI usages a `<prohibits>` may name; `ai-all` and `all` would also forbid
# uses nobody has defined yet, which the policy cannot have decided.
AI_USAGES: Final = ("ai-train", "ai-input", "ai-index")
# Usage tokens that include others.
_INCLUDES: Final = {"all": frozenset({"all", "ai-all", "search", *AI_USAGES}),
                    "ai-all": frozenset({"ai-all", *AI_USAGES})}
# Brace alternatives beyond this many patterns become one wider `*`.
MAX_EXPANSIONS: Final = 64

# Path characters RFC 9309 matches as they are (RFC 3986 pchar and "/", with
# escapes kept); "$" is left out because a pattern uses it as the end anchor.
_PLAIN_PATH: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!&'()+,;=:@/%"
)
# Characters XML 1.0 cannot carry at all, even escaped.
_NOT_XML: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# "/**" is zero or more whole segments: nothing, or "/" and anything after it.
_SEGMENTS: Final = ("", "/*")


def render_rsl(
    policy: Policy,
    *,
    site: str,
    server: str,
    terms_url: str,
    max_age_days: int = DEFAULT_MAX_AGE_DAYS,
    withheld: Sequence[str] = (),
) -> bytes:
    """The site's RSL document, UTF-8 with an XML declaration.

    `site` is the origin crawlers fetch (`https://news.example.com`); `server`
    is the licence server's base URL (the OLP endpoints hang below it) and
    `terms_url` the human-readable terms page; either may be a path on `site`,
    and an empty one is left out. With no licence to offer, the `<rsl>` element
    is empty: there is nothing to license, and RSL treats content without a
    licence as unlicensed, which is what the policy says.

    `withheld` are path globs whose authors opted out of AI use
    (`gatekeeper.core.owners`): each gets its own, narrower `<content>` that permits
    search and prohibits every AI use, with no licence server, so the site's licences
    (which the gate will not sell there) are not offered for them.
    """
    root = ET.Element("rsl", {"xmlns": RSL_NAMESPACE, "max-age": str(max_age_days)})
    # A <license> without <permits> restricts no usage: a licence granting none is
    # left out rather than written as one granting everything.
    offered = [lic for lic in policy.licenses if lic.usages]
    granted = _granted_usages(offered)
    scopes = {lic.name: license_patterns(lic) for lic in offered}
    server_url = _absolute(site, server)
    terms = _absolute(site, terms_url)
    for pattern in _unique(p for lic in offered for p in scopes[lic.name]):
        attributes = {"url": pattern}
        if server_url:
            attributes["server"] = server_url
        content = ET.SubElement(root, "content", attributes)
        for lic in offered:
            if any(_within(pattern, broad) for broad in scopes[lic.name]):
                content.append(_license_element(lic, granted))
        if terms:
            ET.SubElement(content, "terms").text = terms
    for pattern in _unique(p for glob in withheld for p in rfc9309_patterns(glob)):
        content = ET.SubElement(root, "content", {"url": pattern})
        refusal = ET.SubElement(content, "license")
        ET.SubElement(refusal, "permits", {"type": "usage"}).text = "search"
        ET.SubElement(refusal, "prohibits", {"type": "usage"}).text = "ai-all"
    ET.indent(root)
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document + b"\n"


def license_patterns(lic: License) -> tuple[str, ...]:
    """The RFC 9309 patterns of the paths a licence covers (`/` without paths)."""
    if lic.paths is None:
        return (ROOT_PATTERN,)
    return tuple(_unique(p for glob in lic.paths for p in rfc9309_patterns(glob.text)))


# Pure, and asked the same globs once per catalog crawler by the declarations plan.
@functools.lru_cache(maxsize=4096)
def rfc9309_patterns(glob: str) -> tuple[str, ...]:
    """RFC 9309 patterns that together match what the policy path glob matches.

    Exact for literal text, `**` and `{a,b}`; `*` and `?` within a segment give a
    wider pattern, since RFC 9309 has no wildcard that stops at `/`.
    """
    out: list[str] = []
    for expanded in _expand_braces(glob):
        for combination in itertools.product(*_pieces(expanded)):
            pattern = _anchor(re.sub(r"\*+", "*", "".join(combination)))
            if pattern.startswith("/"):
                out.append(pattern)
    return tuple(_unique(out))


# -- licences ---------------------------------------------------------------------------


def _license_element(lic: License, granted: frozenset[str]) -> ET.Element:
    element = ET.Element("license")
    ET.SubElement(element, "permits", {"type": "usage"}).text = " ".join(_unique(lic.usages))
    refused = [u for u in AI_USAGES if u not in granted]
    if refused:
        ET.SubElement(element, "prohibits", {"type": "usage"}).text = " ".join(refused)
    element.append(_payment(lic))
    return element


def _payment(lic: License) -> ET.Element:
    price = lic.price
    if price is not None and price.amount > 0:
        # Gatekeeper meters fetches: RSL `crawl`. A period price is a `subscription`;
        # RSL has no attribute for the period, the terms page gives it.
        kind = "crawl" if price.per is PricePer.REQUEST else "subscription"
        payment = ET.Element("payment", {"type": kind})
        amount = ET.SubElement(payment, "amount", {"currency": price.currency})
        amount.text = format(price.amount, "f")
    elif lic.contact:
        # Terms agreed by asking: the spec's own "custom licence" example gives
        # `<custom>` and no type.
        payment = ET.Element("payment")
    else:
        payment = ET.Element("payment", {"type": "free"})
    if lic.contact:
        ET.SubElement(payment, "custom").text = _xml_text(lic.contact)
    return payment


def _granted_usages(licenses: Iterable[License]) -> frozenset[str]:
    granted: set[str] = set()
    for lic in licenses:
        for usage in lic.usages:
            granted |= _INCLUDES.get(usage, {usage})
    return frozenset(granted)


# -- paths ------------------------------------------------------------------------------


def _within(narrow: str, broad: str) -> bool:
    """Whether every path `narrow` matches is matched by `broad` (sound, not complete)."""
    if narrow == broad:
        return True
    return "*" not in broad and not broad.endswith("$") and narrow.startswith(broad)


def _anchor(pattern: str) -> str:
    # A pattern is a prefix match; a glob matches whole paths. A final "*" already
    # means "anything after", and a prefix says the same in fewer characters.
    if pattern.endswith("*"):
        return pattern.rstrip("*")
    return pattern + "$"


def _pieces(glob: str) -> list[tuple[str, ...]]:
    """The glob as RFC 9309 text, one tuple of alternatives per piece."""
    pieces: list[tuple[str, ...]] = []
    i = 0
    while i < len(glob):
        if glob.startswith("/**", i) and (i + 3 == len(glob) or glob[i + 3] == "/"):
            pieces.append(_SEGMENTS)
            i += 3
            continue
        char = glob[i]
        pieces.append(("*",) if char in "*?" else (_pattern_text(char),))
        i += 1
    return pieces


def _pattern_text(char: str) -> str:
    if char in _PLAIN_PATH:
        return char
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def _expand_braces(glob: str) -> list[str]:
    parts: list[tuple[str, ...]] = []
    rest = glob
    while True:
        start = rest.find("{")
        end = rest.find("}", start + 1) if start >= 0 else -1
        if start < 0 or end < 0:
            parts.append((rest,))
            break
        parts.append((rest[:start],))
        parts.append(tuple(rest[start + 1:end].split(",")))
        rest = rest[end + 1:]
    count = 1
    for options in parts:
        count *= len(options)
    if count > MAX_EXPANSIONS:
        return ["".join(o[0] if len(o) == 1 else "*" for o in parts)]
    return ["".join(choice) for choice in itertools.product(*parts)]


# -- text -------------------------------------------------------------------------------


def _absolute(site: str, url: str) -> str:
    url = _xml_text(url.strip())
    if not url.startswith("/") or url.startswith("//"):
        return url
    return _xml_text(site.strip()).rstrip("/") + url


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("", text)


def _unique(items: Iterable[str]) -> Iterator[str]:
    return iter(dict.fromkeys(items))
