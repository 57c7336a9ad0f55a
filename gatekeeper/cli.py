"""Command line: `gatekeeper run | check | explain | declarations | crawlers | keys |
licensee | token | ledger | schema | --version`.

Parses arguments, resolves settings and hands over to `wiring`; no policy
logic lives here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from multidict import CIMultiDict

from gatekeeper import __version__
from gatekeeper.errors import GatekeeperError, PolicyError
from gatekeeper.settings import resolve


class _Parser(argparse.ArgumentParser):
    """argparse, with a hint for the one usage error it cannot explain itself.

    Key ids are base64url thumbprints and may begin with `-`; argparse then takes the
    id for an unknown option and reports the id as missing.
    """

    _dashed = False

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        given = sys.argv[1:] if args is None else list(args)
        self._dashed = any(a.startswith("-") and a.lstrip("-") and not a.startswith("--")
                           and a != "-h" for a in given)
        return super().parse_known_args(given, namespace)

    def error(self, message: str) -> NoReturn:
        if self._dashed and ("required" in message or "unrecognized" in message):
            message += ("\n(a value that begins with '-', such as a key or token id, goes "
                        f"after `--`: {self.prog} -- -XyZ...)")
        super().error(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="gatekeeper",
        description="Opt-out and licensing gate for AI crawlers.",
    )
    p.add_argument("--version", action="version", version=f"gatekeeper {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the reverse proxy")
    run.add_argument("--upstream", help="origin server URL, e.g. http://127.0.0.1:8000")
    run.add_argument("--listen", help="HOST:PORT for proxied traffic (default 0.0.0.0:8080)")
    run.add_argument(
        "--admin-listen", help="HOST:PORT for /metrics, /healthz, /readyz (default 127.0.0.1:9108)"
    )
    run.add_argument("--policy", help="policy YAML file (default: the embedded default policy)")
    run.add_argument(
        "--trusted-proxy", action="append", default=None, metavar="CIDR",
        help="a proxy whose X-Forwarded-For/Forwarded is believed (repeatable)",
    )
    run.add_argument("--config", help="settings YAML file")
    run.add_argument("--workers", type=int, metavar="N",
                     help="worker processes sharing the port (default 1; >1 needs store: "
                          "redis when the policy has rate limits, licence quotas or rules a "
                          "signature decides: docs/scaling-out.md)")
    run.add_argument("--mode", choices=["proxy", "forward-auth"],
                     help="proxy (default), or answer forward-auth subrequests of "
                          "nginx/Traefik/Envoy")
    run.add_argument("--log-format", choices=["json", "console"])
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    check = sub.add_parser("check", help="validate policy files (exit 0 valid, 1 invalid)")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--robots-txt", metavar="FILE",
                       help="the origin's robots.txt: report groups that contradict the policy")
    check.add_argument("--config", help="settings YAML file (robots_compliance)")

    dec = sub.add_parser("declarations",
                         help="print robots.txt, tdmrep.json, the RSL document and the "
                              "headers generated from a policy")
    dec.add_argument("--policy", help="policy YAML file (default: the embedded default policy)")
    dec.add_argument("--robots-txt", metavar="FILE", help="the origin's robots.txt to merge")
    dec.add_argument("--host", default="localhost", help="the site's host name")
    dec.add_argument("--scheme", default="https", choices=["http", "https"])
    dec.add_argument("--only", choices=["robots.txt", "tdmrep.json", "license.xml", "headers"],
                     help="print one document only")
    dec.add_argument("--config", help="settings YAML file (robots_compliance)")

    ex = sub.add_parser("explain", help="show the decision for a request described by flags")
    ex.add_argument("--ua", default="", help="User-Agent header")
    ex.add_argument("--path", default="/", help="request target, e.g. /premium/a?x=1")
    ex.add_argument("--ip", default="203.0.113.7", help="client IP")
    ex.add_argument("--host", default="localhost", help="Host header")
    ex.add_argument("--method", default="GET")
    ex.add_argument(
        "--header", action="append", default=[], metavar="NAME:VALUE", help="repeatable"
    )
    ex.add_argument("--policy", help="policy YAML file (default: the embedded default policy)")
    ex.add_argument("--robots-txt", metavar="FILE",
                    help="the origin's robots.txt, to check compliance (default: none known)")
    ex.add_argument("--config", help="settings YAML file (range lists, DNS servers)")
    ex.add_argument("--json", action="store_true", help="machine-readable output")

    crawlers = sub.add_parser("crawlers", help="the crawler operators' published IP ranges")
    csub = crawlers.add_subparsers(dest="crawlers_command", required=True, metavar="ACTION")
    update = csub.add_parser("update", help="fetch fresh copies of the range lists")
    update.add_argument("--only", action="append", default=None, metavar="LIST",
                        help="one list id (repeatable; default: all)")
    update.add_argument("--config", help="settings YAML file")
    listing = csub.add_parser("list", help="show each range list, where it came from, its age")
    listing.add_argument("--config", help="settings YAML file")

    sub.add_parser("schema", help="print the policy JSON Schema")
    from gatekeeper import licensing_cli

    licensing_cli.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "check":
            return _check(args.files, args.robots_txt, args.config)
        if args.command == "declarations":
            return _declarations(args)
        if args.command == "explain":
            return _explain(args)
        if args.command == "crawlers":
            return _crawlers(args)
        if args.command in ("keys", "licensee", "token", "ledger"):
            from gatekeeper import licensing_cli

            return licensing_cli.run(args)
        return _schema()
    except GatekeeperError as exc:
        print(f"gatekeeper: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from gatekeeper import wiring

    flags = {
        "upstream": args.upstream,
        "listen": args.listen,
        "admin_listen": args.admin_listen,
        "policy": args.policy,
        "trusted_proxies": tuple(args.trusted_proxy) if args.trusted_proxy else None,
        "log_format": args.log_format,
        "log_level": args.log_level,
        "workers": args.workers,
        "mode": args.mode,
    }
    settings = resolve(args.config, flags)
    code: int = wiring.run(settings)
    return code


def _check(files: Sequence[str], robots_txt: str | None = None,
           config: str | None = None) -> int:
    from gatekeeper.catalog_loader import load_catalog
    from gatekeeper.core.declarations import plan
    from gatekeeper.core.model import RobotsMode
    from gatekeeper.core.robots import RobotsRules
    from gatekeeper.core.robots_txt import unstated_refusals
    from gatekeeper.core.stance import robots_conditioned
    from gatekeeper.declare import robots_document
    from gatekeeper.policy.loader import load_policy_file
    from gatekeeper.vocabulary_loader import load_vocabularies

    compliance = resolve(config, {}).robots_compliance
    catalog = load_catalog()
    origin = RobotsRules.parse(_read(robots_txt)) if robots_txt else None
    failed = False
    for path in files:
        try:
            policy = load_policy_file(path, catalog)
        except PolicyError as exc:
            failed = True
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            continue
        if not compliance:
            # Valid, but dead: without compliance the gate has no robots.txt verdict.
            for rule in robots_conditioned(policy):
                print(f"{rule.source or path}: warning: rule {rule.name!r} has a robots: "
                      "condition, and robots_compliance is off: it never matches",
                      file=sys.stderr)
        found = plan(policy, catalog, load_vocabularies(), host="localhost", origin=origin,
                     robots_compliance=compliance)
        for note in dict.fromkeys(f"{n.pattern}: {n.reason}" for n in found.notes):
            print(f"{path}: note: {note}", file=sys.stderr)
        for refusal in unstated_refusals(policy):
            print(f"{path}: note: {refusal}; robots.txt cannot state it: those clients read "
                  "its `*` group, which states none of the policy's refusals", file=sys.stderr)
        conflicts = found.conflicts
        too_big = False
        if policy.declarations.robots_txt is not RobotsMode.OFF:
            served = robots_document(policy, found, origin, "https://localhost")
            conflicts += served.usage_conflicts
            too_big = served.over_limit
            if too_big:
                print(_over_limit(path, served.generated_size), file=sys.stderr)
        for conflict in conflicts:
            print(f"{path}: conflict with {robots_txt}: {conflict}", file=sys.stderr)
        if conflicts or too_big:
            failed = True
        else:
            print(f"{path}: ok ({len(policy.rules)} rules, mode {policy.mode.value})")
    return 1 if failed else 0


def _over_limit(path: str, size: int) -> str:
    from gatekeeper.core.robots import PARSE_LIMIT

    return (f"{path}: error: the robots.txt groups generated from this policy take {size:,} "
            f"bytes, more than the {PARSE_LIMIT:,} bytes (500 KiB) a parser must read (RFC "
            "9309 §2.5): parsers stop before the last groups and read those crawlers as "
            "allowed where the gate refuses them. Name fewer exact paths in the rules: a "
            "glob such as /free/** in place of a list of pages is one line per group")


def _declarations(args: argparse.Namespace) -> int:
    from gatekeeper.catalog_loader import load_catalog
    from gatekeeper.core.declarations import ROBOTS_PATH, TDMREP_PATH, representative
    from gatekeeper.declare import declarations
    from gatekeeper.vocabulary_loader import load_vocabularies
    from gatekeeper.wiring import load_policy

    catalog = load_catalog()
    policy = load_policy(args.policy, catalog)
    origin = _read(args.robots_txt) if args.robots_txt else None
    site = f"{args.scheme}://{args.host}"
    d = declarations(policy, catalog, load_vocabularies(), site=site, host=args.host,
                     origin_txt=origin,
                     robots_compliance=resolve(args.config, {}).robots_compliance)
    # Every region of the plan, with the headers a response there gets.
    regions = sorted(d.plan.headers_by_region, key=lambda p: (p.rstrip("$"), p))
    sections = {
        "robots.txt": d.robots.text,
        "tdmrep.json": d.tdmrep.decode(),
        "license.xml": d.rsl.decode(),
        "headers": "".join(
            f"{pattern:<24} " + "; ".join(f"{n}: {v}" for n, v in
                                          d.headers_for(representative(pattern)))
            + "\n" for pattern in regions),
    }
    if d.robots.over_limit:
        print(_over_limit(args.policy or "the default policy", d.robots.generated_size),
              file=sys.stderr)
    if args.only:
        print(sections[args.only], end="")
        return 0
    where = {"robots.txt": site + ROBOTS_PATH, "tdmrep.json": site + TDMREP_PATH,
             "license.xml": d.rsl_url, "headers": "response headers, by path"}
    for name, text in sections.items():
        print(f"==> {where[name]}\n{text}")
    conflicts = [*d.plan.conflicts, *d.robots.usage_conflicts]
    for title, items in (("notes", [f"{n.pattern}: {n.reason}" for n in d.plan.notes]),
                         ("conflicts with the origin's robots.txt", conflicts)):
        if items:
            print(f"==> {title}")
            print("\n".join(dict.fromkeys(items)))
    return 0


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise GatekeeperError(f"{path}: cannot read: {exc.strerror}") from None


def _schema() -> int:
    from gatekeeper.policy.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _explain(args: argparse.Namespace) -> int:
    from gatekeeper import explain

    headers: CIMultiDict[str] = CIMultiDict()
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            print(f"gatekeeper: error: --header {item!r} must be NAME:VALUE", file=sys.stderr)
            return 2
        headers.add(name.strip(), value.strip())
    if args.ua:
        headers["User-Agent"] = args.ua
    headers.setdefault("Host", args.host)
    robots_txt = _read(args.robots_txt) if args.robots_txt else None
    settings = resolve(args.config, {"policy": args.policy})
    report = asyncio.run(
        explain.explain(
            method=args.method.upper(),
            target=args.path,
            headers=headers,
            client_ip=args.ip,
            settings=settings,
            robots_txt=robots_txt,
            now=time.time(),
        )
    )
    print(json.dumps(report, indent=2) if args.json else explain.render_text(report))
    return 0


def _crawlers(args: argparse.Namespace) -> int:
    from gatekeeper.verify.ranges import RangeRegistry

    settings = resolve(args.config, {})
    sources, cache = settings.ranges_sources_path(), settings.ranges_cache_path()
    if args.crawlers_command == "update":
        return asyncio.run(_update_ranges(sources, cache, args.only))
    registry = RangeRegistry.load(sources, cache)
    now = time.time()
    print(f"{'list':40} {'from':8} {'prefixes':>8}  age")
    for source_id in registry.sources():
        state = registry.info(source_id)
        stamp = state.fetched_at or state.updated_at
        age = "-" if stamp is None else _age(now - stamp)
        print(f"{source_id:40} {state.origin:8} {state.prefixes:>8}  {age}")
    print(f"cache: {cache}")
    return 0


async def _update_ranges(sources: Path | None, cache: Path, only: list[str] | None) -> int:
    from gatekeeper.verify.range_update import update_lists
    from gatekeeper.verify.ranges import load_sources
    from gatekeeper.wiring import verification_session

    async with verification_session() as session:
        results = await update_lists(load_sources(sources), cache, session, only=only)
    for r in results:
        detail = f"{r.prefixes} prefixes" if r.status != "failed" else f"kept last good: {r.error}"
        print(f"{r.source_id}: {r.status} ({detail})")
    print(f"cache: {cache}")
    return 1 if any(r.status == "failed" for r in results) else 0


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"
