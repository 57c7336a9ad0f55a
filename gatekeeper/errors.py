"""The user-facing exceptions. Each carries what a user needs to fix the problem."""

from __future__ import annotations

from dataclasses import dataclass


class GatekeeperError(Exception):
    """Base class for errors reported to the operator without a traceback."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a file: where, which field, and what."""

    file: str
    line: int  # 1-based; 0 when unknown
    field: str  # dotted path, e.g. "rules[2].match.crawlers[0]"
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"


class PolicyError(GatekeeperError):
    """A policy file is invalid. Holds every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class SettingsError(GatekeeperError):
    """A setting (flag, environment variable or settings file) is invalid."""


class CatalogError(GatekeeperError):
    """The crawler catalog data file is invalid."""


class StoreUnavailable(GatekeeperError):
    """The shared store could not answer in time; callers apply their failure mode."""
