"""Plain JPEGs decoded by simplejpeg (``sources/fast_jpeg.py``) give Pillow's pixels exactly;
everything else still goes to Pillow. The oracle is Pillow itself, called directly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from ipmix_cli.errors import DecodeError
from ipmix_cli.sources.decode import decode_image
from ipmix_cli.sources.fast_jpeg import decode_simple_jpeg


def _pixels(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    """Smooth shapes plus noise: fine detail where chroma subsampling and upsampling show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = [(np.sin(xx / (3 + c) + yy / (5 + 2 * c)) * 100 + 128) for c in range(channels)]
    img = np.stack(base, axis=-1) + rng.normal(0, 25, (h, w, channels))
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    mode = "L" if pixels.ndim == 2 else {3: "RGB", 4: "CMYK"}[pixels.shape[2]]
    Image.fromarray(pixels, mode).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def _pillow(data: bytes) -> np.ndarray:
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    return np.asarray(img.convert("RGB"))


CASES = [
    ((224, 224), {"quality": 75, "subsampling": 2}),
    ((301, 457), {"quality": 90, "subsampling": 0}),
    ((457, 301), {"quality": 50, "subsampling": 1}),
    ((333, 500), {"quality": 95, "subsampling": 2, "progressive": True}),
    ((17, 33), {"quality": 30, "subsampling": 2, "optimize": True}),
    ((1, 1), {"quality": 75}),
    ((9, 250), {"quality": 85, "subsampling": 1, "progressive": True}),
    ((120, 160), {"quality": 80, "restart_marker_rows": 2}),
]


@pytest.mark.parametrize(("size", "options"), CASES, ids=[str(c) for c in CASES])
def test_colour_jpegs_match_pillow(size, options, tmp_path):
    data = _jpeg(_pixels(*size, seed=size[0] * 7 + size[1]), **options)
    fast = decode_simple_jpeg(data)
    assert fast is not None, "a plain JPEG must take the fast path"
    want = _pillow(data)
    assert fast.dtype == np.uint8 and fast.shape == want.shape
    np.testing.assert_array_equal(fast, want)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    np.testing.assert_array_equal(decode_image(path), want)


@pytest.mark.parametrize("progressive", [False, True])
def test_grey_jpegs_match_pillow(progressive):
    data = _jpeg(_pixels(97, 131, 3, channels=1)[..., 0], quality=80, progressive=progressive)
    fast = decode_simple_jpeg(data)
    assert fast is not None
    np.testing.assert_array_equal(fast, _pillow(data))


def test_exif_orientation_goes_to_pillow_and_is_applied():
    pixels = _pixels(40, 70, 5)
    exif = Image.Exif()
    exif[0x0112] = 6  # turned: shown 90 degrees clockwise
    data = _jpeg(pixels, quality=90, exif=exif.tobytes())
    assert decode_simple_jpeg(data) is None
    got = decode_image(data)
    assert got.shape == (70, 40, 3)
    np.testing.assert_array_equal(got, _pillow(data))


def test_cmyk_goes_to_pillow():
    data = _jpeg(_pixels(30, 20, 6, channels=4), quality=90)
    assert decode_simple_jpeg(data) is None
    np.testing.assert_array_equal(decode_image(data), _pillow(data))


def test_the_decompression_bomb_limit_is_pillows(monkeypatch):
    data = _jpeg(_pixels(64, 64, 7), quality=90)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert decode_simple_jpeg(data) is None
    with pytest.raises(DecodeError, match="too large"):
        decode_image(data, name="big.jpg")


def test_truncated_and_corrupt_files_are_pillows_to_judge():
    data = _jpeg(_pixels(200, 200, 8), quality=90)
    cut = data[: len(data) // 2]
    assert decode_simple_jpeg(cut) is None
    with pytest.raises(DecodeError, match="cut.jpg"):
        decode_image(cut, name="cut.jpg")
    broken = bytearray(data)
    broken[len(data) // 2 : len(data) // 2 + 40] = b"\xff\xd9" * 20  # end markers mid-scan
    assert decode_simple_jpeg(bytes(broken)) is None


def test_a_sweep_of_random_files_matches_pillow():
    """60 files of random sizes, qualities, subsamplings and scan modes: not one byte apart."""
    rng = np.random.default_rng(11)
    for i in range(60):
        h, w = (int(v) for v in rng.integers(1, 260, 2))
        options = {
            "quality": int(rng.integers(5, 101)),
            "subsampling": int(rng.integers(0, 3)),
            "progressive": bool(rng.integers(0, 2)),
        }
        data = _jpeg(_pixels(h, w, seed=100 + i), **options)
        fast = decode_simple_jpeg(data)
        assert fast is not None, options
        np.testing.assert_array_equal(fast, _pillow(data), err_msg=f"{h}x{w} {options}")
