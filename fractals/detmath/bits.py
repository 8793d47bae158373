"""Exact operations on doubles: their bit words, and scaling by powers of two.

Everything else in ``fractals.detmath`` is built on these and on +, -, *, /, sqrt, each of which
IEEE 754 defines exactly, so results are the same bits on every CPU.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from numba.extending import register_jitable

_LOW_MASK = np.int64(0xFFFFFFFF)
_HIGH_MASK = np.int64(-4294967296)  # ~0xFFFFFFFF: keeps the sign, exponent and top 20 bits
_TWOM1000 = 2.0**-1000
_TWO1023 = 2.0**1023


@register_jitable(inline="always")
def _bits(x: float) -> np.int64:
    return np.float64(x).view(np.int64)


@register_jitable(inline="always")
def _double(b: np.int64) -> float:
    return np.int64(b).view(np.float64)


@register_jitable(inline="always")
def _high(x: float) -> np.int64:
    """fdlibm's signed 32-bit high word (sign, exponent, top 20 mantissa bits)."""
    return _bits(x) >> 32


@register_jitable(inline="always")
def _clear_low(x: float) -> float:
    """``x`` with its low 32 mantissa bits zeroed (fdlibm's ``SET_LOW_WORD(x, 0)``): a head
    with at most 21 significant bits, whose products with other short heads are exact."""
    return _double(_bits(x) & _HIGH_MASK)


@register_jitable(inline="always")
def _set_high(x: float, high: np.int64) -> float:
    """``x`` with its high word replaced by the low 32 bits of ``high``."""
    return _double((np.int64(high) << 32) | (_bits(x) & _LOW_MASK))


@nb.njit(cache=True, inline="always")
def _pow2(k: int) -> float:
    """``2.0 ** k`` for ``-1022 <= k <= 1023``, built from its exponent bits."""
    return _double(np.int64(k + 1023) << 52)


@nb.njit(cache=True, inline="always")
def _reciprocal(x: float) -> float:
    """``1 / x`` with IEEE's signed infinities for zero (numba's Python error model would
    raise ZeroDivisionError instead)."""
    if x == 0.0:
        return math.copysign(math.inf, x)
    return 1.0 / x


@nb.njit(cache=True, inline="always")
def _scale(y: float, k: int) -> float:
    """``y * 2**k`` rounded once, for ``y`` near 1 and ``-1075 <= k <= 1024``."""
    if k >= -1021:
        if k == 1024:
            return y * 2.0 * _TWO1023
        return y * _pow2(k)
    return y * _pow2(k + 1000) * _TWOM1000  # the first product is exact, the second rounds


_ROUNDER = 6755399441055744.0  # 1.5 * 2**52: (v + R) - R rounds v to an integer, half to even
_SPLIT = 134217729.0  # 2**27 + 1: Veltkamp's splitting constant


@nb.njit(cache=True, inline="always")
def two_prod(a: float, b: float) -> tuple[float, float]:
    """``a * b`` and its exact error without an FMA (Dekker, Veltkamp splitting)."""
    p = a * b
    t = _SPLIT * a
    ah = t - (t - a)
    al = a - ah
    t = _SPLIT * b
    bh = t - (t - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl
