"""``sin`` and ``cos`` (fdlibm 5.3's s_sin.c, s_cos.c, k_sin.c, k_cos.c and the medium path of
e_rem_pio2.c), and a correctly rounded ``sin_cos_correctly_rounded`` in double-double."""

from __future__ import annotations

import math

import numba as nb

from fractals.detmath.bits import (
    _ROUNDER,
    _high,
    two_prod,
)

# ----------------------------------------------------------------------------- sin, cos

SIN_COS_LIMIT = float.fromhex("0x1.921fbp+20")  # about 2**20 pi/2 (1647099.0): |x| >= it is NaN

_INVPIO2 = 6.36619772367581382433e-01  # 0x3FE45F30 6DC9C883
_PIO2_1 = 1.57079632673412561417e00  # 0x3FF921FB 54400000: first 33 bits of pi/2
_PIO2_1T = 6.07710050650619224932e-11  # 0x3DD0B461 1A626331: pi/2 - PIO2_1
_PIO2_2 = 6.07710050630396597660e-11  # 0x3DD0B461 1A600000: second 33 bits
_PIO2_2T = 2.02226624879595063154e-21  # 0x3BA3198A 2E037073: pi/2 - (PIO2_1 + PIO2_2)
_PIO2_3 = 2.02226624871116645580e-21  # 0x3BA3198A 2E000000: third 33 bits
_PIO2_3T = 8.47842766036889956997e-32  # 0x397B839A 252049C1

_S1 = -1.66666666666666324348e-01  # 0xBFC55555 55555549
_S2 = 8.33333333332248946124e-03  # 0x3F811111 1110F8A6
_S3 = -1.98412698298579493134e-04  # 0xBF2A01A0 19C161D5
_S4 = 2.75573137070700676789e-06  # 0x3EC71DE3 57B1FE7D
_S5 = -2.50507602534068634195e-08  # 0xBE5AE5E6 8A2B9CEB
_S6 = 1.58969099521155010221e-10  # 0x3DE5D93A 5ACFD57C
_C1 = 4.16666666666666019037e-02  # 0x3FA55555 5555554C
_C2 = -1.38888888888741095749e-03  # 0xBF56C16C 16C15177
_C3 = 2.48015872894767294178e-05  # 0x3EFA01A0 19CB1590
_C4 = -2.75573143513906633035e-07  # 0xBE927E4F 809C52AD
_C5 = 2.08757232129817482790e-09  # 0x3E21EE9E BDB4B1C4
_C6 = -1.13596475577881948265e-11  # 0xBDA8FAE9 BE8838D4


@nb.njit(cache=True, inline="always")
def _kernel_sin(x: float, y: float, iy: int) -> float:
    """sin(x + y) on [-pi/4, pi/4], ``y`` the tail of ``x`` (used when ``iy`` is 1)."""
    z = x * x
    w = z * z
    r = _S2 + z * (_S3 + z * _S4) + z * w * (_S5 + z * _S6)
    v = z * x
    if iy == 0:
        return x + v * (_S1 + z * r)
    return x - ((z * (0.5 * y - v * r) - y) - v * _S1)


@nb.njit(cache=True, inline="always")
def _kernel_cos(x: float, y: float) -> float:
    """cos(x + y) on [-pi/4, pi/4] (FreeBSD's k_cos.c: ``1 - x**2/2`` split for accuracy)."""
    z = x * x
    w = z * z
    r = z * (_C1 + z * (_C2 + z * _C3)) + w * w * (_C4 + z * (_C5 + z * _C6))
    hz = 0.5 * z
    w = 1.0 - hz
    return w + (((1.0 - w) - hz) + (z * r - x * y))


@nb.njit(cache=True, inline="always")
def _rem_pio2(x: float, ix: int) -> tuple[int, float, float]:
    """``(n, y0, y1)`` with ``x = n pi/2 + y0 + y1``, ``|y0| <~ pi/4`` (fdlibm's medium path,
    valid for ``|x| < 2**20 pi/2``; ``ix`` is the high word of ``|x|``)."""
    fn = (x * _INVPIO2 + _ROUNDER) - _ROUNDER
    n = int(fn)
    r = x - fn * _PIO2_1
    w = fn * _PIO2_1T  # first round, good to 85 bits
    j = ix >> 20
    y0 = r - w
    i = j - ((_high(y0) >> 20) & 0x7FF)
    if i > 16:  # cancellation: second round, good to 118 bits
        t = r
        w = fn * _PIO2_2
        r = t - w
        w = fn * _PIO2_2T - ((t - r) - w)
        y0 = r - w
        i = j - ((_high(y0) >> 20) & 0x7FF)
        if i > 49:  # third round, 151 bits: covers every double
            t = r
            w = fn * _PIO2_3
            r = t - w
            w = fn * _PIO2_3T - ((t - r) - w)
            y0 = r - w
    y1 = (r - y0) - w
    return n, y0, y1


@nb.njit(cache=True, error_model="numpy")
def sin(x: float) -> float:
    """Sine (fdlibm s_sin.c), error below 1 ulp for ``|x| < SIN_COS_LIMIT``, NaN beyond."""
    ix = _high(x) & 0x7FFFFFFF
    if ix <= 0x3FE921FB:  # |x| <~ pi/4
        if ix < 0x3E500000:  # |x| < 2**-26
            return x
        return _kernel_sin(x, 0.0, 0)
    if ix >= 0x413921FB:  # inf, NaN, or beyond the medium reduction
        return math.nan
    n, y0, y1 = _rem_pio2(x, ix)
    q = n & 3
    if q == 0:
        return _kernel_sin(y0, y1, 1)
    if q == 1:
        return _kernel_cos(y0, y1)
    if q == 2:
        return -_kernel_sin(y0, y1, 1)
    return -_kernel_cos(y0, y1)


