"""`gatekeeper keys|licensee|token|ledger ...`: the operator's licensing commands.

Each works on the files of the state directory (`state_dir`): the signing keys,
the licensee registry and the usage ledger, which the running proxy reads too.
Errors are `GatekeeperError`s with what to do next; secrets and tokens are printed
only where the operator asked for them (`licensee add`, `token issue`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from gatekeeper.errors import GatekeeperError
from gatekeeper.files import write_atomically
from gatekeeper.settings import Settings, resolve


def add_parsers(sub: Any) -> None:
    keys = sub.add_parser("keys", help="the keys that sign licence tokens")
    ksub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("generate", "create a signing key (the newest active key signs)"),
                       ("list", "show every key"), ("retire", "stop signing with a key")):
        p = ksub.add_parser(name, help=text)
        p.add_argument("--config", help="settings YAML file")
        if name == "retire":
            p.add_argument("kid")

    lic = sub.add_parser("licensee", help="crawler vendors allowed to obtain licence tokens")
    lsub = lic.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = lsub.add_parser("add", help="register a licensee; prints its secret once")
    add.add_argument("id")
    add.add_argument("--name", required=True)
    add.add_argument("--crawler", required=True, help="catalog crawler its tokens are bound to")
    add.add_argument("--license", action="append", required=True, dest="licenses",
                     help="a policy licence it may obtain (repeatable)")
    add.add_argument("--key-thumbprint", help="bind tokens to this Web Bot Auth key too")
    for name in ("list", "disable", "enable"):
        p = lsub.add_parser(name, help=f"{name} licensees")
        if name != "list":
            p.add_argument("id")
    for p in (add, *[lsub.choices[n] for n in ("list", "disable", "enable")]):
        p.add_argument("--config", help="settings YAML file")
        p.add_argument("--policy", help="policy file (for checking licence names)")

    tok = sub.add_parser("token", help="licence tokens, issued by hand or inspected")
    tsub = tok.add_subparsers(dest="action", required=True, metavar="ACTION")
    issue = tsub.add_parser("issue", help="issue a token for a licensee without the server")
    issue.add_argument("licensee")
    issue.add_argument("--license", required=True)
    issue.add_argument("--days", type=float, default=None, help="default: the licence's")
    inspect = tsub.add_parser("inspect", help="decode and verify a token (from stdin or arg)")
    inspect.add_argument("token", nargs="?")
    revoke = tsub.add_parser("revoke", help="revoke a token by its id (jti)")
    revoke.add_argument("token_id", help="ids issued before hex ids may begin with '-': "
                        "put `--` before such an id")
    revoke.add_argument("--expires", type=float, default=None,
                        help="unix time it expires (default: 400 days from now)")
    tsub.add_parser("list", help="list issued tokens (id, holder, licence, state)")
    for p in tsub.choices.values():
        p.add_argument("--config", help="settings YAML file")
        p.add_argument("--policy", help="policy file")

    led = sub.add_parser("ledger", help="the usage ledger of licensed requests")
    dsub = led.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = dsub.add_parser("export", help="aggregate licensed usage")
    export.add_argument("--since", help="ISO date or datetime, UTC (inclusive)")
    export.add_argument("--until", help="ISO date or datetime, UTC (exclusive)")
    export.add_argument("--by", choices=["licensee", "licence", "license", "section", "owner"],
                        default="licensee",
                        help="owner: each content owner's share of the revenue of their pages")
    export.add_argument("--format", choices=["csv", "json"], default="csv")
    export.add_argument("--output", metavar="FILE",
                        help="write the export to FILE (complete or not at all) "
                             "instead of standard output")
    export.add_argument("--trim", action="store_true",
                        help="with --from-store: once the export is written, remove the "
                             "exported records from each replica's copy in Redis")
    dsub.add_parser("verify", help="check the hash chain (exit 1 when broken)")
    for p in dsub.choices.values():
        p.add_argument("--config", help="settings YAML file")
        p.add_argument("--from-store", action="store_true",
                       help="every replica's copy in the Redis store (store: redis), "
                            "instead of this host's files")


def run(args: argparse.Namespace) -> int:
    settings = resolve(args.config, {"policy": getattr(args, "policy", None)})
    handler = {"keys": _keys, "licensee": _licensee, "token": _token, "ledger": _ledger}
    return handler[args.command](args, settings)


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from gatekeeper.licensing.keys import Keyring

    directory = settings.state_path() / "keys"
    if args.action == "generate":
        kid = Keyring.generate(directory)
        print(f"generated key {kid} in {directory}; it signs new tokens from now on")
        return 0
    keyring = Keyring.load(directory)
    if args.action == "retire":
        keyring.retire(args.kid)
        print(f"retired {args.kid}: it signs nothing new; its tokens verify until it is removed")
        return 0
    for info in keyring.describe():
        state = "retired" if info.retired is not None else "active"
        print(f"{info.kid}  {state}  created {_iso(info.created)}")
    return 0


def _licensee(args: argparse.Namespace, settings: Settings) -> int:
    from gatekeeper.licensing.licensees import Licensees

    registry = Licensees(settings.state_path() / "licensees.json")
    if args.action == "add":
        _check_names(settings, args.crawler, args.licenses)
        secret = registry.add(args.id, args.name, args.crawler, args.licenses,
                              args.key_thumbprint)
        print(f"added licensee {args.id}; its client secret (shown once):")
        print(secret)
        return 0
    if args.action == "disable":
        registry.disable(args.id)
    elif args.action == "enable":
        registry.enable(args.id)
    else:
        for x in registry.list():
            state = "disabled" if x.disabled else "enabled"
            print(f"{x.id}  {state}  {x.name}  crawler={x.crawler}  "
                  f"licences={','.join(x.licenses)}")
        return 0
    print(f"{args.id}: {args.action}d")
    return 0


def _check_names(settings: Settings, crawler: str, licenses: list[str]) -> None:
    from gatekeeper.catalog_loader import load_catalog
    from gatekeeper.wiring import load_policy

    catalog = load_catalog(settings.catalog or None)
    if catalog.get(crawler) is None:
        raise GatekeeperError(f"--crawler: {crawler!r} is not a catalog crawler")
    policy = load_policy(settings.policy or None, catalog)
    offered = {lic.name for lic in policy.licenses}
    unknown = [name for name in licenses if name not in offered]
    if unknown:
        raise GatekeeperError(f"--license: {', '.join(unknown)} not declared in the policy "
                              f"({settings.policy or 'the embedded default'})")


def _token(args: argparse.Namespace, settings: Settings) -> int:
    from gatekeeper.licensing.keys import Keyring
    from gatekeeper.licensing.licensees import Licensees
    from gatekeeper.licensing.tokens import (
        LicenseClaims,
        TokenRejected,
        TokenVerifier,
        issue_token,
        new_token_id,
    )

    state = settings.state_path()
    registry = Licensees(state / "licensees.json")
    if args.action == "revoke":
        if args.token_id.count(".") == 2:
            raise GatekeeperError("that is a whole token, not its id: `gatekeeper token "
                                  "inspect` prints the id to revoke")
        expires = args.expires if args.expires is not None else time.time() + 400 * 86400
        registry.revoke(args.token_id, expires)
        if settings.store != "memory":
            # Replicas sharing the store see it on their next licensed request.
            asyncio.run(_revoke_in_store(settings, args.token_id, expires))
            print(f"revoked {args.token_id} (also in the {settings.store} store)")
        else:
            print(f"revoked {args.token_id}")
        return 0
    if args.action == "list":
        from gatekeeper.licensing.issued import read

        now = time.time()
        for t in read(state / "issued.jsonl"):
            status = ("revoked" if registry.is_revoked(t.token_id)
                      else "expired" if t.expires <= now else "valid")
            print(f"{t.token_id}  {status}  licensee={t.licensee}  licence={t.license}  "
                  f"crawler={t.crawler}  expires={_iso(t.expires)}")
        return 0
    if not settings.site_hosts:
        raise GatekeeperError("site_hosts is not set: tokens name the site's hosts")
    keyring = Keyring.load(state / "keys")
    if args.action == "inspect":
        token = args.token or sys.stdin.read().strip()
        verifier = TokenVerifier(keyring.public_keys, issuer=settings.token_issuer(),
                                 audience=settings.site_hosts)
        result = verifier.verify(token, settings.site_hosts[0], time.time())
        if isinstance(result, TokenRejected):
            print(f"refused: {result.reason.value}: {result.detail}")
            return 1
        c = result.claims
        print(f"valid: licensee {c.subject}, licence {c.license}, crawler {c.crawler}, "
              f"usages {','.join(c.usages)}, id {c.token_id}, expires {_iso(c.expires)}")
        return 0
    licensee = registry.get(args.licensee)
    if licensee is None or licensee.disabled:
        raise GatekeeperError(f"{args.licensee!r} is not an enabled licensee")
    _check_names(settings, licensee.crawler, [args.license])
    from gatekeeper.catalog_loader import load_catalog
    from gatekeeper.wiring import load_policy

    policy = load_policy(settings.policy or None, load_catalog(settings.catalog or None))
    lic = next(x for x in policy.licenses if x.name == args.license)
    now = time.time()
    lifetime = args.days * 86400 if args.days is not None else lic.validity
    claims = LicenseClaims(
        issuer=settings.token_issuer(), audience=tuple(settings.site_hosts),
        subject=licensee.id, crawler=licensee.crawler, crawler_key=licensee.key_thumbprint,
        license=lic.name, usages=lic.usages, paths=(), not_before=now,
        expires=now + lifetime, token_id=new_token_id(),
    )
    from gatekeeper.licensing.issued import record

    print(issue_token(claims, keyring.active_signing_key()))
    record(state / "issued.jsonl", claims)
    return 0


def _ledger(args: argparse.Namespace, settings: Settings) -> int:
    from gatekeeper.ledger.export import (
        By,
        aggregate,
        parse_bound,
        to_csv,
        to_json,
        with_shares,
    )
    from gatekeeper.ledger.file import read, verify

    if args.from_store:
        return asyncio.run(_ledger_from_store(args, settings))
    if getattr(args, "trim", False):
        raise GatekeeperError("--trim trims the copy in the Redis store: use it with "
                              "--from-store (the ledger files are never trimmed)")
    # ledger.jsonl, and ledger-<worker>.jsonl for each worker of `run --workers N`.
    paths = sorted(settings.state_path().glob("ledger*.jsonl"))
    if not paths:
        raise GatekeeperError(f"{settings.state_path() / 'ledger.jsonl'}: no ledger yet "
                              "(nothing licensed has been served)")
    if args.action == "verify":
        broken = 0
        for path in paths:
            result = verify(path)
            if result.ok:
                print(f"{path}: ok, {result.records} records, last hash {result.last_hash}")
            else:
                broken += 1
                print(f"{path}: broken at record {result.first_bad_seq}: {result.reason}: "
                      f"{result.detail}")
        return 1 if broken else 0
    since = parse_bound(args.since) if args.since else None
    until = parse_bound(args.until) if args.until else None
    by: By = "license" if args.by == "licence" else args.by
    records = [r for path in paths for r in read(path, since, until)]
    if by == "owner":
        # A record's section is the owner of its path; the revenue column becomes
        # what each owner is owed under their share.
        from gatekeeper.licensing.owners_registry import OwnerRegistry

        shares = OwnerRegistry(settings.state_path() / "owners.json").current().shares()
        rows = with_shares(aggregate(records, "section"), shares)
    else:
        rows = aggregate(records, by)
    _write_export(to_csv(rows) if args.format == "csv" else to_json(rows) + "\n", args.output)
    return 0


def _write_export(text: str, output: str | None) -> None:
    """Write the export to `output` (a temporary file synced, then renamed over it, so
    the file is whole or absent) or to standard output; raises `GatekeeperError` when
    it could not be written, which is what `--trim` waits for."""
    if output is None:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except OSError as exc:
            raise GatekeeperError(f"cannot write the export to standard output: "
                                  f"{exc.strerror or exc}") from exc
        return
    target = Path(output)
    try:
        write_atomically(target, text.encode("utf-8"), 0o644)
    except OSError as exc:
        raise GatekeeperError(f"--output: cannot write {target}: {exc.strerror or exc}") \
            from exc


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


async def _revoke_in_store(settings: Settings, token_id: str, expires: float) -> None:
    from gatekeeper.wiring import build_store

    store = build_store(settings)
    try:
        await store.revoke(token_id, expires, time.time())
    finally:
        await store.close()


async def _ledger_from_store(args: argparse.Namespace, settings: Settings) -> int:
    """`ledger export|verify --from-store`: the copies of every replica's ledger."""
    from gatekeeper.ledger.export import By, aggregate, parse_bound, to_csv, to_json
    from gatekeeper.ledger.mirror import (
        in_window,
        read_copies,
        remove_gone,
        trim_exported,
        verify_store,
    )
    from gatekeeper.store.redis import RedisStore

    if settings.store != "redis":
        raise GatekeeperError("--from-store needs store: redis (and redis_url)")
    store = RedisStore(settings.redis_url, prefix=settings.redis_prefix,
                       timeout=max(settings.store_timeout, 5.0),
                       max_connections=settings.redis_max_connections)
    try:
        if args.action == "verify":
            results = await verify_store(store.client, settings.redis_prefix)
            if not results:
                raise GatekeeperError("the store holds no ledger copy yet")
            for key, result in results.items():
                state = "ok" if result.ok else f"broken at record {result.first_bad_seq}: " \
                    f"{result.reason}: {result.detail}"
                trimmed = f" (after record {result.start_seq}, where it was trimmed)" \
                    if result.start_seq else ""
                print(f"{key}: {state}, {result.records} records{trimmed}")
            return 0 if all(r.ok for r in results.values()) else 1
        since = parse_bound(args.since) if args.since else None
        until = parse_bound(args.until) if args.until else None
        by: By = "license" if args.by == "licence" else args.by
        if by == "owner":
            raise GatekeeperError("--by owner reads this host's owners: export without "
                                  "--from-store")
        copies = await read_copies(store.client, settings.redis_prefix)
        if args.trim:
            # Trimming removes the copy's evidence: only from a chain that verifies.
            broken = [(c.key, r) for c in copies if not (r := c.verify()).ok]
            if broken:
                raise GatekeeperError("nothing exported or trimmed: " + "; ".join(
                    f"{key} is broken at record {r.first_bad_seq} ({r.reason}: {r.detail})"
                    for key, r in broken) + "; see `gatekeeper ledger verify --from-store`")
        records = [c.record for copy in copies for c in copy.records()
                   if in_window(c.record, since, until)]
        rows = aggregate(records, by)
        _write_export(to_csv(rows) if args.format == "csv" else to_json(rows) + "\n",
                      args.output)
        if args.trim:
            # Only now that the export is written; on stderr, so stdout stays the export.
            for key, removed, kept in await trim_exported(
                    store.client, copies, since, until, settings.redis_prefix):
                print(f"{key}: trimmed {removed} exported records, kept {kept}",
                      file=sys.stderr)
            # Every trim went through: the streams of replicas that are gone, now
            # exported to the last record, go too, so Redis holds one stream for each
            # running replica and not one for every pod that ever ran.
            for key in await remove_gone(store.client, settings.redis_prefix):
                print(f"{key}: removed with its anchor: every record exported, and its "
                      "replica is gone", file=sys.stderr)
        return 0
    finally:
        await store.close()
