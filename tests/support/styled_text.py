"""Sentences in styled Unicode letters, as people paste them from fancy-text generators."""

from __future__ import annotations


def bold_script(text: str) -> str:
    """ASCII letters as MATHEMATICAL BOLD SCRIPT letters (U+1D4D0 on)."""
    return "".join(
        chr(0x1D4D0 + ord(c) - ord("A")) if c.isupper() else chr(0x1D4EA + ord(c) - ord("a")) if c.isalpha() else c
        for c in text
    )


def full_width(text: str) -> str:
    """Printable ASCII as FULLWIDTH forms (U+FF01 on)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)
