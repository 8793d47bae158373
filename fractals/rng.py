"""Counter-keyed random numbers usable inside numba kernels.

Every random draw in ipmix (fractal systems, chaos-game steps, IPMix recipes) comes from a
SplitMix64 stream whose starting state is a pure function of a root seed and a small tuple of
integers (image index, source index, copy index, view...). Output bytes therefore depend only on
those keys, never on how work is split across workers, batches or resumed runs.

SplitMix64 is used rather than numpy's ``SeedSequence``/``Generator`` because deriving a numpy
generator costs ~20 µs in Python, which is a large share of a 150 µs per-image budget, and
because the stream must be advanced from inside jitted code. SplitMix64 passes BigCrush, needs
one 64-bit word of state, and its key derivation is a few multiplies.

A stream's state lives in a one-element ``uint64`` array so jitted callees can advance it.
Draws that need a logarithm, a power or a cosine take them from :mod:`fractals.detmath`, so a
stream gives the same floats on every CPU, not only the same integers.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from fractals import detmath

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53

MASK64 = (1 << 64) - 1


@nb.njit(cache=True, inline="always")
def mix64(z: np.uint64) -> np.uint64:
    """SplitMix64's output finaliser: a bijective avalanche of one 64-bit word."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@nb.njit(cache=True, inline="always")
def next_u64(state: np.ndarray) -> np.uint64:
    """Advance ``state`` (uint64[1]) and return the next 64-bit output."""
    s = state[0] + _GOLDEN
    state[0] = s
    return mix64(s)


@nb.njit(cache=True, inline="always")
def uniform_bits_at(s0: np.uint64, k: np.uint64) -> np.uint64:
    """The 53 random bits of the ``k``-th draw (``k >= 1``) of a stream whose state is ``s0``
    now: ``uniform`` would return them times 2**-53. SplitMix64 is a counter, so a kernel can
    compute many draws side by side (vectorised) and then move the state on by their number
    with :func:`skip`; the draws and the final state are those of the one-by-one calls."""
    return mix64(s0 + k * _GOLDEN) >> _S11


@nb.njit(cache=True, inline="always")
def skip(state: np.ndarray, n: np.uint64) -> None:
    """Advance ``state`` past ``n`` draws (see :func:`uniform_bits_at`)."""
    state[0] = state[0] + n * _GOLDEN


UNIFORM_ONE = 9007199254740992.0  # 2**53: uniform() is (53 random bits) / UNIFORM_ONE


@nb.njit(cache=True, inline="always")
def uniform(state: np.ndarray) -> float:
    """A float in [0, 1) with 53 random bits."""
    return float(next_u64(state) >> _S11) * _INV53


@nb.njit(cache=True, inline="always")
def uniform_range(state: np.ndarray, low: float, high: float) -> float:
    """A float in [low, high), the analogue of ``np.random.uniform(low, high)``."""
    return low + (high - low) * uniform(state)


@nb.njit(cache=True, inline="always")
def randint(state: np.ndarray, low: int, high: int) -> int:
    """An integer in [low, high], both ends included (Lemire-free modulo: the bias is below
    2**-40 for the small ranges used here)."""
    span = np.uint64(high - low + 1)
    return low + np.int64(next_u64(state) % span)


@nb.njit(cache=True, inline="always")
def coin(state: np.ndarray) -> bool:
    """True with probability 1/2."""
    return (next_u64(state) >> np.uint64(63)) == np.uint64(1)


@nb.njit(cache=True, inline="always")
def exponential(state: np.ndarray) -> float:
    """A standard exponential draw (used to build Dirichlet(1, ..., 1) weights). The
    logarithm is :mod:`fractals.detmath`'s, not libm's, so the draw is the same on every CPU."""
    return -detmath.log(1.0 - uniform(state))


@nb.njit(cache=True, inline="always")
def beta_a1(state: np.ndarray, a: float) -> float:
    """Beta(a, 1) by inversion: its CDF is x**a (the power is :func:`fractals.detmath.pow`)."""
    return detmath.pow(1.0 - uniform(state), 1.0 / a)


@nb.njit(cache=True, inline="always")
def beta_1b(state: np.ndarray, b: float) -> float:
    """Beta(1, b) by inversion: 1 - Beta(b, 1)."""
    return 1.0 - beta_a1(state, b)


@nb.njit(cache=True, inline="always")
def normal(state: np.ndarray) -> float:
    """A standard normal draw (Box-Muller, one of the pair; detmath's log and cos)."""
    u1 = 1.0 - uniform(state)
    u2 = uniform(state)
    return math.sqrt(-2.0 * detmath.log(u1)) * detmath.cos(2.0 * math.pi * u2)


def _mix64_py(z: int) -> int:
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def stream_key(seed: int, *keys: int) -> int:
    """Derive the 64-bit starting state of the stream named by ``(seed, *keys)``.

    Each key is folded in with a distinct multiplier and a full avalanche, so (1, 2) and (2, 1)
    or (1,) and (1, 0) give unrelated streams. Negative or huge seeds are reduced mod 2**64.
    """
    h = _mix64_py(seed ^ 0x6A09E667F3BCC909)
    for position, key in enumerate(keys, start=1):
        h = _mix64_py(h ^ _mix64_py((key & MASK64) + position * 0x9E3779B97F4A7C15))
    return h


@nb.njit(cache=True)
def stream_key_nb(seed: np.uint64, k1: np.int64, k2: np.int64, k3: np.int64) -> np.uint64:
    """``stream_key(seed, k1, k2, k3)`` inside jitted code (three keys: the engine's
    source, copy and view), so a batch kernel can seed each sample without Python."""
    h = mix64(seed ^ np.uint64(0x6A09E667F3BCC909))
    h = mix64(h ^ mix64(np.uint64(k1) + np.uint64(1) * _GOLDEN))
    h = mix64(h ^ mix64(np.uint64(k2) + np.uint64(2) * _GOLDEN))
    h = mix64(h ^ mix64(np.uint64(k3) + np.uint64(3) * _GOLDEN))
    return h


def new_state(seed: int, *keys: int) -> np.ndarray:
    """A fresh stream state array for ``(seed, *keys)``."""
    return np.array([stream_key(seed, *keys)], dtype=np.uint64)
