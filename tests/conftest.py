"""Suite-wide settings.

Property tests run derandomised by default, so the suite gives the same verdict on
every run and a CI failure reproduces locally. `HYPOTHESIS_PROFILE=explore` draws
fresh random examples on each run (and more of them where a test sets no count of
its own) to look for new counterexamples.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", max_examples=1000, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
