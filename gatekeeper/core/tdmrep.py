"""`/.well-known/tdmrep.json` (W3C TDM Reservation Protocol) from a declarations plan.

The file is a JSON array of `{"location", "tdm-reservation", "tdm-policy"?}` rules
that agents match first-match-wins; `Plan.tdm` is already ordered most specific
first, so the first match is the region the gate decided by longest match.
`tdm-policy` (the RSL document) is given where a licence is offered.
"""

from __future__ import annotations

import json

from gatekeeper.core.declarations import Plan


def render_tdmrep(plan: Plan, rsl_url: str) -> bytes:
    rules: list[dict[str, object]] = []
    for rule in plan.tdm:
        entry: dict[str, object] = {"location": rule.location,
                                    "tdm-reservation": 1 if rule.reserved else 0}
        if rule.reserved and rule.policy and rsl_url:
            entry["tdm-policy"] = rsl_url
        rules.append(entry)
    return json.dumps(rules, indent=2).encode() + b"\n"
