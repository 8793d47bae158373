"""Pixel-level mixing rules, their weights, and the reference's float -> uint8 conversion."""

from __future__ import annotations

import decimal
import functools
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from fractals.rng import new_state
from ipmix_cli.augment.pixel_rules import (
    OVERFLOW_CLIP,
    OVERFLOW_WRAP,
    U8_TO_UNIT,
    draw_weights,
    mix_add,
    mix_multiply,
    mix_random_elems,
    mix_random_pixels,
    overflow_code,
    truncate_clip,
    truncate_wrap,
    unit_to_uint8,
)

F = np.float32


def _pair(seed: int, shape=(17, 23, 3)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random(shape, dtype=np.float32)
    b = rng.random(shape, dtype=np.float32)
    # include the edges, where multiply's clip matters
    a.flat[:5] = [0, 1, 0, 1, 0.5]
    b.flat[:5] = [0, 0, 1, 1, 0]
    return a, b


WEIGHTS = [(0.7, 0.2), (1.0, 0.0), (1.3, -0.4), (1.9, -0.99), (0.05, 0.95)]


@pytest.mark.parametrize(("wa", "wb"), WEIGHTS)
def test_add_matches_closed_form(wa: float, wb: float) -> None:
    a, b = _pair(1)
    wa32, wb32 = F(wa), F(wb)
    expected = ((wa32 * (a * F(2) - F(1)) + wb32 * (b * F(2) - F(1))) + F(1)) / F(2)
    got = mix_add(a, b, wa, wb)
    assert got.dtype == np.float32 and got.shape == a.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("wa", "wb"), WEIGHTS)
def test_multiply_matches_closed_form(wa: float, wb: float) -> None:
    a, b = _pair(2)
    wa32, wb32 = F(wa), F(wb)
    expected = ((a * F(2)) ** wa32) * (np.maximum(b * F(2), F(1e-37)) ** wb32) / F(2)
    got = mix_multiply(a, b, wa, wb)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


_CTX = decimal.Context(prec=34, Emin=-99999, Emax=99999)


@functools.cache
def _exact_pow32(x: float, y: float) -> np.float32:
    """The float32 nearest to the exact ``x ** y`` (ties to even), by decimal arithmetic."""
    if x == 0:
        return F(0.0)
    exact = _CTX.exp(_CTX.multiply(Decimal(y), _CTX.ln(Decimal(x))))
    f = F(float(exact))
    candidates = [np.nextafter(f, F(-np.inf)), f, np.nextafter(f, F(np.inf))]
    target = Fraction(exact)
    return min(
        candidates, key=lambda c: (abs(Fraction(float(c)) - target), int(c.view(np.int32)) & 1)
    )


@pytest.mark.parametrize(("wa", "wb"), WEIGHTS)
def test_multiply_is_exact_on_pixel_values(wa: float, wb: float) -> None:
    """On the 256 x 256 pixel-value pairs the patch kernel sees, the rule is the float32
    expression with correctly rounded powers, bit for bit (detmath's pow32; the patch kernel's
    tabulated powers are checked against the same oracle in test_patch.py)."""
    a = np.repeat(U8_TO_UNIT, 256).reshape(256, 256, 1)
    b = np.tile(U8_TO_UNIT, 256).reshape(256, 256, 1)
    wa32, wb32 = F(wa), F(wb)
    pa = np.array([_exact_pow32(float(v * F(2)), float(wa32)) for v in U8_TO_UNIT], F)
    pb = np.array([_exact_pow32(float(max(v * F(2), F(1e-37))), float(wb32)) for v in U8_TO_UNIT])
    expected = (pa[:, None] * pb.astype(F)[None, :] / F(2)).reshape(256, 256, 1)
    assert np.array_equal(mix_multiply(a, b, wa, wb), expected)


def test_multiply_clip_keeps_zero_source_finite() -> None:
    a = np.full((1, 1, 3), 0.5, np.float32)
    b = np.zeros((1, 1, 3), np.float32)
    got = mix_multiply(a, b, 1.5, -0.5)
    # 1 ** 1.5 * (1e-37) ** -0.5 / 2 ~ 1.58e18: finite, huge (the wrap maps it to 0)
    assert np.all(np.isfinite(got)) and np.all(got > 1e17)
    assert np.all(unit_to_uint8(got, OVERFLOW_WRAP) == 0)


