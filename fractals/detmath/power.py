"""``pow`` (fdlibm 5.3's e_pow.c with a table-driven 2**z), the float32 power of the multiply
rule (``pow32``) and the per-patch power table built from ``log2_parts``."""

from __future__ import annotations

import decimal
import math

import numba as nb
import numpy as np
from numba.extending import register_jitable

from fractals.detmath.bits import (
    _LOW_MASK,
    _ROUNDER,
    _bits,
    _clear_low,
    _high,
    _reciprocal,
    _scale,
    _set_high,
)

# ----------------------------------------------------------------------------------- pow

_DP_H1 = 5.84962487220764160156e-01  # 0x3FE2B803 40000000: head of log2(1.5)
_DP_L1 = 1.35003920212974897128e-08  # 0x3E4CFDEB 43CFD006: its tail
_TWO53 = 9007199254740992.0
_L1 = 5.99999999999994648725e-01  # 0x3FE33333 33333303
_L2 = 4.28571428578550184252e-01  # 0x3FDB6DB6 DB6FABFF
_L3 = 3.33333329818377432918e-01  # 0x3FD55555 518F264D
_L4 = 2.72728123808534006489e-01  # 0x3FD17460 A91D4101
_L5 = 2.30660745775561754067e-01  # 0x3FCD864A 93C9DB65
_L6 = 2.06975017800338417784e-01  # 0x3FCA7E28 4A454EEF
_OVT = 8.0085662595372944372e-17  # -(1024 - log2(ovfl + 0.5 ulp))
_CP = 9.61796693925975554329e-01  # 0x3FEEC709 DC3A03FD = 2 / (3 ln2)
_CP_H = 9.61796700954437255859e-01  # 0x3FEEC709 E0000000
_CP_L = -7.02846165095275826516e-09  # 0xBE3E2FE0 145B01F5
_IVLN2 = 1.44269504088896338700e00  # 0x3FF71547 652B82FE
_IVLN2_H = 1.44269502162933349609e00  # 0x3FF71547 60000000
_IVLN2_L = 1.92596299112661746887e-08  # 0x3E54AE0B F85DDF44
_THRD = 3.3333333333333331e-01
_NEG_1075_HIGH = -0x3F6F3400  # 0xC090CC00 as a signed 32-bit word: the high word of -1075
_TWO31 = 2147483648.0


def _exp2_constants() -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """``2**(j/64)`` for j < 64 as double-doubles (head correctly rounded, tail the rounded
    rest) and the Taylor coefficients ``ln2**i / i!`` of ``2**r - 1``, from 40-digit decimal
    arithmetic: libmpdec is integer arithmetic, so the tables are the same everywhere (and
    ``tests/test_detmath.py`` checks them). About 2 ms, once, at import."""
    ctx = decimal.Context(prec=40)
    ln2 = ctx.ln(decimal.Decimal(2))
    hi = np.empty(_EXP2_N)
    lo = np.empty(_EXP2_N)
    for j in range(_EXP2_N):
        v = ctx.exp(ctx.divide(ctx.multiply(ln2, j), _EXP2_N))
        hi[j] = float(v)
        lo[j] = float(ctx.subtract(v, decimal.Decimal(hi[j])))
    coefficients = []
    term = decimal.Decimal(1)
    for i in range(1, 7):
        term = ctx.divide(ctx.multiply(term, ln2), i)
        coefficients.append(float(term))
    return hi, lo, tuple(coefficients)


_EXP2_N = 64
_EXP2_HI, _EXP2_LO, (_E1, _E2, _E3, _E4, _E5, _E6) = _exp2_constants()


@register_jitable(inline="always")
def log2_parts(ax: float) -> tuple[float, float]:
    """``(t1, t2)`` with ``t1 + t2 = log2(ax)`` to about 64 bits, ``t1`` a 21-bit head, for a
    positive finite ``ax`` (fdlibm e_pow.c's logarithm: ``ax / 2**n`` reduced about 1 or 1.5,
    ``s = (x - b) / (x + b)`` in two parts, a degree-12 polynomial in ``s``).

    It is the part of :func:`pow` that depends on the base alone, so a caller raising a fixed
    set of bases to many powers can tabulate it (:func:`pow_from_log2`). It runs as plain
    Python too (numpy scalars, the same IEEE operations in the same order), which is how such
    tables are built at import without compiling anything.
    """
    ix = _high(ax) & 0x7FFFFFFF
    n = 0
    if ix < 0x00100000:  # subnormal x
        ax *= _TWO53
        n -= 53
        ix = _high(ax)
    n += (ix >> 20) - 0x3FF
    j = ix & 0x000FFFFF
    ix = j | 0x3FF00000  # normalise
    k = 0
    if j > 0x3988E:  # |x| >= sqrt(3/2)
        if j < 0xBB67A:  # |x| < sqrt(3)
            k = 1
        else:
            n += 1
            ix -= 0x00100000
    ax = _set_high(ax, ix)
    bp = 1.5 if k == 1 else 1.0
    dp_h = _DP_H1 if k == 1 else 0.0
    dp_l = _DP_L1 if k == 1 else 0.0
    # ss = s_h + s_l = (x - bp) / (x + bp)
    u = ax - bp
    v = 1.0 / (ax + bp)
    ss = u * v
    s_h = _clear_low(ss)
    t_h = _set_high(0.0, ((ix >> 1) | 0x20000000) + 0x00080000 + (k << 18))  # head of x + bp
    t_l = ax - (t_h - bp)
    s_l = v * ((u - s_h * t_h) - s_h * t_l)
    # log(ax)
    s2 = ss * ss
    r = s2 * s2 * (_L1 + s2 * (_L2 + s2 * (_L3 + s2 * (_L4 + s2 * (_L5 + s2 * _L6)))))
    r += s_l * (s_h + ss)
    s2 = s_h * s_h
    t_h = _clear_low(3.0 + s2 + r)
    t_l = r - ((t_h - 3.0) - s2)
    # u + v = ss * (1 + ...)
    u = s_h * t_h
    v = s_l * t_h + t_l * ss
    # 2 / (3 log2) * (ss + ...)
    p_h = _clear_low(u + v)
    p_l = v - (p_h - u)
    z_h = _CP_H * p_h
    z_l = _CP_L * p_h + p_l * _CP + dp_l
    # log2(ax) = (ss + ...) * 2 / (3 log2) = n + dp_h + z_h + z_l
    t = float(n)
    t1 = _clear_low(((z_h + z_l) + dp_h) + t)
    t2 = z_l - (((t1 - t) - dp_h) - z_h)
    return t1, t2


