"""`gatekeeper explain`: the decision for one request described on the command line.

It runs the same pieces as the proxy (target canonicalisation, catalog, identity
verification against the range lists and reverse DNS, robots.txt compliance when a
robots.txt is given and `robots_compliance` is on, the policy evaluation through
`Gate`, the declarations the main listener serves), so what it prints is what the
proxy does. Behaviour is the one thing it cannot show: a score needs the client's
recent requests, and explain sees one: it scores the request as if it were the
client's first, which shows what this request alone contributes.

A request for a public document (robots.txt, tdmrep.json, the RSL document, the
terms, the token keys) is answered as the main listener answers it: never gated,
with rule `declarations`; by Gatekeeper, or forwarded to the origin where
Gatekeeper writes no such document (`declarations.robots_txt: off`, `tdmrep:
false`). The same `gatekeeper.core.declarations.public_document` and
`from_origin` decide which paths those are.
"""

from __future__ import annotations

from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from gatekeeper.core.behaviour import BehaviourConfig, describe
from gatekeeper.core.catalog import Catalog, Crawler
from gatekeeper.core.declarations import from_origin, public_document
from gatekeeper.core.facts import RequestFacts
from gatekeeper.core.model import Policy, RateLimit, RobotsMode
from gatekeeper.core.robots import RobotsRules
from gatekeeper.declare import declarations, robots_lines
from gatekeeper.edge.target import BadRequest, canonicalize, check_host
from gatekeeper.gate import Gate, Outcome
from gatekeeper.settings import Settings
from gatekeeper.store.memory import MemoryStore
from gatekeeper.vocabulary_loader import load_vocabularies


class StaticRobots:
    """A robots.txt known in advance, the same for every host (a `RobotsSource`)."""

    def __init__(self, body: bytes) -> None:
        self._rules = RobotsRules.parse(body)

    async def rules(self, host: str) -> RobotsRules:
        return self._rules

    def peek(self, host: str) -> RobotsRules | None:
        return self._rules

    def refresh_soon(self, host: str) -> None:
        """Nothing to refresh."""


async def explain(
    *,
    method: str,
    target: str,
    headers: CIMultiDict[str],
    client_ip: str,
    settings: Settings,
    now: float,
    robots_txt: bytes | None = None,
) -> dict[str, Any]:
    from gatekeeper.catalog_loader import load_catalog
    from gatekeeper.wiring import build_identity, load_policy

    catalog = load_catalog(settings.catalog or None)
    policy = load_policy(settings.policy or None, catalog)
    report: dict[str, Any] = {"policy": policy.source, "mode": policy.mode.value}
    try:
        canonical = canonicalize(method, target,
                                 fold_case=settings.path_case == "insensitive")
        host = check_host(headers.get("Host"))
    except BadRequest as exc:
        report["request"] = {"method": method, "target": target}
        report["rejected"] = {"status": exc.status, "reason": exc.reason, "message": str(exc)}
        return report
    facts = RequestFacts(
        method=method, host=host, path=canonical.path, query=canonical.query,
        headers=CIMultiDictProxy(headers), client_ip=client_ip, now=now,
        raw_path=target.partition("?")[0],
    )
    store = MemoryStore()
    identity = build_identity(settings, catalog, store, wait_for_dns=True)
    # As the proxy: with compliance off the gate reads no robots.txt, so it has no
    # verdict, and `robots:` rules never match (nor are they declared as matching).
    robots = StaticRobots(robots_txt) if robots_txt is not None and settings.robots_compliance \
        else None
    gate = Gate(catalog, lambda: policy, store, identity=identity.verifier, robots=robots,
                behaviour=BehaviourConfig() if settings.behaviour else None)
    # The keys are served once a signing key exists, as `wiring.public_documents` has it.
    keys = (settings.state_path() / "keys").exists()
    document = public_document(policy, method, facts.path)
    if document == "jwks.json" and not keys:
        document = None
    # Not written by Gatekeeper: the origin's, forwarded as it is, still never gated.
    answered = document is not None and not from_origin(policy, document)
    try:
        outcome = await (gate.read_declaration(facts) if document else gate.decide(facts))
    finally:
        await identity.close()
    cls, decision = outcome.classification, outcome.decision
    selected = outcome.selected
    if selected is None and document is None:  # the gate records what it selected
        raise RuntimeError("the gate returned no selected rule")
    crawler = cls.crawler
    report["request"] = {
        "method": method, "host": host, "path": facts.path, "query": facts.query,
        "client_ip": client_ip, "user_agent": facts.user_agent,
    }
    report["classification"] = {
        "kind": cls.kind.value,
        "crawler": crawler.name if crawler else None,
        "operator": crawler.operator if crawler else None,
        "purpose": cls.purpose.value if cls.purpose else None,
        "robots_token": crawler.robots_token if crawler else None,
    }
    report["identity"] = _identity(outcome)
    report["robots"] = _robots(outcome, robots_txt is not None, settings.robots_compliance)
    report["behaviour"] = _behaviour(outcome)
    if selected is None:
        report["rule"] = {"name": decision.rule, "source": None, "action": decision.action,
                          "document": document}
    else:
        rule = selected.rule
        report["rule"] = {
            "name": selected.name,
            "source": str(rule.source) if rule and rule.source else None,
            "action": decision.action,
        }
    if selected is not None and isinstance(selected.action, RateLimit):
        # explain starts from an empty store: the answer is the first request's.
        limit = selected.action
        report["rule"]["rate_limit"] = {
            "per_second": limit.rate, "burst": limit.burst, "key": limit.key.value,
            "note": f"forwarded until {limit.burst} requests arrive faster than the rate, "
                    "then 429 with Retry-After",
        }
    report["declarations"] = _declarations(policy, catalog, host, facts.path, facts.query,
                                           crawler, robots_txt, keys, robots is not None)
    if answered:
        report["declarations"]["headers"] = []  # only forwarded responses carry them
    report["decision"] = {
        # A public document Gatekeeper writes is answered by it, never forwarded.
        "forward": decision.forward and not answered,
        "reason": decision.reason.value,
        "status": 200 if answered else decision.status or None,
        "would_status": decision.would_status or None,
        "headers": [list(h) for h in decision.headers],
        "body": decision.body.decode("utf-8", "replace"),
    }
    return report


