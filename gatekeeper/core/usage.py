"""Usage-preference vocabularies and how their statements are written.

The words themselves are data (`gatekeeper/data/usage-vocabulary.yaml`, pinned to
the drafts they follow); this module gives them a type and serialises them:

- IETF aipref (`Content-Usage`): an RFC 9651 Dictionary of lower-case words with
  the tokens `y` and `n`, such as `train-ai=n, search=y`.
- Cloudflare Content Signals (`Content-Signal` in robots.txt): the same shape
  with `yes` and `no`.

Nothing here reads a file: `vocabularies_from` takes the parsed YAML.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gatekeeper.core.catalog import Purpose


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """One vocabulary: its words in order, each with the purposes that decide it."""

    name: str
    pinned: str
    words: tuple[tuple[str, frozenset[Purpose]], ...]

    def names(self) -> tuple[str, ...]:
        return tuple(word for word, _ in self.words)

    def words_for(self, purpose: Purpose | None) -> tuple[str, ...]:
        return tuple(word for word, purposes in self.words if purpose in purposes)


@dataclass(frozen=True, slots=True)
class Vocabularies:
    aipref: Vocabulary
    content_signals: Vocabulary
    tdm_pinned: str
    tdm_reserved_by: frozenset[Purpose]

    def purposes_of(self, word: str) -> frozenset[Purpose]:
        """The purposes an aipref word stands for (empty for an unknown word)."""
        for name, purposes in self.aipref.words:
            if name == word:
                return purposes
        return frozenset()


class VocabularyError(ValueError):
    """The vocabulary data is malformed (a packaging error, not an operator's)."""


def vocabularies_from(data: Mapping[str, object]) -> Vocabularies:
    tdm = _mapping(data.get("tdmrep"), "tdmrep")
    return Vocabularies(
        aipref=_vocabulary("aipref", data.get("aipref")),
        content_signals=_vocabulary("content_signals", data.get("content_signals")),
        tdm_pinned=_pinned(tdm, "tdmrep"),
        tdm_reserved_by=_purposes(tdm.get("reserved_by"), "tdmrep.reserved_by"),
    )


def content_usage(values: Iterable[tuple[str, bool]]) -> str:
    """An aipref statement: `train-ai=n, search=y` (True is "y")."""
    return ", ".join(f"{word}={'y' if allowed else 'n'}" for word, allowed in values)


def content_signal(values: Iterable[tuple[str, bool]]) -> str:
    """A Content Signals statement: `search=yes, ai-train=no`."""
    return ", ".join(f"{word}={'yes' if allowed else 'no'}" for word, allowed in values)


def _vocabulary(name: str, node: object) -> Vocabulary:
    section = _mapping(node, name)
    words = _mapping(section.get("words"), f"{name}.words")
    out: list[tuple[str, frozenset[Purpose]]] = []
    for word, purposes in words.items():
        # RFC 9651 dictionary keys: lower-case letters, digits, "_", "-", ".", "*".
        if not word or not word[0].islower() or not all(
                c.islower() or c.isdigit() or c in "_-.*" for c in word):
            raise VocabularyError(f"{name}.words: {word!r} is not a valid dictionary key")
        out.append((word, _purposes(purposes, f"{name}.words.{word}")))
    return Vocabulary(name, _pinned(section, name), tuple(out))


def _pinned(section: Mapping[str, object], where: str) -> str:
    # The words follow drafts that still move: each vocabulary names the one it follows.
    pinned = section.get("pinned")
    if not isinstance(pinned, str) or not pinned.strip():
        raise VocabularyError(f"{where}.pinned: expected the name of the text it follows")
    return pinned


def _mapping(node: object, where: str) -> Mapping[str, object]:
    if not isinstance(node, Mapping):
        raise VocabularyError(f"{where}: expected a mapping")
    return node


def _purposes(node: object, where: str) -> frozenset[Purpose]:
    if not isinstance(node, list) or not node:
        raise VocabularyError(f"{where}: expected a list of purposes")
    try:
        return frozenset(Purpose(p) for p in node)
    except ValueError as exc:
        raise VocabularyError(f"{where}: {exc}") from None
