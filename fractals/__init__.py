"""Fractal mixing pictures: IFS sampled with the SVD parameterisation, rendered by a fused
numba chaos game, coloured in HSV over a plasma (or black) background.

Public API (what the CLI builds on)::

    from fractals import FractalOptions, make_image, make_images, render_record, warmup

See ``docs/fractals.md`` for how an image is made and the record format.
"""

from pathlib import Path

from fractals.numba_cache import drop_stale_caches

drop_stale_caches(Path(__file__).resolve().parent)

# Imported after the cache check on purpose: no stale kernel may be loaded before it.
from fractals.image import (  # noqa: E402
    FractalOptions,
    make_image,
    make_images,
    render_record,
    warmup,
)

__all__ = ["FractalOptions", "make_image", "make_images", "render_record", "warmup"]
