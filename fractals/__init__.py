"""Fractal mixing pictures: IFS sampled with the SVD parameterisation, rendered by a fused
numba chaos game, coloured in HSV over a plasma (or black) background.

Public API (what the CLI builds on)::

    from fractals import FractalError, FractalOptions, make_image, make_images, render_record
    from fractals import warmup

Modules, one concern each: :mod:`~fractals.options` (what a bank is made with),
:mod:`~fractals.pipeline` (the jitted per-image pipeline), :mod:`~fractals.image` (making images
from Python), :mod:`~fractals.record` (the record of an image and redrawing from it), and the
building blocks :mod:`~fractals.rng`, :mod:`~fractals.ifs`, :mod:`~fractals.render`,
:mod:`~fractals.colour`, :mod:`~fractals.background`. See ``docs/fractals.md`` for how an image
is made and the record format.

Importing this package touches nothing on disk. numba keys its on-disk caches on each file's
own timestamp, so a program that may run after the sources changed (the CLI) should call
``fractals.numba_cache.drop_stale_caches`` on this package's folder before any kernel loads.
"""

from fractals.errors import FractalError
from fractals.image import make_image, make_images, warmup
from fractals.options import FractalOptions
from fractals.record import render_record

__all__ = [
    "FractalError",
    "FractalOptions",
    "make_image",
    "make_images",
    "render_record",
    "warmup",
]
