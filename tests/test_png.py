"""The bank's PNG encoder against Pillow's decoder (an independent implementation)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ipmix_cli.bank.png import encode_rgb_png


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (32, 32), (129, 64)])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_pillow_decodes_the_exact_pixels(shape: tuple[int, int], level: int) -> None:
    rng = np.random.default_rng(shape[0] * 100 + level)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    image[: shape[0] // 2] = image[0, 0]  # some flat rows too, like fractal backgrounds
    decoded = Image.open(io.BytesIO(encode_rgb_png(image, level)))
    decoded.load()  # checks the CRCs and the zlib stream
    assert decoded.mode == "RGB" and decoded.size == (shape[1], shape[0])
    np.testing.assert_array_equal(np.asarray(decoded), image)


def test_deterministic_and_level_matters() -> None:
    image = np.tile(np.arange(64, dtype=np.uint8)[:, None, None], (1, 64, 3))
    assert encode_rgb_png(image, 1) == encode_rgb_png(image.copy(), 1)
    assert len(encode_rgb_png(image, 9)) < len(encode_rgb_png(image, 0))


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)])
def test_rejects_non_rgb_uint8(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_rgb_png(bad)