def _identity(outcome: Outcome) -> dict[str, Any]:
    v = outcome.verification
    report: dict[str, Any] = {
        "state": outcome.identity.value,
        "how": v.detail if v is not None else "the user agent claims no crawler",
        "verified_by": (v.method or None) if v is not None else None,
        "checks": [{"method": c.method, "result": c.result} for c in v.checks] if v else [],
    }
    if v is not None and v.signature_failure:
        report["signature_failure"] = v.signature_failure
    if outcome.claimed is not None:
        report["user_agent_claimed"] = outcome.claimed.name
    return report


def _behaviour(outcome: Outcome) -> dict[str, Any]:
    score = outcome.behaviour
    if score is None:
        why = ("only clients that claim no crawler are scored"
               if outcome.classification.crawler is not None or outcome.claimed is not None
               else "behaviour scoring is off")
        return {"scored": False, "note": why}
    return {
        "scored": True, "score": score.value, "undeclared": score.undeclared,
        "reasons": [{"code": r, "meaning": describe(r)} for r in score.reasons],
        "note": "this request alone, as a client's first; the proxy scores the client's "
                "last minute of requests",
    }


def _robots(outcome: Outcome, given: bool, compliance: bool) -> dict[str, Any]:
    verdict = outcome.robots
    if verdict is None:
        why = "no robots.txt given (--robots-txt FILE)" if not given else \
            "not checked" if compliance else \
            "robots.txt compliance is off (robots_compliance: false)"
        return {"checked": False, "note": why}
    return {"checked": True, "allowed": verdict.allowed, "rule": verdict.rule or None,
            "group": verdict.group or None, "violation": outcome.robots_violation}


def _declarations(policy: Policy, catalog: Catalog, host: str, path: str, query: str,
                  crawler: Crawler | None, robots_txt: bytes | None,
                  keys: bool, robots_verdicts: bool) -> dict[str, Any]:
    """What the served robots.txt and the response headers declare for this path;
    `robots_verdicts`: the gate above had a robots.txt to judge by, as the plan must."""
    served = declarations(policy, catalog, load_vocabularies(), site=f"https://{host}",
                          host=host, origin_txt=robots_txt, jwks=keys,
                          robots_compliance=robots_verdicts)
    token = crawler.robots_token if crawler is not None else "*"
    if policy.declarations.robots_txt is RobotsMode.OFF:
        robots: dict[str, Any] = {"served": False}
    else:
        # robots.txt matches the path with its query; the headers, the path.
        target = f"{path}?{query}" if query else path
        verdict = RobotsRules.parse(served.robots.text.encode()).verdict(token, target)
        group = served.plan.group_for(crawler.name) if crawler is not None else None
        robots = {"served": True, "token": token, "allowed": verdict.allowed,
                  "rule": verdict.rule or None, "group": verdict.group or None,
                  "generated_group": group is not None,
                  "lines": robots_lines(served, policy, crawler, target)}
    return {"robots_txt": robots,
            "headers": [list(h) for h in served.headers_for(path)]}


