"""Run a fuzz target under atheris (the optional `fuzz` extra)."""

from __future__ import annotations

import sys
from collections.abc import Callable


def fuzz(target: Callable[[bytes], None]) -> None:
    import atheris  # pip install -e '.[fuzz]'

    atheris.instrument_all()  # coverage feedback from every module loaded so far
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
