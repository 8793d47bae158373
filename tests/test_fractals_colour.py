"""Colour (HSV against colorsys), painting, and the plasma background."""

from __future__ import annotations

import colorsys

import numpy as np

from fractals import background, colour, rng


def test_hsv_to_rgb_matches_colorsys() -> None:
    gen = np.random.default_rng(1)
    samples = list(gen.random((3000, 3)))
    # sector boundaries and extremes
    samples += [(h / 6.0, s, v) for h in range(7) for s in (0.0, 0.5, 1.0) for v in (0.0, 1.0)]
    samples += [(1.0 - 1e-12, 1.0, 1.0), (0.999999, 0.3, 0.5)]
    for h, s, v in samples:
        ours = colour.hsv_to_rgb(h, s, v)
        ref = colorsys.hsv_to_rgb(h, s, v)
        np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_hue_wraps_over_the_full_circle() -> None:
    for h in (0.1, 0.45, 0.9):
        np.testing.assert_allclose(
            colour.hsv_to_rgb(h + 1.0, 0.7, 0.8), colour.hsv_to_rgb(h, 0.7, 0.8), atol=1e-12
        )
        np.testing.assert_allclose(
            colour.hsv_to_rgb(h - 2.0, 0.7, 0.8), colour.hsv_to_rgb(h, 0.7, 0.8), atol=1e-12
        )


def test_hue_table_within_one_level_of_exact() -> None:
    table = colour.hue_table(0.6, 0.9)
    assert table.shape == (colour.HUE_BINS, 3) and table.dtype == np.uint8
    for i in range(0, colour.HUE_BINS, 7):
        h = (i + 0.5) / colour.HUE_BINS
        exact = np.array(colorsys.hsv_to_rgb(h, 0.6, 0.9)) * 255
        assert np.abs(table[i] - exact).max() <= 0.5 + 1e-9
        for edge in (i / colour.HUE_BINS, (i + 1) / colour.HUE_BINS - 1e-9):
            exact = np.array(colorsys.hsv_to_rgb(edge, 0.6, 0.9)) * 255
            assert np.abs(table[i] - exact).max() <= 1.5


def test_colour_draws_in_range() -> None:
    state = rng.new_state(4)
    draws = np.array([colour.draw_colour(state) for _ in range(2000)])
    assert draws[:, 0].min() >= 0 and draws[:, 0].max() < 1
    assert draws[:, 1].min() >= 0.3 and draws[:, 1].max() < 1
    assert draws[:, 2].min() >= 0.5 and draws[:, 2].max() < 1
    assert draws[:, 0].max() - draws[:, 0].min() > 0.9  # full hue circle


def test_paint_colours_and_transparency() -> None:
    graded = np.zeros((4, 4), dtype=np.int32)
    graded[1, 2] = 10  # peak: hue = shift + 1 -> wraps to shift
    graded[2, 1] = 5  # hue = shift + 0.5
    out = np.full((4, 4, 3), 7, dtype=np.uint8)
    table = colour.hue_table(0.8, 0.9)
    colour.paint(out, graded, 10, 0, 0, 0.1, table)
    unlit = np.ones((4, 4), dtype=bool)
    unlit[1, 2] = unlit[2, 1] = False
    assert (out[unlit] == 7).all()
    for (r, c), h in (((1, 2), 0.1), ((2, 1), 0.6)):
        exact = np.array(colorsys.hsv_to_rgb(h, 0.8, 0.9)) * 255
        assert np.abs(out[r, c] - exact).max() <= 1.5


def test_paint_clips_boxes_hanging_off_the_image() -> None:
    graded = np.ones((6, 6), dtype=np.int32)
    out = np.zeros((8, 8, 3), dtype=np.uint8)
    n = colour.paint(out, graded, 1, -2, 5, 0.0, colour.hue_table(1.0, 1.0))
    assert n == 4 * 3
    lit = out.any(axis=2)
    assert lit[:4, 5:].all() and lit.sum() == 12


def test_plasma_deterministic_varied_and_resolution_consistent() -> None:
    a = np.empty((64, 64, 3), dtype=np.uint8)
    b = np.empty((64, 64, 3), dtype=np.uint8)
    background.plasma(a, rng.new_state(5))
    background.plasma(b, rng.new_state(5))
    assert np.array_equal(a, b)
    assert a.reshape(-1, 3).std(axis=0).max() > 3
    background.plasma(b, rng.new_state(6))
    assert not np.array_equal(a, b)
    # the 128 px plasma restricted to even pixels is (nearly) the 64 px one
    big = np.empty((128, 128, 3), dtype=np.uint8)
    background.plasma(big, rng.new_state(5))
    diff = np.abs(big[::2, ::2].astype(int) - a.astype(int))
    assert np.median(diff) <= 2
    # a non-power-of-two size samples the same field
    odd = np.empty((100, 100, 3), dtype=np.uint8)
    background.plasma(odd, rng.new_state(5))
    assert odd.reshape(-1, 3).std(axis=0).max() > 3


def test_diamond_square_coarse_levels_shared_across_sizes() -> None:
    small = background.diamond_square(rng.new_state(8), 4, 0.6)
    large = background.diamond_square(rng.new_state(8), 6, 0.6)
    assert small.shape == (17, 17) and large.shape == (65, 65)
    np.testing.assert_array_equal(large[::4, ::4], small)


def test_black_background() -> None:
    out = np.full((5, 5, 3), 9, dtype=np.uint8)
    background.black(out)
    assert not out.any()


def test_fused_background_and_fractal_pass_matches_two_passes() -> None:
    gen = np.random.default_rng(3)
    size = 32
    graded = ((gen.random((size, size)) < 0.3) * gen.integers(1, 40, (size, size))).astype(np.int32)
    field, field_table, lo, scale = background.plasma_field(rng.new_state(2), size)
    table = colour.hue_table(0.7, 0.6)
    two = np.empty((size, size, 3), dtype=np.uint8)
    background.paint_field(two, field, field_table, lo, scale)
    n_two = colour.paint(two, graded, int(graded.max()), 0, 0, 0.6, table)
    one = np.empty_like(two)
    n_one = colour.paint_over_field(
        one, graded, int(graded.max()), 0.6, table, field, field_table, lo, scale
    )
    np.testing.assert_array_equal(one, two)
    assert n_one == n_two == np.count_nonzero(graded)
    # and plasma() is the field painted
    direct = np.empty_like(two)
    background.plasma(direct, rng.new_state(2))
    background.paint_field(two, field, field_table, lo, scale)
    np.testing.assert_array_equal(direct, two)
