"""Contact sheets: a grid of images with optional captions, for eyeballing a bank or shards."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ipmix_cli.fs.atomic import atomic_path


def contact_sheet(
    images: Sequence[np.ndarray],
    captions: Sequence[str] | None = None,
    columns: int = 8,
    cell: int = 128,
    gap: int = 4,
) -> Image.Image:
    """Lay ``images`` (uint8 HWC RGB, any sizes) out on a grid of ``cell``-pixel squares.

    Images are scaled to fit their cell keeping aspect ratio; small images (CIFAR) are enlarged
    with nearest-neighbour so single pixels stay visible. Captions go under each cell.
    """
    if len(images) == 0:
        raise ValueError("contact_sheet needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    caption_height = 14 if captions else 0
    sheet = Image.new(
        "RGB",
        (columns * (cell + gap) + gap, rows * (cell + caption_height + gap) + gap),
        (32, 32, 32),
    )
    draw = ImageDraw.Draw(sheet)
    for position, array in enumerate(images):
        tile = Image.fromarray(np.ascontiguousarray(array))
        scale = cell / max(tile.size)
        size = (max(1, round(tile.width * scale)), max(1, round(tile.height * scale)))
        resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR
        tile = tile.resize(size, resample)
        row, column = divmod(position, columns)
        x = gap + column * (cell + gap) + (cell - tile.width) // 2
        y = gap + row * (cell + caption_height + gap) + (cell - tile.height) // 2
        sheet.paste(tile, (x, y))
        if captions:
            text_y = gap + row * (cell + caption_height + gap) + cell + 1
            draw.text(
                (gap + column * (cell + gap) + 2, text_y),
                captions[position][:24],
                fill=(230, 230, 230),
            )
    return sheet


def save_png_atomic(image: Image.Image, path: Path) -> None:
    """Save ``image`` as PNG at ``path``: complete or not at all."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
