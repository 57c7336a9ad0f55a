"""The upstream's reason phrase is relayed only when it is a valid one (RFC 9112 §4:
HTAB, SP, visible characters, obs-text); anything else gets the standard phrase."""

from __future__ import annotations

import pytest

from gatekeeper.edge.proxy import _safe_reason


@pytest.mark.parametrize("reason", ["OK", "Origin Busy", "Fine\tThanks", "Très bien", ""])
def test_a_valid_reason_phrase_is_kept(reason: str) -> None:
    assert _safe_reason(reason) == reason


@pytest.mark.parametrize("reason", ["O\rK", "O\nK", "O\x00K", "O\x01K", "O\x0bK", "O\x1b[31mK",
                                    "O\x7fK"])
def test_a_control_character_replaces_the_phrase_with_the_standard_one(reason: str) -> None:
    assert _safe_reason(reason) is None


def test_no_phrase_stays_none() -> None:
    assert _safe_reason(None) is None