@nb.njit(cache=True, inline="always")
def _exp2_parts(y: float, t1: float, t2: float, s: float) -> float:
    """``s * 2**(y * (t1 + t2))``: the product in split halves (fdlibm), the overflow and
    underflow checks (fdlibm), then ``2**z = 2**(k/64) * 2**r``, ``|r| <= 1/128``, with
    ``2**(k/64)`` from a double-double table and ``2**r - 1`` a degree-6 Taylor polynomial
    (truncation below 2**-64). This replaces fdlibm's rational exp step, which needs a
    division and a longer dependency chain: the multiply rule evaluates 512 powers per patch.
    """
    y1 = _clear_low(y)
    p_l = (y - y1) * t1 + y * t2
    p_h = y1 * t1  # exact: two 21-bit heads
    z = p_l + p_h
    bz = _bits(z)
    j = bz >> 32
    i = bz & _LOW_MASK
    if j >= 0x40900000:  # z >= 1024
        if ((j - 0x40900000) | i) != 0:
            return s * math.inf
        if p_l + _OVT > z - p_h:
            return s * math.inf
    elif (j & 0x7FFFFFFF) >= 0x4090CC00:  # z <= -1075
        if j != _NEG_1075_HIGH or i != 0:
            return s * 0.0
        if p_l <= z - p_h:
            return s * 0.0
    kf = (z * 64.0 + _ROUNDER) - _ROUNDER  # nearest integer to 64 z
    r = (p_h - kf * 0.015625) + p_l  # the subtraction is exact
    q = r * (_E1 + r * (_E2 + r * (_E3 + r * (_E4 + r * (_E5 + r * _E6)))))
    k = int(kf)
    m = k & 63
    th = _EXP2_HI[m]
    res = th + (_EXP2_LO[m] + th * q)
    return s * _scale(res, k >> 6)


