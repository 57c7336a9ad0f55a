"""Reporting for the decision-core benchmark: each figure next to the baseline
measured in the same run, and the target.

Only bench/run.sh runs this directory (`pytest bench/test_bench_core.py
--benchmark-only`); the project's test run collects `tests/` alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pytest


@dataclass(frozen=True)
class Figure:
    label: str
    median_s: float
    baseline: bool
    target_us: float | None


class Measure(Protocol):
    def __call__(
        self,
        fn: Callable[[], object],
        label: str,
        *,
        baseline: bool = False,
        target_us: float | None = None,
        calls: tuple[int, int] | None = None,
    ) -> None: ...


FIGURES = pytest.StashKey[list[Figure]]()


@pytest.fixture
def measure(benchmark: Any, request: pytest.FixtureRequest) -> Measure:
    """Benchmark `fn` and keep its median per call for the summary. `calls` =
    (rounds, iterations) fixes the number of calls, for inputs that run out."""

    def run(
        fn: Callable[[], object],
        label: str,
        *,
        baseline: bool = False,
        target_us: float | None = None,
        calls: tuple[int, int] | None = None,
    ) -> None:
        if calls is None:
            benchmark(fn)
        else:
            rounds, iterations = calls
            benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)
        if benchmark.stats is not None:  # None under --benchmark-disable
            figures = request.config.stash.setdefault(FIGURES, [])
            figures.append(Figure(label, benchmark.stats.stats.median, baseline, target_us))

    return run


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, [])
    if not figures:
        return
    base = next((f for f in figures if f.baseline), None)
    write = terminalreporter.write_line
    write("")
    write("decision core: median per call; 'x base' is the ratio to the baseline "
          "measured in this run")
    write(f"  {'':48} {'median':>10} {'x base':>8}  target")
    for f in figures:
        ratio = f"{f.median_s / base.median_s:7.1f}x" if base is not None else "      -"
        goal = ""
        if f.target_us is not None:
            verdict = "PASS" if f.median_s * 1e6 < f.target_us else "MISS"
            goal = f"< {f.target_us:g} us  {verdict}"
        tag = " (baseline)" if f.baseline else ""
        write(f"  {f.label + tag:48} {f.median_s * 1e6:7.2f} us {ratio}  {goal}")
