"""exp, log, sin, cos and pow that give the same bits on every CPU.

Why not libm: numba's ``math.exp`` & co. call the process's libm, and glibc picks one of
several code paths (plain SSE2, FMA, AVX2, AVX-512) when it loads, and other libms (musl, macOS,
Windows) are different code again. They agree to within an ulp, not bit for bit (here glibc's
FMA and SSE2 builds disagree on about 0.07 % of sin, cos, exp and pow inputs). One ulp in an IFS
rotation angle or a Beta draw is a different fractal or a different patch weight, and the uint8
wrap of the multiply rule turns one ulp of a large value into many grey levels. numpy's
transcendental ufuncs have the same problem (their SIMD loops are chosen per CPU).

What is here: ports of fdlibm 5.3 (Sun's freely distributable libm, as kept in FreeBSD's msun:
"Permission to use, copy, modify, and distribute this software is freely granted, provided that
this notice is preserved", Copyright (C) 1993 by Sun Microsystems) for ``exp`` (e_exp.c),
``log`` (e_log.c), ``sin`` / ``cos`` (s_sin.c, s_cos.c, k_sin.c, k_cos.c, the medium-size path
of e_rem_pio2.c) and the logarithm and special cases of ``pow`` (e_pow.c), operation for
operation in the C source's order. They use only +, -, *, /, sqrt, conversions between floats
and integers that are exact, and exact bit operations on a double's words (reading its exponent,
clearing its low 32 bits), each of which IEEE 754 defines exactly, so every CPU computes the
same result. numba compiles them without fastmath, so LLVM neither reassociates nor contracts
``a * b + c`` into an FMA (an FMA rounds once instead of twice, which changes the bits between
CPUs that have one and CPUs that do not). Constants are the C source's; the few tables are built
at import from integer-exact decimal arithmetic.

Methods:

* ``exp`` (fdlibm): ``x = k ln2 + r``, ``|r| <= ln2 / 2``, with ln2 split into a 32-bit head
  (so ``k * LN2_HI`` is exact) and a tail; a degree-5 Remez polynomial in ``r**2`` inside the
  rational form ``1 + 2r / (2 - R(r))``; scaling by ``2**k`` through the exponent bits (two
  steps for subnormal results, so the result is rounded once).
* ``log`` (fdlibm): ``x = 2**k (1 + f)``, ``sqrt(2)/2 < 1 + f < sqrt(2)``; ``s = f / (2 + f)``,
  ``log(1 + f) = f - s (f - R(s**2))`` with a degree-7 polynomial R; ``k ln2`` added in two
  parts.
* ``sin`` / ``cos`` (fdlibm): reduction ``x = n pi/2 + (y0 + y1)`` with pi/2 in three 33-bit
  pieces (Cody-Waite, good to 118 bits or more after the cancellation checks), then degree-13
  odd / degree-14 even polynomials on ``[-pi/4, pi/4]`` that use the tail ``y1``.
* ``pow``: fdlibm's special cases and ``log2(x)`` to about 64 bits as a double-double
  (:func:`log2_parts`), the product with ``y`` in split halves, then (not fdlibm) ``2**z =
  2**(k/64) 2**r`` with a double-double table and a degree-6 Taylor polynomial: no division,
  a shorter dependency chain, 0.5 ulp. The logarithm depends on the base alone, so a fixed set
  of bases can have it tabulated (:func:`pow_from_log2`, :func:`powers32_from_log2`).
* ``sin_cos_correctly_rounded``: double-double reduction and Taylor series, for the one caller
  that needs the correctly rounded value (the rotate op's matrix, which Pillow rounds again).

Domains: ``exp``, ``log`` and ``pow`` cover every double with the C99 special values (``pow``
of a negative base is defined for integer exponents only, NaN otherwise). ``sin`` / ``cos``
are implemented for ``|x| < SIN_COS_LIMIT`` (about 2**20 pi/2 = 1.6e6), the range of fdlibm's
medium reduction, and return NaN beyond it: every caller in this repository stays within
``[-2 pi, 2 pi]``, and the large-argument reduction (Payne-Hanek) is not worth its size here.

Measured maximum errors (``tests/test_detmath.py`` and 20,000 more points per range, against
60-digit ``decimal`` references, in ulps of the exact result): exp 0.82 on [-9, 1] (the plasma
decay, the blur weight and RandomResizedCrop's aspect use [-8.8, 0.3]) and 0.81 on [-745, 709.8];
log 0.79 on (0, 1] (the exponential draws), 0.54 over all positive doubles; sin 0.72 and cos
0.72 on [-2 pi, 2 pi], 0.63 up to 2**20 (near multiples of pi/2 too, where a result near 0 is
measured in ulps of that small result); pow 0.51 for x in (0, 2], y in [-2, 10] and on the Beta
and multiply-rule ranges, 0.67 where the result is subnormal (rounded twice). ``pow32`` (a
float32 power computed as ``pow`` in float64, rounded once to float32) is the correctly rounded
float32 power unless the exact power lies within about half a double ulp of a float32 rounding
boundary: about one input in 2**28. Of 5.1 million multiply-rule powers (256 bases, 20,000
weights), glibc's ``powf`` differs from ``pow32`` on 3,214, and on every one of them ``pow32``
is the correctly rounded value and ``powf`` is not.
"""

