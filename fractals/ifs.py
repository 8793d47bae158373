"""Sampling iterated function systems (IFS) with the SVD ("sigma factor") parameterisation.

A system is ``n`` affine maps stored as an ``(n, 2, 3)`` float64 array: map ``k`` sends
``(x, y)`` to ``(a x + b y + e, c x + d y + f)`` with ``system[k] = [[a, b, e], [c, d, f]]``.

Why the SVD parameterisation: sampling the six coefficients uniformly (FractalDB) produces
mostly non-contractive systems (which blow up) or systems that collapse to a dot, so FractalDB
needs an expensive search. Writing each 2 x 2 part as ``U diag(s1, s2) V`` with rotations ``U``,
``V`` and constraining the weighted sum of singular values ``sum_k (s1_k + 2 s2_k) = alpha``
(Anderson & Farrell's "sigma factor") makes every map contractive by construction and puts the
attractor's "size" in a band where it is neither a dot nor a filled square, so almost every
sample is usable.

Everything here is numba-jitted and draws from a :mod:`fractals.rng` stream so that a system is
a pure function of its stream key, and the whole image pipeline can run without Python objects.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from fractals import detmath, rng

MIN_MAPS = 2
MAX_MAPS = 4
JITTER_LOW = 0.8
JITTER_HIGH = 1.1


@nb.njit(cache=True)
def sample_singular_values(state: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Draw ``n`` pairs ``1 >= s1 >= s2 >= 0`` with ``sum(s1 + 2 s2) == alpha``.

    Pairs are drawn one at a time from the interval that keeps the *remaining* budget
    reachable: after this pair, the others can add at most 3 each (s1 = s2 = 1) and at least 0,
    so this pair must contribute between ``alpha_left - 3 * (maps left after it)`` and
    ``alpha_left``. The last pair takes exactly what is left, choosing ``s2`` so that ``s1``
    stays in ``[s2, 1]``. Requires ``0 <= alpha <= 3 n``.
    """
    out = np.empty((n, 2))
    p = alpha  # budget still to spend
    for i in range(n - 1):
        q = p - 3.0 * (n - 1 - i)  # least this pair must take so the rest can finish
        s1 = rng.uniform_range(state, max(0.0, q / 3.0), min(1.0, p))
        s2 = rng.uniform_range(state, max(0.0, (q - s1) / 2.0), min(s1, (p - s1) / 2.0))
        p -= s1 + 2.0 * s2
        out[i, 0] = s1
        out[i, 1] = s2
    p = max(p, 0.0)
    s2 = rng.uniform_range(state, max(0.0, (p - 1.0) / 2.0), p / 3.0)
    out[n - 1, 0] = p - 2.0 * s2
    out[n - 1, 1] = s2
    return out


@nb.njit(cache=True)
def _rotation_with_flip(state: np.ndarray) -> tuple[float, float, float, float]:
    """A random rotation (angle U(-pi, pi)) times a random sign flip of each basis vector,
    returned as the four entries of the 2 x 2 matrix ``R(theta) @ diag(f1, f2)``."""
    theta = rng.uniform_range(state, -math.pi, math.pi)
    f1 = 1.0 if rng.coin(state) else -1.0
    f2 = 1.0 if rng.coin(state) else -1.0
    c = detmath.cos(theta)  # not libm: its last bit differs between CPUs
    s = detmath.sin(theta)
    return c * f1, -s * f2, s * f1, c * f2


@nb.njit(cache=True)
def sample_system(state: np.ndarray) -> np.ndarray:
    """Sample one system from ``state``: n uniform in {2, 3, 4}, alpha ~ U((5+n)/2, (6+n)/2),
    singular values by :func:`sample_singular_values`, each map ``U diag(s1, s2) V`` with
    random rotation-and-flip ``U`` and ``V``, translations U(-1, 1).

    Draw order (part of the reproducibility contract): n, alpha, the singular values, then per
    map U, V and the two translations.
    """
    n = rng.randint(state, MIN_MAPS, MAX_MAPS)
    alpha = rng.uniform_range(state, (5.0 + n) / 2.0, (6.0 + n) / 2.0)
    sv = sample_singular_values(state, n, alpha)
    system = np.empty((n, 2, 3))
    for k in range(n):
        u00, u01, u10, u11 = _rotation_with_flip(state)
        v00, v01, v10, v11 = _rotation_with_flip(state)
        s1 = sv[k, 0]
        s2 = sv[k, 1]
        # (U diag(s1, s2)) V
        a00 = u00 * s1
        a01 = u01 * s2
        a10 = u10 * s1
        a11 = u11 * s2
        system[k, 0, 0] = a00 * v00 + a01 * v10
        system[k, 0, 1] = a00 * v01 + a01 * v11
        system[k, 1, 0] = a10 * v00 + a11 * v10
        system[k, 1, 1] = a10 * v01 + a11 * v11
        system[k, 0, 2] = rng.uniform_range(state, -1.0, 1.0)
        system[k, 1, 2] = rng.uniform_range(state, -1.0, 1.0)
    return system


