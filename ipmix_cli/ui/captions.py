"""What each cell of a contact sheet says, and making it fit its cell.

Captions are built by pure functions (no image, no file) so a test can check them; they are
fitted with the font's real text length (``ImageFont.getlength``), not a character count, so a
long class name ends in an ellipsis inside its cell instead of running into the next one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from PIL import ImageFont

FONT_SIZE = 11
"""Pixels; small enough for about 20 characters in a 128 px cell."""
ELLIPSIS = "\u2026"
PADDING = 2
"""Pixels left free on each side of a caption inside its cell."""


@functools.cache
def caption_font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font at :data:`FONT_SIZE` (FreeType when Pillow has it, which every
    wheel does; the bitmap font otherwise): no font file to ship or find."""
    return ImageFont.load_default(size=FONT_SIZE)


def text_width(
    text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont | None = None
) -> float:
    """Width in pixels of ``text`` drawn in ``font`` (the caption font by default)."""
    return (font or caption_font()).getlength(text)


def fit(
    text: str, width: float, font: ImageFont.FreeTypeFont | ImageFont.ImageFont | None = None
) -> str:
    """``text``, or its longest prefix plus an ellipsis, whose drawn width is at most ``width``
    pixels ("" when not even the ellipsis fits)."""
    if text_width(text, font) <= width:
        return text
    low, high = 0, len(text)  # the longest prefix that fits with the ellipsis: binary search
    while low < high:
        middle = (low + high + 1) // 2
        if text_width(text[:middle].rstrip() + ELLIPSIS, font) <= width:
            low = middle
        else:
            high = middle - 1
    shortened = text[:low].rstrip() + ELLIPSIS
    return shortened if text_width(shortened, font) <= width else ""


def bank_captions(indices: Sequence[int]) -> list[str]:
    """One caption per bank image: its index, the number ``ipmix fractals render --index``
    takes to re-render it."""
    return [f"index {i}" for i in indices]


def source_caption(source: int, class_name: str) -> str:
    """Who the images of a sheet group come from: "src 17 (cat)"."""
    return f"src {source} ({class_name})"


def augment_captions(source: int, class_name: str, copies: Sequence[int], jsd: bool) -> list[str]:
    """Captions of one source's group of cells on an augment output's sheet, two lines each.

    JSD output: the clean (original) image, then each copy's two views. Standard output: the
    copies side by side (the original is not stored). The source line heads the group's first
    cell only, so a sheet row reads "src 17 (cat)" then copy 0, copy 1, ...
    """
    head = source_caption(source, class_name)
    if jsd:
        lines = ["original (clean)"]
        for copy in copies:
            lines += [f"copy {copy} view 1", f"copy {copy} view 2"]
    else:
        lines = [f"copy {copy}" for copy in copies]
    return [f"{head if k == 0 else ''}\n{line}" for k, line in enumerate(lines)]