from __future__ import annotations

import decimal
import math

import numba as nb
import numpy as np
from numba.extending import register_jitable

__all__ = [
    "SIN_COS_LIMIT",
    "cos",
    "exp",
    "log",
    "log2_parts",
    "pow",
    "pow32",
    "pow_from_log2",
    "powers32_from_log2",
    "sin",
    "sin_cos_correctly_rounded",
]

# ---------------------------------------------------------------- bit access, exact operations

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


# ----------------------------------------------------------------------------------- exp

_O_THRESHOLD = 7.09782712893383973096e02  # 0x40862E42 FEFA39EF
_U_THRESHOLD = -7.45133219101941108420e02  # 0xC0874910 D52D3051
_LN2_HI = 6.93147180369123816490e-01  # 0x3FE62E42 FEE00000
_LN2_LO = 1.90821492927058770002e-10  # 0x3DEA39EF 35793C76
_INVLN2 = 1.44269504088896338700e00  # 0x3FF71547 652B82FE
_P1 = 1.66666666666666019037e-01  # 0x3FC55555 5555553E
_P2 = -2.77777777770155933842e-03  # 0xBF66C16C 16BEBD93
_P3 = 6.61375632143793436117e-05  # 0x3F11566A AF25DE2C
_P4 = -1.65339022054652515390e-06  # 0xBEBBBD41 C5D26BF1
_P5 = 4.13813679705723846039e-08  # 0x3E663769 72BEA4D0


@nb.njit(cache=True, error_model="numpy")
def exp(x: float) -> float:
    """``e**x`` (fdlibm e_exp.c), error below 1 ulp, the same bits on every CPU."""
    hx = _high(x)
    negative = hx < 0
    hx &= 0x7FFFFFFF
    if hx >= 0x40862E42:  # |x| >= 709.78...
        if hx >= 0x7FF00000:
            if x != x:
                return x
            return 0.0 if negative else x  # exp(-inf) = 0, exp(inf) = inf
        if x > _O_THRESHOLD:
            return math.inf
        if x < _U_THRESHOLD:
            return 0.0
    k = 0
    hi = 0.0
    lo = 0.0
    if hx > 0x3FD62E42:  # |x| > 0.5 ln2: reduce
        if hx < 0x3FF0A2B2:  # and |x| < 1.5 ln2: k = +-1
            if negative:
                hi = x + _LN2_HI
                lo = -_LN2_LO
                k = -1
            else:
                hi = x - _LN2_HI
                lo = _LN2_LO
                k = 1
        else:
            k = int(_INVLN2 * x + (-0.5 if negative else 0.5))  # truncation: round half away
            t = float(k)
            hi = x - t * _LN2_HI  # exact: k * LN2_HI has at most 43 significant bits
            lo = t * _LN2_LO
        x = hi - lo
    elif hx < 0x3E300000:  # |x| < 2**-28
        return 1.0 + x
    t = x * x
    c = x - t * (_P1 + t * (_P2 + t * (_P3 + t * (_P4 + t * _P5))))
    if k == 0:
        return 1.0 - ((x * c) / (c - 2.0) - x)
    y = 1.0 - ((lo - (x * c) / (2.0 - c)) - hi)
    return _scale(y, k)


# ----------------------------------------------------------------------------------- log

_TWO54 = 1.80143985094819840000e16  # 0x43500000 00000000
_LG1 = 6.666666666666735130e-01  # 0x3FE55555 55555593
_LG2 = 3.999999999940941908e-01  # 0x3FD99999 9997FA04
_LG3 = 2.857142874366239149e-01  # 0x3FD24924 94229359
_LG4 = 2.222219843214978396e-01  # 0x3FCC71C5 1D8E78AF
_LG5 = 1.818357216161805012e-01  # 0x3FC74664 96CB03DE
_LG6 = 1.531383769920937332e-01  # 0x3FC39A09 D078C69F
_LG7 = 1.479819860511658591e-01  # 0x3FC2F112 DF3E5244


