"""Crawler catalog model and the user-agent classifier compiled from it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Purpose(StrEnum):
    """Why a crawler fetches pages. Closed set: it is also a metric label."""

    AI_TRAINING = "ai-training"
    AI_SEARCH = "ai-search"
    AI_ASSISTANT = "ai-assistant"  # fetches on a user's request
    AI_AGENT = "ai-agent"  # browses and acts on a user's behalf
    SEARCH_ENGINE = "search-engine"
    ARCHIVER = "archiver"
    SEO = "seo"
    SOCIAL_PREVIEW = "social-preview"
    MONITOR = "monitor"
    OTHER_BOT = "other-bot"


class Kind(StrEnum):
    """What the user agent says about the client, before any verification."""

    CRAWLER = "crawler"  # names a catalog entry
    OTHER_BOT = "other-bot"  # an obvious automated client not in the catalog
    UNKNOWN = "unknown"  # browser-like, or nothing recognisable


@dataclass(frozen=True, slots=True)
class Crawler:
    name: str
    operator: str
    purpose: Purpose
    ua_tokens: tuple[str, ...]
    robots_token: str
    url: str = ""
    # Filled by the identity work: e.g. ("ip-ranges", "reverse-dns", "web-bot-auth").
    verification: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Classification:
    kind: Kind
    crawler: Crawler | None = None

    @property
    def name(self) -> str:
        """Bounded label: the catalog name, or the kind for everything else."""
        return self.crawler.name if self.crawler is not None else self.kind.value

    @property
    def purpose(self) -> Purpose | None:
        if self.crawler is not None:
            return self.crawler.purpose
        return Purpose.OTHER_BOT if self.kind is Kind.OTHER_BOT else None


UNKNOWN = Classification(Kind.UNKNOWN)
OTHER_BOT = Classification(Kind.OTHER_BOT)
