"""The SVD ("sigma factor") sampler: constraints checked independently with LAPACK."""

from __future__ import annotations

import numpy as np
import pytest

from fractals import ifs, rng


def _systems(count: int, seed: int = 11) -> list[np.ndarray]:
    return [ifs.sample_system(rng.new_state(seed, k)) for k in range(count)]


def test_sample_system_shape_and_map_count() -> None:
    systems = _systems(600)
    counts = {len(s) for s in systems}
    assert counts == {2, 3, 4}
    for s in systems:
        assert s.shape[1:] == (2, 3)
        assert s.dtype == np.float64
        assert np.all(np.isfinite(s))


def test_singular_values_within_bounds_and_sum_to_alpha_range() -> None:
    for s in _systems(500):
        n = len(s)
        sv = np.linalg.svd(s[:, :, :2], compute_uv=False)  # independent of our closed form
        assert np.all(sv <= 1.0 + 1e-9), "every map must be contractive"
        assert np.all(sv >= -1e-12)
        weighted = float((sv[:, 0] + 2.0 * sv[:, 1]).sum())
        assert (5 + n) / 2 - 1e-9 <= weighted <= (6 + n) / 2 + 1e-9
        assert np.all(np.abs(s[:, :, 2]) <= 1.0)


def test_sample_singular_values_exact_budget() -> None:
    state = rng.new_state(3)
    for n in (1, 2, 3, 4, 6):
        for alpha in np.linspace(0.0, 3.0 * n, 13):
            sv = ifs.sample_singular_values(state, n, float(alpha))
            assert sv.shape == (n, 2)
            assert np.all(sv[:, 0] <= 1.0 + 1e-12)
            assert np.all(sv[:, 0] >= sv[:, 1] - 1e-12)
            assert np.all(sv[:, 1] >= -1e-12)
            assert (sv[:, 0] + 2 * sv[:, 1]).sum() == pytest.approx(alpha, abs=1e-9)


def test_closed_form_singular_values_match_lapack() -> None:
    for s in _systems(100, seed=5):
        ours = ifs.singular_values(s)
        ref = np.linalg.svd(s[:, :, :2], compute_uv=False)
        np.testing.assert_allclose(ours, ref, atol=1e-7)


def test_probabilities_proportional_to_abs_det() -> None:
    for s in _systems(100):
        p = ifs.map_probabilities(s)
        det = np.abs(np.linalg.det(s[:, :, :2]))
        np.testing.assert_allclose(p, det / det.sum(), rtol=1e-9, atol=1e-12)
        assert p.sum() == pytest.approx(1.0)
    singular = np.zeros((3, 2, 3))
    np.testing.assert_allclose(ifs.map_probabilities(singular), [1 / 3] * 3)


def test_fixed_point_is_fixed() -> None:
    for s in _systems(50):
        x, y = ifs.fixed_point(s, 0)
        a = s[0, :, :2]
        b = s[0, :, 2]
        np.testing.assert_allclose(a @ np.array([x, y]) + b, [x, y], atol=1e-9)


def test_sampling_is_deterministic_per_key() -> None:
    a = ifs.sample_system_from_key(rng.stream_key(7, 1))
    b = ifs.sample_system_from_key(rng.stream_key(7, 1))
    c = ifs.sample_system_from_key(rng.stream_key(7, 2))
    assert np.array_equal(a, b)
    assert not (a.shape == c.shape and np.array_equal(a, c))


def test_jitter_scales_one_map_and_flags_expansion() -> None:
    state = rng.new_state(9)
    for s in _systems(200, seed=21):
        j, k, scale, ok = ifs.jitter_system(s, state)
        assert 0.8 <= scale < 1.1
        changed = [i for i in range(len(s)) if not np.array_equal(s[i], j[i])]
        assert changed in ([k], [])
        np.testing.assert_allclose(j[k], s[k] * scale)
        max_sv = np.linalg.svd(j[:, :, :2], compute_uv=False).max()
        if ok:
            assert max_sv <= 1.0 + 1e-9
        else:
            assert max_sv > 1.0 - 1e-9
    # a map with s1 = 1 scaled up must be rejected
    s = np.array([[[1.0, 0.0, 0.0], [0.0, 0.5, 0.0]]] * 2)
    rejected = 0
    for _ in range(50):
        _, _, scale, ok = ifs.jitter_system(s, state)
        rejected += not ok
        assert ok == (scale <= 1.0)
    assert rejected > 0
