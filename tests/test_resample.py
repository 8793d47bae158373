"""The numba resize against Pillow's own BILINEAR resize, pixel for pixel.

Pillow is the oracle: the kernel must give its exact bytes on every shape a pre-transform can
ask for (RandomResizedCrop windows to 224 or 32 px, the size policy's shorter-side resizes,
mixing pictures) and on the odd ones (one-pixel sides, upscaling on one axis and downscaling
on the other, images over 100 times taller than wide, where Pillow takes another path).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ipmix_cli.augment.ops.resample import (
    coefficients,
    resize_bilinear,
    resize_window,
    vertical_first,
)


def pillow(img: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BILINEAR))


def noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("seed", range(4))
def test_random_shapes_match_pillow(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 420, 2))
        oh, ow = (int(v) for v in rng.integers(1, 300, 2))
        img = noise(rng, h, w)
        assert np.array_equal(resize_bilinear(img, (oh, ow)), pillow(img, oh, ow)), (h, w, oh, ow)


def test_both_pass_orders_occur_and_match() -> None:
    """Shapes on both sides of Pillow's pass-order rule, close to its boundary: a wrong rule
    (or one pass order everywhere) changes pixels here."""
    rng = np.random.default_rng(7)
    img = noise(rng, 500, 500)
    orders = set()
    for h in range(232, 480, 31):
        boundary = 224 + (h - 224) // 2  # vertical first iff h - 224 > 2 (w - 224)
        for w in (boundary - 1, boundary, boundary + 1, boundary + 2):
            window = np.ascontiguousarray(img[:h, :w])
            orders.add(bool(vertical_first(h, w, 224, 224)))
            got = resize_window(img, 0, 0, h, w, 224, 224)
            assert np.array_equal(got, pillow(window, 224, 224)), (h, w)
    assert orders == {True, False}


@pytest.mark.parametrize(
    "shape,out",
    [
        ((1, 1), (5, 7)),
        ((1, 9), (3, 1)),
        ((9, 1), (1, 3)),
        ((300, 2), (10, 1)),  # over 100x taller than wide: Pillow's tall-image path
        ((700, 3), (224, 224)),
        ((224, 224), (224, 200)),  # one pass only
        ((224, 224), (180, 224)),
        ((30, 40), (224, 224)),  # upscaling both ways
        ((500, 100), (224, 224)),  # down in y, up in x
    ],
)
def test_odd_shapes_match_pillow(shape: tuple[int, int], out: tuple[int, int]) -> None:
    img = noise(np.random.default_rng(sum(shape)), *shape)
    assert np.array_equal(resize_bilinear(img, out), pillow(img, *out))


def test_window_is_read_in_place() -> None:
    """A window of a larger image resizes exactly like the cropped copy Pillow is given, and
    only the window is read: pixels around it do not leak in."""
    rng = np.random.default_rng(3)
    img = noise(rng, 400, 360)
    for top, left, h, w in ((10, 20, 300, 280), (0, 0, 400, 360), (51, 33, 150, 170)):
        crop = np.ascontiguousarray(img[top : top + h, left : left + w])
        got = resize_window(img, top, left, h, w, 224, 224)
        assert np.array_equal(got, pillow(crop, 224, 224))
        framed = img.copy()
        framed[:top], framed[top + h :] = 0, 255
        framed[:, :left], framed[:, left + w :] = 255, 0
        assert np.array_equal(resize_window(framed, top, left, h, w, 224, 224), got)


def test_coefficients_sum_to_one_in_fixed_point() -> None:
    """Each output pixel's weights sum to 2**22 within rounding (one unit per tap): a flat
    image stays flat, which the pixel tests above would not isolate."""
    for n_in, n_out in ((400, 224), (224, 400), (37, 5), (5, 37)):
        bounds, weights = coefficients(n_in, n_out)
        sums = weights.sum(axis=1)
        assert np.all(np.abs(sums - (1 << 22)) <= weights.shape[1]), (n_in, n_out)
        assert bounds[:, 0].min() >= 0 and (bounds[:, 0] + bounds[:, 1]).max() <= n_in
