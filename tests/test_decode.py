"""decode_image: every Pillow mode we promise to handle, checked against independent expectations.

Expectations come from Pillow's own conversions (``convert("RGBa")`` premultiplies,
``convert("RGB")`` for palettes/CMYK) or from plain numpy arithmetic, never from the code under
test.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from ipmix_cli.errors import DecodeError, IpmixError
from ipmix_cli.sources.decode import decode_image

RNG = np.random.default_rng(1234)


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _gray3(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, axis=2)


def _rgba_array(h: int = 9, w: int = 7) -> np.ndarray:
    rgba = RNG.integers(0, 256, (h, w, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0  # fully transparent pixel
    rgba[0, 1, 3] = 255  # fully opaque pixel
    return rgba


def test_rgb_png_round_trips_exactly(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    path = _save(Image.fromarray(rgb), tmp_path / "a.png")
    out = decode_image(path)
    assert out.dtype == np.uint8 and out.shape == (10, 12, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)
    np.testing.assert_array_equal(decode_image(path.read_bytes()), rgb)  # bytes input too


def test_grayscale_l_and_1(tmp_path: Path) -> None:
    gray = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    np.testing.assert_array_equal(
        decode_image(_save(Image.fromarray(gray), tmp_path / "l.png")), _gray3(gray)
    )
    bits = RNG.integers(0, 2, (6, 5)).astype(bool)
    img1 = Image.fromarray(bits).convert("1")
    out = decode_image(_save(img1, tmp_path / "one.png"))
    np.testing.assert_array_equal(out, _gray3(np.where(bits, 255, 0).astype(np.uint8)))


def _expected16(values: np.ndarray) -> np.ndarray:
    return np.round(values.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    v = np.array([[0, 1, 128, 129, 257], [32767, 32768, 40000, 65534, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(v), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I;16")
    out = decode_image(path)
    np.testing.assert_array_equal(out, _gray3(_expected16(v)))
    assert out[1, 4, 0] == 255 and out[1, 1, 0] == 128  # not clipped to 255 everywhere
    assert out[0, 2, 0] == 0  # 128/65535 of full scale is black, not mid-grey


def test_32bit_integer_mode_i_is_scaled_as_16bit(tmp_path: Path) -> None:
    v = np.array([[0, 300, 65535], [1000, 50000, 70000]], dtype=np.int32)
    path = _save(Image.fromarray(v), tmp_path / "i.tif")
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(decode_image(path), _gray3(_expected16(np.clip(v, 0, 65535))))


def test_palette_without_transparency(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    path = _save(pal, tmp_path / "p.png")
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(decode_image(path), np.asarray(pal.convert("RGB")))


def test_palette_with_transparency_is_composited_on_black(tmp_path: Path) -> None:
    rgb = RNG.integers(1, 256, (8, 8, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    transparent = int(np.asarray(pal)[0, 0])
    path = _save(pal, tmp_path / "pt.png", transparency=transparent)
    reopened = Image.open(path)
    assert reopened.mode == "P" and "transparency" in reopened.info
    expected = np.asarray(reopened.convert("RGBA").convert("RGBa"))[..., :3]
    out = decode_image(path)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[np.asarray(pal) == transparent], 0)


def test_rgba_composited_on_black_equals_premultiplied(tmp_path: Path) -> None:
    rgba = _rgba_array()
    path = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png")
    out = decode_image(path)
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(rgba).convert("RGBa"))[..., :3])
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(out[0, 1], rgba[0, 1, :3])
    manual = np.round(rgba[..., :3] * (rgba[..., 3:] / 255.0)).astype(np.uint8)
    np.testing.assert_array_equal(out, manual)


def test_la_and_pa_composited_on_black(tmp_path: Path) -> None:
    la = _rgba_array()[..., 2:]
    img = Image.fromarray(la, "LA")
    out = decode_image(_save(img, tmp_path / "la.png"))
    np.testing.assert_array_equal(out, _gray3(np.asarray(img.convert("La"))[..., 0]))
    # PA cannot be saved to PNG by Pillow; decode_image also accepts a PIL image.
    pal = Image.fromarray(RNG.integers(0, 256, (5, 4, 3), dtype=np.uint8)).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=8
    )
    pa = pal.convert("PA")
    alpha = RNG.integers(0, 256, (5, 4), dtype=np.uint8)
    pa.putalpha(Image.fromarray(alpha))
    assert pa.mode == "PA"
    expected = np.asarray(pa.convert("RGBA").convert("RGBa"))[..., :3]
    np.testing.assert_array_equal(decode_image(pa), expected)


def test_cmyk(tmp_path: Path) -> None:
    cmyk = Image.fromarray(RNG.integers(0, 256, (6, 6, 4), dtype=np.uint8), "CMYK")
    path = _save(cmyk, tmp_path / "c.tif")
    assert Image.open(path).mode == "CMYK"
    np.testing.assert_array_equal(decode_image(path), np.asarray(cmyk.convert("RGB")))


@pytest.mark.parametrize(("orientation", "turn"), [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, turn: int) -> None:
    rgb = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(Image.fromarray(rgb), tmp_path / "o.png", exif=exif)
    out = decode_image(path)
    np.testing.assert_array_equal(out, np.rot90(rgb, k=turn))  # 6: 90 degrees clockwise


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _assert_one_line(error: IpmixError, path: Path, *words: str) -> None:
    text = str(error)
    assert "\n" not in text
    assert text.startswith(str(path))
    for word in words:
        assert word in text


def test_truncated_jpeg_fails_at_decode_time(tmp_path: Path) -> None:
    data = _jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError) as info:
        decode_image(path)
    _assert_one_line(info.value, path, "truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_zero_byte_and_non_image_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DecodeError) as info:
        decode_image(empty)
    _assert_one_line(info.value, empty, "empty file")
    text = tmp_path / "notes.png"
    text.write_text("these are notes, not pixels\n")
    with pytest.raises(DecodeError) as info:
        decode_image(text)
    _assert_one_line(info.value, text, "not an image")
    missing = tmp_path / "nope.png"
    with pytest.raises(DecodeError) as info:
        decode_image(missing)
    _assert_one_line(info.value, missing, "no such file")


def test_bytes_errors_use_the_given_name() -> None:
    with pytest.raises(DecodeError, match=r"^photo\.jpg: truncated"):
        decode_image(_jpeg_bytes()[:300], name="photo.jpg")
