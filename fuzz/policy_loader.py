"""Fuzz target: the policy loader.

Any text must load into a Policy or be refused with PolicyError (file, line and
field); anything else escaping the loader (a KeyError, a RecursionError, a hang
on an alias bomb) is a bug.

    pip install -e '.[fuzz]'
    python -m fuzz.policy_loader fuzz/corpus/policy -max_total_time=300

Without atheris, tests/unit/test_fuzz_targets.py runs this target over the seed
corpus and generated inputs in the ordinary test suite.
"""

from __future__ import annotations

from fuzz.run import fuzz
from gatekeeper.catalog_loader import load_catalog
from gatekeeper.errors import PolicyError
from gatekeeper.policy.loader import load_policy_text

CATALOG = load_catalog()


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    try:
        load_policy_text(text, "fuzz.yaml", CATALOG)
    except PolicyError as exc:
        # The message must say where: the file name is always there.
        assert "fuzz.yaml" in str(exc), str(exc)


if __name__ == "__main__":
    fuzz(test_one_input)
