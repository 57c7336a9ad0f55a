"""The policy's licence terms for people (an HTML page) and for programs (JSON).

Both read the same `License` values through the same helpers: what a licence
permits, where, at what price, how long its token lasts, what it may take per
period, and how a crawler vendor obtains a token. `license_json` is one
licence's entry, the form a 402 answer can embed as an offer.

The page is self-contained (inline CSS, no script, no external asset) and every
policy-supplied string passes through `html.escape`; only `http:`, `https:`,
`mailto:` and site-relative URLs become links.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Final

from gatekeeper.core.model import License, LicenseLimits, Policy, Price, PricePer
from gatekeeper.core.rsl import RSL_MEDIA_TYPE

# RSL 1.0 usage tokens in plain words (docs/rsl.md cites the definitions).
USAGE_WORDS: Final[dict[str, str]] = {
    "all": "any automated use, AI and search included",
    "ai-all": "any AI use: training, AI answers, AI indexes, and AI uses yet to come",
    "ai-train": "training or fine-tuning AI models",
    "ai-input": "input to AI answers: retrieval, grounding, generated summaries",
    "ai-index": "keeping the content in an AI system's index or retrieval store",
    "search": "a search index with links and short excerpts, without AI summaries",
}
GRANT_TYPE: Final = "client_credentials"  # RSL 1.0 OLP token request
AUTH_SCHEME: Final = "License"  # RSL 1.0 CAP: `Authorization: License <token>`
PAID, CONTACT, FREE = "paid", "contact", "free"

_LINKABLE: Final = ("https://", "http://", "mailto:")
_DURATIONS: Final = (("day", 86400), ("hour", 3600), ("minute", 60))
_SIZES: Final = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10),
                 ("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3))


# -- JSON -------------------------------------------------------------------------------


def render_terms_json(
    policy: Policy, *, site: str, rsl_url: str, token_url: str, jwks_url: str
) -> dict[str, object]:
    """The terms as a JSON-ready dict: strings, numbers, lists, dicts and None only."""
    return {
        "site": site,
        "rsl": rsl_url,
        "rsl_type": RSL_MEDIA_TYPE,
        "token_endpoint": token_url,
        "jwks_uri": jwks_url,
        "how_to_obtain": _how_to_obtain(token_url),
        "usages": {u: USAGE_WORDS[u] for u in _used(policy.licenses) if u in USAGE_WORDS},
        "licenses": [license_json(lic) for lic in policy.licenses],
    }


def license_json(lic: License) -> dict[str, object]:
    """One licence's terms; `paths` None means the licence covers the whole site."""
    price = lic.price
    limits = lic.limits
    return {
        "name": lic.name,
        "description": lic.description,
        "usages": list(lic.usages),
        "paths": None if lic.paths is None else [p.text for p in lic.paths],
        "terms": terms_kind(lic),
        "price": None if price is None else {
            "amount": format(price.amount, "f"),  # a string: JSON numbers are floats
            "currency": price.currency,
            "per": price.per.value,
        },
        "contact": lic.contact or None,
        "token_validity_seconds": round(lic.validity),
        "limits": None if limits is None else {
            "per": limits.period.value,
            "requests": limits.requests,
            "bytes": limits.bytes,
        },
    }


def _how_to_obtain(token_url: str) -> dict[str, object]:
    return {
        "token_request": {
            "method": "POST",
            "url": token_url,
            "authentication": "HTTP Basic with the client_id and client_secret the site "
                              "issued to you as a licensee",
            "content_type": "application/x-www-form-urlencoded",
            "parameters": {
                "grant_type": GRANT_TYPE,
                "license": "the name of the licence",
                "resource": "the URL you will fetch",
            },
        },
        "authorization": f"{AUTH_SCHEME} <access_token>",
    }


# -- plain words ------------------------------------------------------------------------


def terms_kind(lic: License) -> str:
    """`paid` (a price above zero), `contact` (terms agreed by asking) or `free`."""
    if lic.price is not None and lic.price.amount > 0:
        return PAID
    return CONTACT if lic.contact else FREE


