"""The fused chaos-game renderer: point accounting, bounding box, clamping, patch stamps."""

from __future__ import annotations

import numpy as np
import pytest

from fractals import ifs, render, rng

SIZE = 48


def _layer(system: np.ndarray, key: int, size: int, points: int, patch: bool):
    counts = np.zeros((size + 2) ** 2, dtype=np.int32)
    graded = np.zeros(size * size, dtype=np.int32)
    peak, fill, mask, _ = render.render_layer(
        np.ascontiguousarray(system, dtype=np.float64),
        np.uint64(key),
        size,
        points,
        patch,
        False,
        counts,
        graded,
    )
    return graded.reshape(size, size), peak, fill, mask


def _system(k: int) -> np.ndarray:
    return ifs.sample_system_from_key(rng.stream_key(123, k))


def test_selection_table_matches_probabilities() -> None:
    p = np.array([0.5, 0.25, 0.2, 0.05])
    table = render.selection_table(p)
    counts = np.bincount(table, minlength=4)
    assert counts.sum() == render.SELECT_SIZE
    np.testing.assert_allclose(counts / render.SELECT_SIZE, p, atol=1.0 / render.SELECT_SIZE)
    # a tiny but non-zero probability keeps one entry; a zero one gets none
    table = render.selection_table(np.array([1.0 - 1e-9, 1e-9, 0.0]))
    counts = np.bincount(table, minlength=3)
    assert counts[1] == 1 and counts[2] == 0


@pytest.mark.parametrize("points", [1, 2, 3, 4, 5, 1001, 20_000])
def test_every_point_lands_exactly_once(points: int) -> None:
    counts = render.render_counts(_system(1), 99, SIZE, points)
    assert counts.sum() == points
    assert counts.min() >= 0


def test_window_is_the_bounding_box() -> None:
    for k in range(20):
        counts = render.render_counts(_system(k), k, SIZE, 5000)
        lit = counts > 0
        # the extreme points land on the first and last row and column
        assert lit[0].any() and lit[-1].any() and lit[:, 0].any() and lit[:, -1].any()


def test_render_is_a_function_of_its_inputs() -> None:
    s = _system(4)
    a, *_ = _layer(s, 5, SIZE, 3000, True)
    b, *_ = _layer(s, 5, SIZE, 3000, True)
    c, *_ = _layer(s, 6, SIZE, 3000, True)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_diverging_and_nan_systems_are_drawn_empty_not_out_of_bounds() -> None:
    expanding = np.array([[[3.0, 0.0, 1.0], [0.0, 3.0, 1.0]], [[0.0, 3.0, -1.0], [3.0, 0.0, 0.5]]])
    nan = np.array([[[0.5, 0.0, np.nan], [0.0, 0.5, 0.0]], [[0.5, 0.0, 0.2], [0.0, 0.5, 0.1]]])
    for system in (expanding, nan):
        graded, peak, fill, _ = _layer(system, 1, SIZE, 10_000, True)
        assert peak == 0 and fill == 0.0
        assert not graded.any()


