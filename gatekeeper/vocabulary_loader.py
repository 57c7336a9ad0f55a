"""Reads the packaged usage-preference vocabularies (`data/usage-vocabulary.yaml`)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml

from gatekeeper.core.usage import Vocabularies, vocabularies_from


@lru_cache(maxsize=1)
def load_vocabularies() -> Vocabularies:
    text = resources.files("gatekeeper.data").joinpath("usage-vocabulary.yaml").read_text("utf-8")
    return vocabularies_from(yaml.safe_load(text))
