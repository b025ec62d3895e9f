"""Text the engines share: styled letters as the plain ones they restyle."""

from __future__ import annotations

import unicodedata

# compatibility decompositions that only restyle a character (mathematical bold or script letters, full- and
# half-width forms): espeak reads each as its code point ("letter 1 d 4 e 3"), a character vocabulary lacks them
_STYLE_TAGS = ("<font>", "<wide>", "<narrow>")


def plain_letters(text: str) -> str:
    """`text` with styled letters and digits as the plain ones they restyle (mathematical script T is T); superscripts,
    fractions and other compatibility characters, which espeak reads in words, stay as they are."""
    return "".join(
        unicodedata.normalize("NFKC", character)
        if unicodedata.decomposition(character).startswith(_STYLE_TAGS)
        else character
        for character in text
    )