@nb.njit(cache=True)
def singular_values(system: np.ndarray) -> np.ndarray:
    """Singular values ``(s1, s2)``, ``s1 >= s2``, of each map's 2 x 2 part, in closed form
    (cheaper than a LAPACK call per map inside the jitter loop)."""
    n = system.shape[0]
    out = np.empty((n, 2))
    for k in range(n):
        a = system[k, 0, 0]
        b = system[k, 0, 1]
        c = system[k, 1, 0]
        d = system[k, 1, 1]
        frob = a * a + b * b + c * c + d * d
        det = a * d - b * c
        disc = math.sqrt(max(frob * frob - 4.0 * det * det, 0.0))
        out[k, 0] = math.sqrt(max((frob + disc) / 2.0, 0.0))
        out[k, 1] = math.sqrt(max((frob - disc) / 2.0, 0.0))
    return out


@nb.njit(cache=True)
def map_probabilities(system: np.ndarray) -> np.ndarray:
    """Selection probability of each map, proportional to ``|det|`` of its 2 x 2 part: the
    chaos game then spends points in proportion to the area each map covers, which gives an
    evenly sampled attractor. Falls back to uniform if every map is singular."""
    n = system.shape[0]
    p = np.empty(n)
    total = 0.0
    for k in range(n):
        p[k] = abs(system[k, 0, 0] * system[k, 1, 1] - system[k, 0, 1] * system[k, 1, 0])
        total += p[k]
    if not (total > 0.0 and math.isfinite(total)):
        p[:] = 1.0 / n
        return p
    for k in range(n):
        p[k] /= total
    return p


@nb.njit(cache=True)
def fixed_point(system: np.ndarray, k: int) -> tuple[float, float]:
    """The fixed point of map ``k``, the solution of ``(I - A) v = b``. It lies on the
    attractor, so a chaos game started there needs no burn-in. If ``I - A`` is singular (a
    singular value of exactly 1 along an eigen-direction) the translation is used instead."""
    a = system[k, 0, 0]
    b = system[k, 0, 1]
    c = system[k, 1, 0]
    d = system[k, 1, 1]
    e = system[k, 0, 2]
    f = system[k, 1, 2]
    det = (1.0 - a) * (1.0 - d) - b * c
    if abs(det) < 1e-12:
        return e, f
    x = ((1.0 - d) * e + b * f) / det
    y = (c * e + (1.0 - a) * f) / det
    return x, y


@nb.njit(cache=True)
def jitter_system(system: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, int, float, bool]:
    """One jittered instance of ``system``: a random map (2 x 2 part and translation) scaled
    by U(0.8, 1.1). Scaling multiplies that map's singular values, so factors above 1 can break
    contractivity; ``ok`` is False when any singular value then exceeds 1 and the caller draws
    again. Returns ``(new_system, map_index, scale, ok)``."""
    n = system.shape[0]
    k = rng.randint(state, 0, n - 1)
    scale = rng.uniform_range(state, JITTER_LOW, JITTER_HIGH)
    out = system.copy()
    for r in range(2):
        for c in range(3):
            out[k, r, c] *= scale
    sv = singular_values(out)
    ok = True
    for i in range(n):
        if sv[i, 0] > 1.0:
            ok = False
    return out, k, scale, ok


def sample_system_from_key(key: int) -> np.ndarray:
    """Python convenience: the system drawn from a fresh stream whose state is ``key``."""
    state = np.array([key & rng.MASK64], dtype=np.uint64)
    return sample_system(state)