def test_random_pixels_mask_is_shared_by_channels() -> None:
    rng = np.random.default_rng(3)
    a = rng.random((64, 64, 3), dtype=np.float32)
    b = rng.random((64, 64, 3), dtype=np.float32) + F(2)  # disjoint ranges: origin is visible
    out, q = mix_random_pixels(a, b, new_state(5, 1))
    from_a = out < 2
    assert np.all(np.where(from_a, out == a, out == b))
    # the same decision for the three channels of a pixel
    assert np.all(from_a.all(axis=2) | (~from_a).all(axis=2))
    kept = from_a[:, :, 0].mean()
    sd = np.sqrt(q * (1 - q) / 4096)
    assert abs(kept - q) < 5 * sd + 1e-9


def test_random_elems_mask_is_per_element() -> None:
    rng = np.random.default_rng(4)
    a = rng.random((64, 64, 3), dtype=np.float32)
    b = rng.random((64, 64, 3), dtype=np.float32) + F(2)
    state = new_state(6, 2)
    for _ in range(5):  # find a q not too close to 0 or 1 so both outcomes occur
        out, q = mix_random_elems(a, b, state)
        if 0.2 < q < 0.8:
            break
    from_a = out < 2
    assert np.all(np.where(from_a, out == a, out == b))
    mixed_pixels = ~(from_a.all(axis=2) | (~from_a).all(axis=2))
    assert mixed_pixels.mean() > 0.3  # channels decided independently
    sd = np.sqrt(q * (1 - q) / from_a.size)
    assert abs(from_a.mean() - q) < 5 * sd


def test_random_rules_q_is_uniform() -> None:
    a = np.zeros((2, 2, 3), np.float32)
    state = new_state(7)
    qs = [mix_random_pixels(a, a, state)[1] for _ in range(3000)]
    assert stats.kstest(qs, "uniform").pvalue > 1e-3


# ------------------------------------------------------------------------------ conversion
def test_wrap_reference_values() -> None:
    assert truncate_wrap(F(-25.5)) == 231
    assert truncate_wrap(F(331.5)) == 75
    assert truncate_wrap(F(255.9)) == 255
    assert truncate_wrap(F(256.0)) == 0
    assert truncate_wrap(F(-0.5)) == 0  # truncation toward zero
    assert truncate_wrap(F(-1.0)) == 255
    for bad in (np.nan, np.inf, -np.inf, 1e30, -1e30, 3e9):
        assert truncate_wrap(F(bad)) == 0, bad


def test_unit_to_uint8_wrap_and_truncation() -> None:
    values = np.array([-0.1, 1.3, 0.999, 0.5, 0.0, 1.0, np.nan, np.inf, 1e30], np.float32)
    got = unit_to_uint8(values, OVERFLOW_WRAP)
    # -0.1*255 = -25.5 -> 231; 1.3*255 = 331.5 -> 75; 0.999*255 = 254.7 -> 254 (not 255)
    assert got.tolist() == [231, 75, 254, 127, 0, 255, 0, 0, 0]


def test_unit_to_uint8_clip() -> None:
    values = np.array([-0.1, 1.3, 0.999, 0.5, np.nan, np.inf, -np.inf, 1e30], np.float32)
    got = unit_to_uint8(values, OVERFLOW_CLIP)
    assert got.tolist() == [0, 255, 254, 127, 0, 255, 0, 255]
    assert truncate_clip(F(-25.5)) == 0 and truncate_clip(F(331.5)) == 255


def test_uint8_round_trip_is_exact() -> None:
    # float32(v / 255) * 255 truncates back to v: untouched pixels survive a patch mix.
    assert np.array_equal(unit_to_uint8(U8_TO_UNIT, OVERFLOW_WRAP), np.arange(256))
    assert np.array_equal(U8_TO_UNIT, np.arange(256, dtype=np.float32) / F(255))