@nb.njit(cache=True, error_model="numpy")
def log(x: float) -> float:
    """Natural logarithm (fdlibm e_log.c), error below 1 ulp, the same bits on every CPU."""
    b = _bits(x)
    hx = b >> 32
    lx = b & _LOW_MASK
    k = 0
    if hx < 0x00100000:  # x < 2**-1022: zero, negative or subnormal
        if ((hx & 0x7FFFFFFF) | lx) == 0:
            return -math.inf
        if hx < 0:
            return math.nan
        k -= 54
        x *= _TWO54  # subnormal: scale up (exact)
        hx = _high(x)
    if hx >= 0x7FF00000:
        return x + x  # inf or NaN
    k += (hx >> 20) - 1023
    hx &= 0x000FFFFF
    i = (hx + 0x95F64) & 0x100000
    x = _set_high(x, hx | (i ^ 0x3FF00000))  # normalise x or x / 2 into [sqrt(2)/2, sqrt(2))
    k += i >> 20
    f = x - 1.0
    if (0x000FFFFF & (2 + hx)) < 3:  # -2**-20 <= f < 2**-20
        if f == 0.0:
            if k == 0:
                return 0.0
            dk = float(k)
            return dk * _LN2_HI + dk * _LN2_LO
        r = f * f * (0.5 - 0.33333333333333333 * f)
        if k == 0:
            return f - r
        dk = float(k)
        return dk * _LN2_HI - ((r - dk * _LN2_LO) - f)
    s = f / (2.0 + f)
    dk = float(k)
    z = s * s
    i = hx - 0x6147A
    w = z * z
    j = 0x6B851 - hx
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    i |= j
    r = t2 + t1
    if i > 0:
        hfsq = 0.5 * f * f
        if k == 0:
            return f - (hfsq - s * (hfsq + r))
        return dk * _LN2_HI - ((hfsq - (s * (hfsq + r) + dk * _LN2_LO)) - f)
    if k == 0:
        return f - s * (f - r)
    return dk * _LN2_HI - ((s * (f - r) - dk * _LN2_LO) - f)


# ----------------------------------------------------------------------------- sin, cos

SIN_COS_LIMIT = float.fromhex("0x1.921fbp+20")  # about 2**20 pi/2 (1647099.0): |x| >= it is NaN

_INVPIO2 = 6.36619772367581382433e-01  # 0x3FE45F30 6DC9C883
_PIO2_1 = 1.57079632673412561417e00  # 0x3FF921FB 54400000: first 33 bits of pi/2
_PIO2_1T = 6.07710050650619224932e-11  # 0x3DD0B461 1A626331: pi/2 - PIO2_1
_PIO2_2 = 6.07710050630396597660e-11  # 0x3DD0B461 1A600000: second 33 bits
_PIO2_2T = 2.02226624879595063154e-21  # 0x3BA3198A 2E037073: pi/2 - (PIO2_1 + PIO2_2)
_PIO2_3 = 2.02226624871116645580e-21  # 0x3BA3198A 2E000000: third 33 bits
_PIO2_3T = 8.47842766036889956997e-32  # 0x397B839A 252049C1
_ROUNDER = 6755399441055744.0  # 1.5 * 2**52: (v + R) - R rounds v to an integer, half to even

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

_SPLIT = 134217729.0  # 2**27 + 1: Veltkamp's splitting constant
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
def _two_prod(a: float, b: float) -> tuple[float, float]:
    """``a * b`` and its exact error without an FMA (Dekker, Veltkamp splitting)."""
    p = a * b
    t = _SPLIT * a
    ah = t - (t - a)
    al = a - ah
    t = _SPLIT * b
    bh = t - (t - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


@nb.njit(cache=True, inline="always")
def _dd_add(ah: float, al: float, bh: float, bl: float) -> tuple[float, float]:
    s, e = _two_sum(ah, bh)
    return _fast_two_sum(s, e + (al + bl))


@nb.njit(cache=True, inline="always")
def _dd_mul(ah: float, al: float, bh: float, bl: float) -> tuple[float, float]:
    p, e = _two_prod(ah, bh)
    return _fast_two_sum(p, e + (ah * bl + al * bh))


@nb.njit(cache=True, inline="always")
def _dd_div_int(ah: float, al: float, d: float) -> tuple[float, float]:
    """A double-double divided by a small exact integer ``d``."""
    q1 = ah / d
    p, e = _two_prod(q1, d)
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