def test_degenerate_extent_is_clamped_into_the_grid() -> None:
    # every map sends the plane to one point: zero-width box on both axes
    dot = np.array([[[0.0, 0.0, 0.3], [0.0, 0.0, -0.2]]] * 3)
    counts = render.render_counts(dot, 3, SIZE, 1000)
    assert counts.sum() == 1000
    assert counts[SIZE // 2, SIZE // 2] == 1000
    # a horizontal segment: zero height, full width
    line = np.array([[[0.5, 0.0, -0.5], [0.0, 0.0, 0.25]], [[0.5, 0.0, 0.5], [0.0, 0.0, 0.25]]])
    counts = render.render_counts(line, 3, SIZE, 4000)
    assert counts.sum() == 4000
    rows = np.nonzero(counts.sum(axis=1))[0]
    assert list(rows) == [SIZE // 2]
    assert counts[SIZE // 2, 0] > 0 and counts[SIZE // 2, -1] > 0
    # huge but finite coordinates
    far = np.array([[[0.5, 0.0, 1e300], [0.0, 0.5, -1e300]], [[0.5, 0.0, -1e300], [0.0, 0.5, 0]]])
    counts = render.render_counts(far, 3, SIZE, 1000)
    assert counts.sum() in (0, 1000)


def test_patch_mask_is_never_empty_and_covers_all_subsets() -> None:
    state = rng.new_state(17)
    seen = np.zeros(512, dtype=np.int64)
    for _ in range(20_000):
        m = render.patch_mask(state)
        assert 1 <= m <= 511
        seen[m] += 1
    assert seen[0] == 0
    assert np.count_nonzero(seen) == 511


def _explicit_stamp(counts: np.ndarray, mask: int) -> np.ndarray:
    """Per-point stamping, the reference's way: each hit adds to every offset in the mask."""
    size = counts.shape[0]
    out = np.zeros_like(counts)
    for r, c in zip(*np.nonzero(counts), strict=True):
        for bit in range(9):
            if mask >> bit & 1:
                rr, cc = r + bit // 3 - 1, c + bit % 3 - 1
                if 0 <= rr < size and 0 <= cc < size:
                    out[rr, cc] += counts[r, c]
    return out


def test_stamp_equals_per_point_stamping() -> None:
    gen = np.random.default_rng(0)
    size = 12
    hits = (gen.random((size, size)) < 0.3) * gen.integers(1, 5, (size, size))
    hits[0, 0] = 2  # corners exercise the dropped off-image stamps
    hits[-1, -1] = 3
    bordered = np.zeros((size + 2, size + 2), dtype=np.int32)
    bordered[1:-1, 1:-1] = hits
    for mask in (1, 16, 511, 0b101010101, 0b110000011, 256):
        out = np.zeros((size, size), dtype=np.int32)
        peak = render.stamp(bordered, mask, out)
        expected = _explicit_stamp(hits, mask)
        np.testing.assert_array_equal(out, expected)
        assert peak == expected.max()


def test_patch_render_is_the_stamped_plain_render() -> None:
    s = _system(8)
    plain, _, fill_plain, mask = _layer(s, 21, SIZE, 7000, False)
    patched, peak, fill_patch, mask2 = _layer(s, 21, SIZE, 7000, True)
    assert mask == mask2 and 1 <= mask <= 511
    assert fill_plain == fill_patch  # fill is measured on the point hits
    bordered = np.zeros((SIZE + 2, SIZE + 2), dtype=np.int32)
    bordered[1:-1, 1:-1] = plain
    np.testing.assert_array_equal(patched, _explicit_stamp(plain, mask))
    assert peak == patched.max()


def test_fill_rate_native_and_pooled() -> None:
    size = 40
    bordered = np.zeros((size + 2, size + 2), dtype=np.int32)
    bordered[1 : 1 + 10, 1 : 1 + 20] = 1
    assert render.fill_rate(bordered) == pytest.approx(200 / 1600)
    size = 512  # pooled 2 x 2 onto 256 x 256
    bordered = np.zeros((size + 2, size + 2), dtype=np.int32)
    bordered[1:-1:2, 1:-1:2] = 1  # one hit per 2 x 2 block: pooled grid fully lit
    assert render.fill_rate(bordered) == pytest.approx(1.0)
    bordered[:] = 0
    bordered[1 : 1 + 256, 1:-1] = 5  # top half
    assert render.fill_rate(bordered) == pytest.approx(0.5)


def test_graded_render_normalised() -> None:
    graded, fill = render.render_graded(_system(2), 4, SIZE, 5000, patch=True)
    assert graded.max() == pytest.approx(1.0)
    assert graded.min() >= 0.0
    assert 0.0 < fill <= 1.0


def _counts_with_orientation(system: np.ndarray, orient: int, size: int, points: int):
    maps = np.ascontiguousarray(system).reshape(-1, 6)
    table = render.selection_table(ifs.map_probabilities(system))
    x0, y0 = ifs.fixed_point(system, 0)
    state = rng.new_state(77)
    box = render.chaos_bounds(maps, table, state.copy(), points, x0, y0)
    counts = np.zeros((size + 2, size + 2), dtype=np.int32)
    render.chaos_counts(maps, table, state, points, x0, y0, *box[:4], orient, counts)
    assert not counts[0].any() and not counts[-1].any()  # the border stays empty
    assert not counts[:, 0].any() and not counts[:, -1].any()
    return counts[1:-1, 1:-1]


def test_orientation_flips_like_numpy() -> None:
    system = _system(12)
    plain = _counts_with_orientation(system, 0, SIZE, 6000)
    for orient in range(8):
        expected = plain.T if orient & 1 else plain
        if orient & 2:
            expected = expected[::-1]
        if orient & 4:
            expected = expected[:, ::-1]
        got = _counts_with_orientation(system, orient, SIZE, 6000)
        np.testing.assert_array_equal(got, expected)


def test_flips_option_only_reorients() -> None:
    system = _system(13)
    plain, *_ = _layer(system, 8, SIZE, 4000, False)
    counts = np.zeros((SIZE + 2) ** 2, dtype=np.int32)
    graded = np.zeros(SIZE * SIZE, dtype=np.int32)
    orients = set()
    for key in range(40):
        _, _, _, orient = render.render_layer(
            system, np.uint64(key), SIZE, 500, False, True, counts, graded
        )
        orients.add(orient)
        _, _, _, off = render.render_layer(
            system, np.uint64(key), SIZE, 500, False, False, counts, graded
        )
        assert off == 0
    assert orients == set(range(8))
    flipped = np.zeros_like(graded)
    render.render_layer(system, np.uint64(8), SIZE, 4000, False, True, counts, flipped)
    assert sorted(flipped) == sorted(plain.ravel())  # same hits, moved