def test_unit_to_uint8_matches_numpy_wrap_on_random_values() -> None:
    rng = np.random.default_rng(8)
    v = (rng.random(20000, dtype=np.float32) * F(6) - F(3)).astype(np.float32)
    scaled = v * F(255)
    expected = (np.trunc(scaled).astype(np.int64) & 255).astype(np.uint8)
    assert np.array_equal(unit_to_uint8(v, OVERFLOW_WRAP), expected)
    expected_clip = np.clip(np.trunc(scaled), 0, 255).astype(np.uint8)
    assert np.array_equal(unit_to_uint8(v, OVERFLOW_CLIP), expected_clip)


def test_overflow_code() -> None:
    assert overflow_code("wrap") == OVERFLOW_WRAP and overflow_code("clip") == OVERFLOW_CLIP
    with pytest.raises(ValueError):
        overflow_code("saturate")


# --------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("beta", [3.0, 4.0])
def test_weights_branches_and_distributions(beta: float) -> None:
    state = new_state(11, int(beta))
    draws = np.array([draw_weights(state, beta) for _ in range(6000)], dtype=np.float64)
    wa, wb, branch = draws[:, 0], draws[:, 1], draws[:, 2].astype(int)
    assert stats.binomtest(int((branch == 0).sum()), len(branch), 0.5).pvalue > 1e-3
    b0, b1 = branch == 0, branch == 1
    assert stats.kstest(wa[b0], stats.beta(beta, 1).cdf).pvalue > 1e-3
    assert stats.kstest(wb[b0], stats.beta(1, beta).cdf).pvalue > 1e-3
    assert stats.kstest(wa[b1] - 1, stats.beta(1, beta).cdf).pvalue > 1e-3
    assert stats.kstest(-wb[b1], stats.beta(1, beta).cdf).pvalue > 1e-3
    # the two Beta(1, beta) draws of branch 1 are independent (not one draw reused)
    assert abs(stats.pearsonr(wa[b1], wb[b1]).statistic) < 0.1


# --------------------------------------------------------------------------------------------
# Loading a mixing set's pictures on threads
# --------------------------------------------------------------------------------------------


def _bank_of_pngs(folder, count: int) -> list[np.ndarray]:
    from PIL import Image

    rng = np.random.default_rng(11)
    pictures = []
    for i in range(count):
        picture = rng.integers(0, 256, (5 + i % 4, 6 + i % 3, 3), dtype=np.uint8)
        Image.fromarray(picture).save(folder / f"{i:05d}.png")
        pictures.append(picture)
    return pictures


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_threaded_decoding_keeps_the_pictures_and_their_order(tmp_path, threads: int) -> None:
    from ipmix_cli.sources.mixing_pictures import decode_pictures, open_mixing_set

    pictures = _bank_of_pngs(tmp_path, 40)
    files = sorted(tmp_path.glob("*.png"))
    got = decode_pictures(files, threads=threads)
    assert len(got) == len(pictures)
    for a, b in zip(got, pictures, strict=True):
        assert a.dtype == np.uint8 and a.flags.c_contiguous
        np.testing.assert_array_equal(a, b)
    for a, b in zip(open_mixing_set(tmp_path), pictures, strict=True):
        np.testing.assert_array_equal(a, b)


def test_threaded_decoding_names_the_first_broken_picture(tmp_path, monkeypatch) -> None:
    """Two broken pictures, the earlier one slower to fail: the error is still the earlier
    one's, a one-line message naming it, whatever the threads' timing."""
    import threading
    import time

    from ipmix_cli.errors import DecodeError
    from ipmix_cli.sources import mixing_pictures
    from ipmix_cli.sources.mixing_pictures import open_mixing_set

    _bank_of_pngs(tmp_path, 40)
    first, later = tmp_path / "00005.png", tmp_path / "00030.png"
    first.write_bytes(b"not a png")
    later.write_bytes(b"")
    decode, later_failed = mixing_pictures.decode_image, threading.Event()

    def slow_first(path, **kwargs):
        if path == first:
            later_failed.wait(5)  # the later picture's error exists before this one's
            time.sleep(0.05)
        try:
            return decode(path, **kwargs)
        finally:
            if path == later:
                later_failed.set()

    monkeypatch.setattr(mixing_pictures, "decode_image", slow_first)
    monkeypatch.setattr(mixing_pictures, "available_cores", lambda: 4)
    with pytest.raises(DecodeError) as info:
        open_mixing_set(tmp_path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(first)) and "not an image" in text
