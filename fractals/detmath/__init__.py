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

from fractals.detmath.explog import exp, log
from fractals.detmath.power import (
    log2_parts,
    pow,  # noqa: A004 - the name is the point
    pow32,
    pow_from_log2,
    powers32_from_log2,
)
from fractals.detmath.trig import SIN_COS_LIMIT, cos, sin, sin_cos_correctly_rounded

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