@nb.njit(cache=True, error_model="numpy")
def cos(x: float) -> float:
    """Cosine (fdlibm s_cos.c), error below 1 ulp for ``|x| < SIN_COS_LIMIT``, NaN beyond."""
    ix = _high(x) & 0x7FFFFFFF
    if ix <= 0x3FE921FB:  # |x| <~ pi/4
        if ix < 0x3E46A09E:  # |x| < 2**-27 sqrt(2)
            return 1.0
        return _kernel_cos(x, 0.0)
    if ix >= 0x413921FB:
        return math.nan
    n, y0, y1 = _rem_pio2(x, ix)
    q = n & 3
    if q == 0:
        return _kernel_cos(y0, y1)
    if q == 1:
        return -_kernel_sin(y0, y1, 1)
    if q == 2:
        return -_kernel_cos(y0, y1)
    return _kernel_sin(y0, y1, 1)


# ------------------------------------------------- correctly rounded sin and cos (double-double)

_DD_TERMS = 15  # Taylor terms: r**30 / 30! < 2**-120 for |r| <= pi/4


@nb.njit(cache=True, inline="always")
def _two_sum(a: float, b: float) -> tuple[float, float]:
    """``a + b`` as a rounded sum and its exact error (Knuth)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


@nb.njit(cache=True, inline="always")
def _fast_two_sum(a: float, b: float) -> tuple[float, float]:
    """``a + b`` and its exact error when ``|a| >= |b|`` (Dekker)."""
    s = a + b
    return s, b - (s - a)


@nb.njit(cache=True, inline="always")
def _dd_add(ah: float, al: float, bh: float, bl: float) -> tuple[float, float]:
    s, e = _two_sum(ah, bh)
    return _fast_two_sum(s, e + (al + bl))


@nb.njit(cache=True, inline="always")
def _dd_mul(ah: float, al: float, bh: float, bl: float) -> tuple[float, float]:
    p, e = two_prod(ah, bh)
    return _fast_two_sum(p, e + (ah * bl + al * bh))


@nb.njit(cache=True, inline="always")
def _dd_div_int(ah: float, al: float, d: float) -> tuple[float, float]:
    """A double-double divided by a small exact integer ``d``."""
    q1 = ah / d
    p, e = two_prod(q1, d)
    q2 = (((ah - p) - e) + al) / d
    return _fast_two_sum(q1, q2)


@nb.njit(cache=True, error_model="numpy")
def sin_cos_correctly_rounded(x: float) -> tuple[float, float]:
    """``(sin x, cos x)``, each the double nearest to the exact value, for
    ``|x| < SIN_COS_LIMIT`` (NaN beyond).

    For callers that round the result again and must agree with any correctly rounding libm:
    Pillow's ``Image.rotate`` uses ``round(math.cos(angle), 15)``, and a result one ulp off
    moves that 15-decimal rounding whenever the exact cosine lies near a rounding midpoint,
    which happens for 95 of the 360 integer angles (``tests/test_image_ops.py``). Method:
    reduction by ``n pi/2`` in double-double with pi/2 in four pieces (152 bits), Taylor series
    to ``r**30`` in double-double (error about 2**-100 relative), then the head. The head is
    the correctly rounded value unless the exact value lies within about 2**-100 of a midpoint
    between two doubles; the tests check every integer degree. About 1 us.
    """
    ix = _high(x) & 0x7FFFFFFF
    if ix >= 0x413921FB:
        return math.nan, math.nan
    if x == 0.0:
        return x, 1.0  # keeps the sign of zero, as libm does
    fn = (x * _INVPIO2 + _ROUNDER) - _ROUNDER
    n = int(fn)
    rh, rl = _two_sum(x - fn * _PIO2_1, -(fn * _PIO2_2))  # x - fn * PIO2_1 is exact
    rh, rl = _dd_add(rh, rl, -(fn * _PIO2_3), -(fn * _PIO2_3T))
    r2h, r2l = _dd_mul(rh, rl, rh, rl)
    # sin r = r - r**3/3! + ..., cos r = 1 - r**2/2! + ...: terms shrink, so the plain
    # double-double sums lose nothing
    sh, sl = rh, rl
    ch, cl = 1.0, 0.0
    th, tl = rh, rl  # r**(2k+1) / (2k+1)!
    uh, ul = 1.0, 0.0  # r**(2k) / (2k)!
    for k in range(1, _DD_TERMS + 1):
        uh, ul = _dd_mul(uh, ul, r2h, r2l)
        uh, ul = _dd_div_int(uh, ul, float((2 * k - 1) * (2 * k)))
        th, tl = _dd_mul(th, tl, r2h, r2l)
        th, tl = _dd_div_int(th, tl, float((2 * k) * (2 * k + 1)))
        if k & 1:
            ch, cl = _dd_add(ch, cl, -uh, -ul)
            sh, sl = _dd_add(sh, sl, -th, -tl)
        else:
            ch, cl = _dd_add(ch, cl, uh, ul)
            sh, sl = _dd_add(sh, sl, th, tl)
    q = n & 3
    if q == 0:
        return sh, ch
    if q == 1:
        return ch, -sh
    if q == 2:
        return -sh, -ch
    return -ch, sh
