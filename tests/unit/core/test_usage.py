"""The usage-preference vocabularies: the shipped data, its documentation, and the
errors a malformed vocabulary file raises."""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatekeeper.core.catalog import Purpose
from gatekeeper.core.usage import (
    VocabularyError,
    content_signal,
    content_usage,
    vocabularies_from,
)
from gatekeeper.vocabulary_loader import load_vocabularies

ROOT = Path(__file__).resolve().parents[3]
DATA: dict[str, Any] = yaml.safe_load(
    resources.files("gatekeeper.data").joinpath("usage-vocabulary.yaml").read_text("utf-8"))


def _documented() -> dict[str, tuple[str, dict[str, frozenset[str]]]]:
    """docs/declarations.md's vocabulary table: per vocabulary, its pin and its words
    with the purposes that decide them."""
    text = (ROOT / "docs" / "declarations.md").read_text(encoding="utf-8")
    table = text.split("| vocabulary | pinned to |", 1)[1].split("\n\n", 1)[0]
    out: dict[str, tuple[str, dict[str, frozenset[str]]]] = {}
    current = ""
    for row in table.splitlines()[2:]:
        name, pinned, word, purposes = (cell.strip() for cell in row.strip("|").split("|"))
        if name:
            key = re.search(r"\(`(\w+)`\)", name)
            assert key is not None, row
            current = key.group(1)
            out[current] = (pinned, {})
        out[current][1][word.strip("`")] = frozenset(re.findall(r"`([a-z-]+)`", purposes))
    return out


def test_every_vocabulary_names_the_draft_it_follows() -> None:
    vocab = load_vocabularies()
    for pinned in (vocab.aipref.pinned, vocab.content_signals.pinned, vocab.tdm_pinned):
        assert pinned.strip()
    assert re.search(r"draft-ietf-aipref-vocab-\d\d", vocab.aipref.pinned)
    assert re.search(r"draft-ietf-aipref-attach-\d\d", vocab.aipref.pinned)


def test_the_documented_table_is_the_shipped_vocabulary() -> None:
    documented = _documented()
    vocab = load_vocabularies()
    shipped = {
        "aipref": (vocab.aipref.pinned,
                   {w: frozenset(p.value for p in ps) for w, ps in vocab.aipref.words}),
        "content_signals": (vocab.content_signals.pinned,
                            {w: frozenset(p.value for p in ps)
                             for w, ps in vocab.content_signals.words}),
        "tdmrep": (vocab.tdm_pinned,
                   {"reservation": frozenset(p.value for p in vocab.tdm_reserved_by)}),
    }
    assert documented == shipped


def _broken(path: tuple[str, ...], value: object) -> dict[str, Any]:
    data = copy.deepcopy(DATA)
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "message"), [
    (("aipref",), _DELETE, "aipref: expected a mapping"),
    (("content_signals",), ["search"], "content_signals: expected a mapping"),
    (("tdmrep",), _DELETE, "tdmrep: expected a mapping"),
    (("aipref", "pinned"), _DELETE, "aipref.pinned: expected the name"),
    (("aipref", "pinned"), "  ", "aipref.pinned: expected the name"),
    (("tdmrep", "pinned"), 7, "tdmrep.pinned: expected the name"),
    (("aipref", "words"), ["train-ai"], "aipref.words: expected a mapping"),
    (("aipref", "words", "Train-AI"), ["ai-training"], "'Train-AI' is not a valid dictionary"),
    (("aipref", "words", "train ai"), ["ai-training"], "'train ai' is not a valid dictionary"),
    (("aipref", "words", "train-ai"), [], "aipref.words.train-ai: expected a list"),
    (("aipref", "words", "train-ai"), "ai-training", "aipref.words.train-ai: expected a list"),
    (("content_signals", "words", "ai-train"), ["ai-trainer"],
     "content_signals.words.ai-train: 'ai-trainer' is not a valid Purpose"),
    (("tdmrep", "reserved_by"), _DELETE, "tdmrep.reserved_by: expected a list"),
])
def test_a_malformed_vocabulary_is_refused_with_where(path: tuple[str, ...], value: object,
                                                      message: str) -> None:
    with pytest.raises(VocabularyError, match=re.escape(message)):
        vocabularies_from(_broken(path, value))


def test_the_shipped_data_loads_as_it_is() -> None:
    vocab = vocabularies_from(copy.deepcopy(DATA))
    assert vocab.aipref.names() == ("train-ai", "search")
    assert vocab.purposes_of("train-ai") == frozenset({Purpose.AI_TRAINING})
    assert vocab.purposes_of("no-such-word") == frozenset()


def test_statements_are_written_as_rfc9651_dictionaries() -> None:
    assert content_usage([("train-ai", False), ("search", True)]) == "train-ai=n, search=y"
    assert content_signal([("search", True), ("ai-train", False)]) == "search=yes, ai-train=no"
