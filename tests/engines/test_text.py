"""Text the engines share."""

from __future__ import annotations

from service.engines.text import plain_letters
from tests.support.styled_text import bold_script, full_width


def test_styled_letters_and_digits_become_plain_and_other_compatibility_characters_stay() -> None:
    assert plain_letters(f"{bold_script('The quick')} {full_width('fox 2')} \uff76") == "The quick fox 2 \u30ab"
    kept = "x\u00b2 \u00bd \ufb01 \u2103 \U0001f600"  # superscript two, one half, fi ligature, degree Celsius, emoji
    assert plain_letters(kept) == kept