@nb.njit(cache=True, error_model="numpy")
def pow(x: float, y: float) -> float:  # noqa: A001 - the name is the point
    """``x ** y``, error below 1 ulp, the same bits on every CPU: fdlibm e_pow.c's special
    cases and logarithm (:func:`log2_parts`), then :func:`_exp2_parts`.

    C99 special values: ``pow(x, 0) = 1`` and ``pow(1, y) = 1`` even for NaN, a negative base
    needs an integer exponent (NaN otherwise), zero to a negative power is inf.
    """
    bx = _bits(x)
    by = _bits(y)
    hx = bx >> 32
    lx = bx & _LOW_MASK
    hy = by >> 32
    ly = by & _LOW_MASK
    ix = hx & 0x7FFFFFFF
    iy = hy & 0x7FFFFFFF

    if (iy | ly) == 0:  # y == 0
        return 1.0
    if hx == 0x3FF00000 and lx == 0:  # x == 1
        return 1.0
    if (
        ix > 0x7FF00000
        or (ix == 0x7FF00000 and lx != 0)
        or iy > 0x7FF00000
        or (iy == 0x7FF00000 and ly != 0)
    ):
        return math.nan

    # yisint: 0 y is not an integer, 1 an odd integer, 2 an even integer (only when x < 0)
    yisint = 0
    if hx < 0:
        if iy >= 0x43400000:
            yisint = 2  # |y| >= 2**53: even
        elif iy >= 0x3FF00000:
            k = (iy >> 20) - 0x3FF
            if k > 20:
                j = ly >> (52 - k)
                if (j << (52 - k)) == ly:
                    yisint = 2 - (j & 1)
            elif ly == 0:
                j = iy >> (20 - k)
                if (j << (20 - k)) == iy:
                    yisint = 2 - (j & 1)

    if ly == 0:  # special values of y
        if iy == 0x7FF00000:  # y is +-inf
            if ((ix - 0x3FF00000) | lx) == 0:
                return 1.0  # (-1) ** +-inf
            if ix >= 0x3FF00000:  # |x| > 1
                return y if hy >= 0 else 0.0
            return -y if hy < 0 else 0.0  # |x| < 1
        if iy == 0x3FF00000:  # y is +-1
            if hy < 0:
                return _reciprocal(x)
            return x
        if hy == 0x40000000:  # y is 2
            return x * x
        if hy == 0x3FE00000 and hx >= 0:  # y is 0.5, x >= +0
            return math.sqrt(x)

    ax = abs(x)
    if lx == 0 and (ix == 0x7FF00000 or ix == 0 or ix == 0x3FF00000):  # x is +-0, +-inf, +-1
        z = ax
        if hy < 0:
            z = _reciprocal(z)
        if hx < 0:
            if ix == 0x3FF00000 and yisint == 0:
                return math.nan  # (-1) ** non-integer
            if yisint == 1:
                z = -z
        return z

    if hx < 0 and yisint == 0:
        return math.nan  # negative ** non-integer
    s = -1.0 if (hx < 0 and yisint == 1) else 1.0  # sign of the result

    if iy > 0x41E00000:  # |y| > 2**31
        if iy > 0x43F00000:  # |y| > 2**64: must overflow or underflow
            if ix <= 0x3FEFFFFF:
                return math.inf if hy < 0 else 0.0
            return math.inf if hy > 0 else 0.0
        if ix < 0x3FEFFFFF:
            return s * math.inf if hy < 0 else s * 0.0
        if ix > 0x3FF00000:
            return s * math.inf if hy > 0 else s * 0.0
        # |1 - x| <= 2**-20: log(x) from x - x**2/2 + x**3/3 - x**4/4
        t = ax - 1.0
        w = (t * t) * (0.5 - t * (_THRD - t * 0.25))
        u = _IVLN2_H * t
        v = t * _IVLN2_L - w * _IVLN2
        t1 = _clear_low(u + v)
        t2 = v - (t1 - u)
    else:
        t1, t2 = log2_parts(ax)
    return _exp2_parts(y, t1, t2, s)


@nb.njit(cache=True, inline="always")
def _regular_base(x: float) -> bool:
    """A base :func:`pow` takes its logarithm of: positive, finite, not 1."""
    return x > 0.0 and x < math.inf and x != 1.0


@nb.njit(cache=True, inline="always")
def _regular_exponent(y: float) -> bool:
    """An exponent :func:`pow` does not answer before the logarithm: not 0, +-1, 2, 0.5, NaN
    or beyond 2**31 in magnitude."""
    ay = abs(y)
    return ay > 0.0 and ay <= _TWO31 and y != 1.0 and y != -1.0 and y != 2.0 and y != 0.5


@nb.njit(cache=True, inline="always")
def pow_from_log2(x: float, y: float, t1: float, t2: float) -> float:
    """``pow(x, y)`` given ``(t1, t2) = log2_parts(x)`` (anything for a base that is not
    positive and finite): the same bits, with the base's logarithm taken from a table. The
    cases :func:`pow` answers before its logarithm go to :func:`pow` itself."""
    if _regular_base(x) and _regular_exponent(y):
        return _exp2_parts(y, t1, t2, 1.0)
    return pow(x, y)


@nb.njit(cache=True, error_model="numpy")
def powers32_from_log2(bases: np.ndarray, log2: np.ndarray, y: float, out: np.ndarray) -> None:
    """``out[i] = float32(pow(bases[i], y))`` for a tabulated set of bases, ``log2[:, i] =
    log2_parts(bases[i])`` (any finite pair for a base that is not positive and finite): the
    bits of :func:`pow32` for float32 bases, for the multiply rule, which raises its 256 bases
    to each patch's weight. The exponent is checked once and the powers are taken in a loop
    without calls or branches, then the rare bases :func:`pow` treats apart (0, 1, inf) are
    redone by :func:`pow`: three times faster than :func:`pow_from_log2` per entry."""
    n = bases.shape[0]
    if not _regular_exponent(y):
        for i in range(n):
            out[i] = np.float32(pow(bases[i], y))
        return
    for i in range(n):
        out[i] = np.float32(_exp2_parts(y, log2[0, i], log2[1, i], 1.0))
    for i in range(n):
        if not _regular_base(bases[i]):
            out[i] = np.float32(pow(bases[i], y))


@nb.njit(cache=True, inline="always")
def pow32(x: np.float32, y: np.float32) -> np.float32:
    """float32 ``x ** y``: :func:`pow` on the exact float64 values, rounded once to float32.

    This replaces libm's ``powf``, whose last bit differs between implementations (and which
    the wrap conversion of the multiply rule can turn into tens of grey levels). The result is
    the correctly rounded float32 power except when the exact power lies within about a double
    ulp of a float32 rounding boundary (about one input in 2**28); it is the same on every CPU
    either way.
    """
    return np.float32(pow(np.float64(x), np.float64(y)))
