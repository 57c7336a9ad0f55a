"""`/.well-known/tdmrep.json` (W3C TDM Reservation Protocol) from a declarations plan.

The file is a JSON array of `{"location", "tdm-reservation", "tdm-policy"?}` rules
that agents match first-match-wins; `Plan.tdm` is already ordered most specific
first, so the first match is the region the gate decided by longest match.

`tdm-policy` is given where a licence is offered, and names the licence terms
page. TDMRep reads a `text/html` policy as human-readable and a JSON-LD one as
an ODRL TDM Policy; it has no place for other types, so the RSL document
(`application/rsl+xml`, linked by `License:` and `Link`) would be a protocol
error there. The terms page is HTML unless JSON is asked for, and links the RSL
document.
"""

from __future__ import annotations

import json

from gatekeeper.core.declarations import Plan


def render_tdmrep(plan: Plan, terms_url: str) -> bytes:
    """The file; `terms_url` is the absolute URL of the licence terms page."""
    rules: list[dict[str, object]] = []
    for rule in plan.tdm:
        entry: dict[str, object] = {"location": rule.location,
                                    "tdm-reservation": 1 if rule.reserved else 0}
        if rule.reserved and rule.policy and terms_url:
            entry["tdm-policy"] = terms_url
        rules.append(entry)
    return json.dumps(rules, indent=2).encode() + b"\n"
