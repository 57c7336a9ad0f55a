"""The fuzz targets in fuzz/ run here over their seed corpus and over inputs
hypothesis derives from it, so they cannot rot while atheris (an optional extra)
is not installed, and their invariants hold in every CI run."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import header_hygiene, policy_loader

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"
POLICY_SEEDS = sorted((CORPUS / "policy").iterdir())
HEADER_SEEDS = sorted((CORPUS / "headers").iterdir())


@pytest.mark.parametrize("seed", POLICY_SEEDS, ids=lambda p: p.name)
def test_policy_loader_target_holds_on_its_seed_corpus(seed: Path) -> None:
    policy_loader.test_one_input(seed.read_bytes())


@pytest.mark.parametrize("seed", HEADER_SEEDS, ids=lambda p: p.name)
def test_header_hygiene_target_holds_on_its_seed_corpus(seed: Path) -> None:
    header_hygiene.test_one_input(seed.read_bytes())


def _mutations(seeds: list[Path]) -> st.SearchStrategy[bytes]:
    """A seed with a slice replaced, deleted or repeated: what a fuzzer tries first."""
    texts = [p.read_bytes() for p in seeds]

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = draw(st.sampled_from(texts))
        start = draw(st.integers(0, len(data)))
        end = draw(st.integers(start, min(len(data), start + 64)))
        middle = draw(st.one_of(st.binary(max_size=32), st.just(data[start:end] * 3),
                                st.just(b"")))
        return data[:start] + middle + data[end:]

    return mutate()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations(POLICY_SEEDS))
def test_policy_loader_target_holds_on_mutated_policies(data: bytes) -> None:
    policy_loader.test_one_input(data)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_mutations(HEADER_SEEDS), st.binary(max_size=512)))
def test_header_hygiene_target_holds_on_mutated_headers(data: bytes) -> None:
    header_hygiene.test_one_input(data)