def render_text(report: dict[str, Any]) -> str:
    lines = [f"policy:         {report['policy']} (mode {report['mode']})"]
    req = report["request"]
    if "rejected" in report:
        rej = report["rejected"]
        lines.append(f"request:        {req['method']} {req['target']}")
        lines.append(f"rejected:       {rej['status']} ({rej['reason']}): {rej['message']}")
        lines.append("                the upstream would see nothing")
        return "\n".join(lines)
    query = f"?{req['query']}" if req["query"] else ""
    lines.append(f"request:        {req['method']} {req['host']}{req['path']}{query}")
    lines.append(f"client ip:      {req['client_ip']}")
    lines.append(f"user agent:     {req['user_agent'] or '(none)'}")
    c = report["classification"]
    if c["crawler"]:
        lines.append(
            f"classification: {c['crawler']} by {c['operator']}, purpose {c['purpose']}"
            f" (robots.txt token {c['robots_token']})"
        )
    else:
        lines.append(f"classification: {c['kind']}")
    ident = report["identity"]
    lines.append(f"identity:       {ident['state']} ({ident['how']})")
    if ident.get("user_agent_claimed"):
        lines.append(f"                (the user agent alone says {ident['user_agent_claimed']})")
    behaviour = report["behaviour"]
    if behaviour["scored"]:
        reasons = ", ".join(r["code"] for r in behaviour["reasons"]) or "no signals"
        lines.append(f"behaviour:      score {behaviour['score']:g} ({reasons}); "
                     "this request alone")
    robots = report["robots"]
    if robots["checked"]:
        said = "allows" if robots["allowed"] else "disallows"
        rule = f" ({robots['rule']}, group {robots['group']})" if robots["rule"] else ""
        lines.append(f"robots.txt:     {said} this path{rule}")
    rule = report["rule"]
    where = f" at {rule['source']}" if rule["source"] else ""
    document = rule.get("document")
    never = f" ({document} is a public document, never gated)" if document else ""
    lines.append(f"rule:           {rule['name']}{where} -> {rule['action']}{never}")
    if "rate_limit" in rule:
        rl = rule["rate_limit"]
        lines.append(f"rate limit:     {rl['per_second']:g}/s, burst {rl['burst']}, per "
                     f"{rl['key']}: {rl['note']}")
    declared = report["declarations"]
    robots_txt = declared["robots_txt"]
    if robots_txt["served"]:
        said = "allows" if robots_txt["allowed"] else "disallows"
        by = f" ({robots_txt['rule']})" if robots_txt["rule"] else ""
        origin = "generated from the policy" if robots_txt["generated_group"] else \
            f"group {robots_txt['group'] or 'none'}"
        lines.append(f"declared:       served robots.txt {said} this path for "
                     f"{robots_txt['token']}{by}, {origin}")
        lines.extend(f"                robots.txt: {line}" for line in robots_txt["lines"])
    else:
        lines.append("declared:       robots.txt is the origin's own (declarations.robots_txt: "
                     "off)")
    for name, value in declared["headers"]:
        lines.append(f"                header: {name}: {value}")
    d = report["decision"]
    if document and d["forward"]:
        lines.append(f"decision:       forward to the upstream: the origin's {document}, "
                     "whatever the policy says about the client")
    elif document:
        lines.append(f"decision:       answer {d['status']}: {document}, served by Gatekeeper "
                     "whatever the policy says about the client")
    elif d["forward"]:
        verdict = "forward to the upstream"
        if d["reason"] == "dry_run":
            verdict += f" (monitor mode: would have answered {d['would_status']})"
        elif d["reason"] == "monitored":
            verdict += " (monitor rule: logged and counted)"
        lines.append(f"decision:       {verdict}")
    else:
        lines.append(f"decision:       answer {d['status']} ({d['reason']})")
        for name, value in d["headers"]:
            lines.append(f"                {name}: {value}")
        lines.append(f"                {d['body'].strip()}")
    return "\n".join(lines)