def price_text(lic: License) -> str:
    kind = terms_kind(lic)
    if kind == PAID and lic.price is not None:
        return _money(lic.price)
    if kind == CONTACT:
        return "On request: ask the contact below"
    return "Free; a token is still required"


def duration_text(seconds: float) -> str:
    whole = max(round(seconds), 1)
    for unit, size in _DURATIONS:
        if whole % size == 0:
            return _count(whole // size, unit)
    return _count(whole, "second")


def size_text(size: int) -> str:
    for unit, factor in _SIZES:
        if size >= factor and size % factor == 0:
            return f"{size // factor:,} {unit}"
    return _count(size, "byte")


def limits_text(limits: LicenseLimits | None) -> str:
    if limits is None:
        return "No limits"
    parts = []
    if limits.requests is not None:
        parts.append(_count(limits.requests, "request"))
    if limits.bytes is not None:
        parts.append(size_text(limits.bytes))
    return f"Up to {' and '.join(parts)} per {limits.period.value} per licensee"


def _money(price: Price) -> str:
    amount = f"{price.currency} {format(price.amount, 'f')}"
    if price.per is PricePer.REQUEST:
        return f"{amount} per request"
    return f"{amount} per {price.per.value} (subscription)"


def _count(n: int, unit: str) -> str:
    return f"{n:,} {unit}" + ("" if n == 1 else "s")


def _used(licenses: Iterable[License]) -> list[str]:
    return list(dict.fromkeys(u for lic in licenses for u in lic.usages))


# -- HTML -------------------------------------------------------------------------------


def render_terms_html(
    policy: Policy, *, site: str, rsl_url: str, token_url: str, jwks_url: str
) -> str:
    """The terms page: one card per licence, then how to obtain a token."""
    e = _escape
    cards = "\n".join(_card(lic) for lic in policy.licenses) or (
        '<p class="empty">This site offers no licences at the moment.</p>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Licences for {e(site)}</title>
<link rel="license" type="{RSL_MEDIA_TYPE}" href="{e(rsl_url)}">
<style>{_CSS}</style>
</head>
<body>
<main>
<header>
<p class="eyebrow">Licence terms</p>
<h1>{e(site)}</h1>
<p>Automated use of this site's content is offered under the licences below. Each
one says what it permits, where, and on what terms. The same terms are published
for programs as an RSL document: {_link(rsl_url, rsl_url)}
(<code>{RSL_MEDIA_TYPE}</code>).</p>
</header>
{cards}
{_how_to_html(token_url, jwks_url)}
</main>
</body>
</html>
"""


def _card(lic: License) -> str:
    e = _escape
    description = f"<p>{e(lic.description)}</p>\n" if lic.description else ""
    permits = "".join(
        f"<li><code>{e(u)}</code> {e(USAGE_WORDS.get(u, ''))}</li>" for u in lic.usages
    ) or "<li>No usage is granted.</li>"
    paths = ("The whole site" if lic.paths is None
             else " ".join(f"<code>{e(p.text)}</code>" for p in lic.paths))
    contact = (f"<dt>Contact</dt><dd>{_link(lic.contact, lic.contact)}</dd>\n"
               if lic.contact else "")
    return f"""<section class="licence" id="licence-{e(lic.name)}">
<h2><code>{e(lic.name)}</code> <span class="tag {terms_kind(lic)}">{terms_kind(lic)}</span></h2>
{description}<dl>
<dt>Permits</dt><dd><ul>{permits}</ul></dd>
<dt>Paths</dt><dd>{paths}</dd>
<dt>Price</dt><dd>{e(price_text(lic))}</dd>
{contact}<dt>Token valid for</dt><dd>{e(duration_text(lic.validity))}</dd>
<dt>Limits</dt><dd>{e(limits_text(lic.limits))}</dd>
</dl>
</section>"""


def _how_to_html(token_url: str, jwks_url: str) -> str:
    e = _escape
    request = (f"POST {token_url}\n"
               "Authorization: Basic base64(client_id:client_secret)\n"
               "Content-Type: application/x-www-form-urlencoded\n\n"
               f"grant_type={GRANT_TYPE}&license=NAME&resource=URL")
    return f"""<section class="how">
<h2>How to obtain a licence</h2>
<ol>
<li>Choose a licence above. For a paid or free licence, register with the site as a
licensee to receive a <code>client_id</code> and <code>client_secret</code>; for a
licence on request, ask its contact first.</li>
<li>Request a token from the licence server with those client credentials:
<pre>{e(request)}</pre>
The answer's <code>access_token</code> is valid for the time shown on the licence.</li>
<li>Send it with every request the licence covers:
<pre>Authorization: {AUTH_SCHEME} &lt;access_token&gt;</pre></li>
</ol>
<p>Token endpoint: {_link(token_url, token_url)}. Signing keys (JWKS):
{_link(jwks_url, jwks_url)}.</p>
</section>"""


def _link(url: str, text: str) -> str:
    """A link for safe schemes; anything else is shown as text only."""
    if url.startswith(_LINKABLE) or (url.startswith("/") and not url.startswith("//")):
        return f'<a href="{_escape(url)}">{_escape(text)}</a>'
    return f"<code>{_escape(text)}</code>"


def _escape(text: str) -> str:
    return html.escape(text, quote=True)


_CSS: Final = """
:root{color-scheme:light dark;--fg:#1d2330;--muted:#5b6475;--bg:#f6f7f9;--card:#fff;
--line:#dde1e8;--accent:#2754c5;--paid:#8a4b00;--paid-bg:#fff1dc;--contact:#5a3ea8;
--contact-bg:#eee8ff;--free:#1f6b3a;--free-bg:#e2f5e8}
@media (prefers-color-scheme:dark){:root{--fg:#e6e9ef;--muted:#a2aabb;--bg:#14171d;
--card:#1c2029;--line:#2e3442;--accent:#8fb0ff;--paid:#ffc47a;--paid-bg:#3a2a12;
--contact:#cbb8ff;--contact-bg:#2c2446;--free:#8fe0ab;--free-bg:#173324}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:16px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:46rem;margin:0 auto;padding:2.5rem 1.25rem 4rem}
h1{font-size:1.9rem;margin:.1rem 0 .8rem;word-break:break-word}
h2{font-size:1.15rem;margin:0 0 .6rem;display:flex;gap:.6rem;align-items:center;
flex-wrap:wrap}
.eyebrow{margin:0;color:var(--muted);text-transform:uppercase;letter-spacing:.08em;
font-size:.78rem}
header p{color:var(--muted)}
a{color:var(--accent);word-break:break-all}
code,pre{font:.9em/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.licence,.how{background:var(--card);border:1px solid var(--line);border-radius:12px;
padding:1.25rem 1.4rem;margin:1.2rem 0}
.tag{font:600 .72rem/1 system-ui,sans-serif;text-transform:uppercase;letter-spacing:.06em;
padding:.3rem .5rem;border-radius:999px}
.paid{color:var(--paid);background:var(--paid-bg)}
.contact{color:var(--contact);background:var(--contact-bg)}
.free{color:var(--free);background:var(--free-bg)}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.45rem 1.2rem;margin:.8rem 0 0}
dt{color:var(--muted);font-size:.9rem}
dd{margin:0}
dd ul{margin:0;padding-left:1.1rem}
pre{background:var(--bg);border:1px solid var(--line);border-radius:8px;padding:.8rem 1rem;
overflow-x:auto;white-space:pre-wrap;word-break:break-all}
.empty{color:var(--muted);font-style:italic}
ol{padding-left:1.2rem}
li{margin:.35rem 0}
@media (max-width:32rem){dl{grid-template-columns:1fr}dt{margin-top:.4rem}}
"""
