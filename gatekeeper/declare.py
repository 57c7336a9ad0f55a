"""Every declaration document of a policy, rendered at once (for the CLI and `explain`).

The proxy renders the same documents one at a time, cached (`edge.documents`);
both go through `robots_document` and the core renderers, so what `gatekeeper
declarations` prints is what the main listener serves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gatekeeper.core.catalog import Crawler
from gatekeeper.core.declarations import Plan, plan
from gatekeeper.core.model import Policy, RobotsMode
from gatekeeper.core.owners import NO_OWNERS, Owners, Stance
from gatekeeper.core.robots import PatternSet, RobotsRules
from gatekeeper.core.robots_txt import RobotsDocument, render_robots, usage_line
from gatekeeper.core.rsl import render_rsl
from gatekeeper.core.tdmrep import render_tdmrep
from gatekeeper.core.usage import Vocabularies


@dataclass(frozen=True, slots=True)
class Declarations:
    plan: Plan
    robots: RobotsDocument
    tdmrep: bytes
    rsl: bytes
    rsl_url: str
    terms_url: str

    def headers_for(self, path: str) -> tuple[tuple[str, str], ...]:
        """The declaration headers of a forwarded response on `path`."""
        return self.plan.headers_for(path, self.rsl_url, self.terms_url)


def absolute(site: str, url: str) -> str:
    return url if url.startswith(("http://", "https://")) else site.rstrip("/") + url


def offers_licences(policy: Policy) -> bool:
    return any(lic.usages for lic in policy.licenses)


def robots_document(policy: Policy, found: Plan, origin: RobotsRules | None,
                    site: str) -> RobotsDocument:
    """The robots.txt served for `found`; `origin` is the origin's parsed file."""
    served = origin.text if origin is not None and found.mode is RobotsMode.MERGE else None
    return render_robots(found, origin_text=served, offers_licences=offers_licences(policy),
                         license_url=absolute(site, policy.rsl_url))


def declarations(policy: Policy, crawlers: Iterable[Crawler], vocab: Vocabularies, *,
                 site: str, host: str, origin_txt: bytes | None = None,
                 owners: Owners = NO_OWNERS, server: str = "",
                 jwks: bool = True, robots_compliance: bool = True) -> Declarations:
    """`robots_compliance`: whether the gate reads the origin's robots.txt
    (`Settings.robots_compliance`); `robots:` rules match only when it does."""
    origin = RobotsRules.parse(origin_txt) if origin_txt is not None else None
    found = plan(policy, crawlers, vocab, host=host, origin=origin, owners=owners, jwks=jwks,
                 robots_compliance=robots_compliance)
    rsl_url = absolute(site, policy.rsl_url)
    terms_url = absolute(site, policy.license_terms_url)
    withheld = [p.text for o in owners.owners if o.stance is Stance.OPT_OUT for p in o.paths]
    token = absolute(site, server or policy.token_url)
    rsl = render_rsl(policy, site=site, server=token.rsplit("/", 1)[0],
                     terms_url=terms_url, withheld=withheld)
    return Declarations(found, robots_document(policy, found, origin, site),
                        render_tdmrep(found, terms_url), rsl, rsl_url, terms_url)


def robots_lines(d: Declarations, policy: Policy, crawler: Crawler | None,
                 path: str) -> list[str]:
    """The non-rule robots.txt lines a crawler reads for `path`, as served: the
    `Content-Usage:` line of its group that applies there (the site-wide ones are in
    the `*` group), the `License:` line that applies to it (its group's, else the
    global one), and the `Content-Signal:` line."""
    found = d.plan
    group = found.group_for(crawler.name) if crawler is not None else None
    own = crawler is not None and crawler.name in found.origin_named
    lines: list[str] = []
    usage = group.usage if group is not None else (() if own else found.usage)
    best = PatternSet(p for p, _ in usage).best(path)
    lines.extend(usage_line(p, value) for p, value in usage if p == best)
    if offers_licences(policy) or (group is not None and group.license):
        lines.append(f"License: {d.rsl_url}")
    if found.signal:
        lines.append(f"Content-Signal: {found.signal}")
    return [line.rstrip("\n") for line in lines]
