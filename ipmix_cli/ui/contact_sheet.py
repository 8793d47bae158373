"""Contact sheets: a grid of images with optional captions, for eyeballing a bank or shards."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ipmix_cli.errors import OutputError
from ipmix_cli.fs.atomic import atomic_path, write_error
from ipmix_cli.fs.probe import lies_within, real_path, write_target
from ipmix_cli.ui.captions import PADDING, caption_font, fit

BACKGROUND = (32, 32, 32)
TEXT = (230, 230, 230)


def caption_lines(captions: Sequence[str] | None) -> int:
    """Lines the tallest caption needs (captions are ``\\n``-separated lines)."""
    return max((c.count("\n") + 1 for c in captions), default=0) if captions else 0


def fitted_lines(caption: str, cell: int) -> list[str]:
    """``caption``'s lines, each shortened to fit a ``cell``-pixel cell with its padding."""
    return [fit(line, cell - 2 * PADDING) for line in caption.split("\n")]


def contact_sheet(
    images: Sequence[np.ndarray],
    captions: Sequence[str] | None = None,
    columns: int = 8,
    cell: int = 128,
    gap: int = 4,
    group: int = 0,
) -> Image.Image:
    """Lay ``images`` (uint8 HWC RGB, any sizes) out on a grid of ``cell``-pixel squares.

    Images are scaled to fit their cell keeping aspect ratio; small images (CIFAR) are enlarged
    with nearest-neighbour so single pixels stay visible. Captions (one or more ``\\n``-separated
    lines) go under each cell, each line cut to the cell's width. ``group``: every ``group``
    columns a wider gap, so groups of cells (one source's copies) read as units.
    """
    if len(images) == 0:
        raise ValueError("contact_sheet needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    font = caption_font()
    line_height = int(font.size) + 3 if hasattr(font, "size") else 12
    caption_height = caption_lines(captions) * line_height

    def left(column: int) -> int:
        extra = column // group * 3 * gap if group > 1 else 0
        return gap + column * (cell + gap) + extra

    sheet = Image.new(
        "RGB",
        (left(columns - 1) + cell + gap, rows * (cell + caption_height + gap) + gap),
        BACKGROUND,
    )
    draw = ImageDraw.Draw(sheet)
    for position, array in enumerate(images):
        tile = Image.fromarray(np.ascontiguousarray(array))
        scale = cell / max(tile.size)
        size = (max(1, round(tile.width * scale)), max(1, round(tile.height * scale)))
        resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR
        tile = tile.resize(size, resample)
        row, column = divmod(position, columns)
        top = gap + row * (cell + caption_height + gap)
        sheet.paste(
            tile, (left(column) + (cell - tile.width) // 2, top + (cell - tile.height) // 2)
        )
        if captions:
            for k, line in enumerate(fitted_lines(captions[position], cell)):
                xy = (left(column) + PADDING, top + cell + 1 + k * line_height)
                draw.text(xy, line, fill=TEXT, font=font)
    return sheet


JPEG_SUFFIXES = (".jpg", ".jpeg")
SHEET_SUFFIXES = (".png", *JPEG_SUFFIXES)
"""The names a sheet may have: :func:`save_png_atomic` writes PNG, or JPEG for these two."""


@dataclass(frozen=True)
class Protected:
    """Something a sheet must never be written over or into, even with ``--overwrite``: a
    command's input, or the folder it is making. ``what`` completes "is ..." in the message."""

    path: Path
    what: str


def check_sheet_path(path: Path, overwrite: bool, protected: Sequence[Protected] = ()) -> Path:
    """Refuse, in one line and before any work, a sheet ``path`` that cannot or must not be
    written; return where the write will land (:func:`~ipmix_cli.fs.probe.write_target`).

    Checked: the extension (any other one would get PNG bytes under a misleading name); that
    it is not, and is not inside, one of ``protected`` (``--overwrite`` does not lift this: it
    replaces a sheet, not a command's input); that its folder exists and is writable (else the
    write fails only after the sheet was made, possibly after a whole bank was rendered); and
    that nothing is there already unless ``overwrite``, and never a folder.
    """
    if Path(path).suffix.lower() not in SHEET_SUFFIXES:
        raise OutputError(path, "a sheet's name must end in .png (PNG) or .jpg / .jpeg (JPEG)")
    final = write_target(path)
    for place in protected:
        same = os.path.exists(final) and os.path.exists(place.path)
        inside = lies_within(final, real_path(place.path))
        if inside or (same and os.path.samefile(final, place.path)):
            raise OutputError(path, f"is {place.what}; write the sheet elsewhere")
    folder = final.parent
    if not folder.is_dir():
        given = Path(path).parent
        missing = not os.path.lexists(folder)
        raise OutputError(
            path, f"folder {given} does not exist" if missing else f"{given} is not a folder"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(path, f"folder {Path(path).parent} is not writable")
    if os.path.lexists(final):
        if os.path.isdir(final):
            raise OutputError(path, "exists and is not a file")
        if not overwrite:
            raise OutputError(path, "exists; pass --overwrite to replace it")
    return final


def save_png_atomic(image: Image.Image, path: Path, shown: Path | None = None) -> None:
    """Save ``image`` at ``path``, complete or not at all: PNG, or JPEG (quality 90) when the
    name ends in .jpg / .jpeg (a photo-like bank sheet is a tenth of the size). A failed write
    (a full disk above all) is one line naming ``shown`` (default ``path``: a caller writing to
    where :func:`check_sheet_path` said names the path the user gave), its temporary file
    removed."""
    jpeg = Path(path).suffix.lower() in JPEG_SUFFIXES
    try:
        with atomic_path(path) as tmp:
            if jpeg:
                image.convert("RGB").save(tmp, format="JPEG", quality=90)
            else:
                image.save(tmp, format="PNG")
    except OSError as error:
        raise write_error(Path(shown or path), error) from None
