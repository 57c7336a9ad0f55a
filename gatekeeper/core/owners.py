"""Content owners: the people whose pages a site serves, and what they chose.

On platforms the content belongs to its authors. The operator maps path globs to
owners, each with a stance: `opt-out` (no AI use of their pages at all: the gate
refuses AI crawlers there whatever the site's rules or licences say, and sells
nothing) or `licensable` (the site's licences apply, and the owner gets `share`
percent of the licence revenue from their pages). The first owner whose paths
match a request's path is its owner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache

from gatekeeper.core.catalog import Purpose
from gatekeeper.core.decision import Decision, Reason
from gatekeeper.core.model import Pattern

# The purposes an owner's opt-out refuses: every AI use. Search engines still index.
AI_PURPOSES = frozenset({Purpose.AI_TRAINING, Purpose.AI_SEARCH, Purpose.AI_ASSISTANT,
                         Purpose.AI_AGENT, Purpose.UNDECLARED_BOT})


class Stance(StrEnum):
    OPT_OUT = "opt-out"
    LICENSABLE = "licensable"


@dataclass(frozen=True, slots=True)
class Owner:
    name: str
    paths: tuple[Pattern, ...]
    stance: Stance
    share: Decimal = Decimal(0)  # percent of licence revenue, for licensable owners

    def owns(self, path: str) -> bool:
        return any(p.match(path) for p in self.paths)


@dataclass(frozen=True, slots=True)
class Owners:
    """The owners, in the order their paths are tried."""

    owners: tuple[Owner, ...] = ()

    def owner_of(self, path: str) -> Owner | None:
        for owner in self.owners:
            if owner.owns(path):
                return owner
        return None

    def shares(self) -> dict[str, Decimal]:
        return {o.name: o.share for o in self.owners if o.stance is Stance.LICENSABLE}


NO_OWNERS = Owners()


def refuses(owner: Owner | None, purpose: Purpose | None) -> bool:
    """Whether `owner`'s stance refuses a request made for `purpose`."""
    return owner is not None and owner.stance is Stance.OPT_OUT and purpose in AI_PURPOSES


@lru_cache(maxsize=1024)
def opted_out(owner: str) -> Decision:
    """The answer on an opted-out owner's pages: a 403 no licence can turn round."""
    body = json.dumps({"error": "owner_opted_out", "owner": owner, "status": 403,
                       "message": "the author of this content has opted out of AI use"},
                      separators=(",", ":"), sort_keys=True).encode() + b"\n"
    return Decision("block", f"owner:{owner}", Reason.BLOCKED, forward=False, status=403,
                    headers=(("Content-Type", "application/json"),), body=body,
                    would_status=403)
