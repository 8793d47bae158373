"""fractals.detmath against exact references, and the guard that keeps libm out of the kernels.

Every reference is computed with Python's ``decimal`` at 60 digits (libmpdec: integer
arithmetic, the same on every machine) from the exact binary value of the input, so no oracle
here depends on libm or on numpy's SIMD loops. Errors are measured in ulps of the exact result
(for a result below 2**-1022, in ulps of the smallest subnormal).
"""

from __future__ import annotations

import ast
import decimal
import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numba as nb
import numpy as np
import pytest

from fractals import detmath
from fractals.detmath import power

CTX = decimal.Context(prec=60, Emin=-999999, Emax=999999)
ROOT = Path(__file__).resolve().parents[1]


def _pi() -> Decimal:
    """pi to the context's precision (the decimal module's documented recipe)."""
    ctx = decimal.Context(prec=CTX.prec + 5)
    three = Decimal(3)
    lasts, t, s, n, na, d, da = Decimal(0), three, three, 1, 0, 0, 24
    while s != lasts:
        lasts = s
        n, na = n + na, na + 8
        d, da = d + da, da + 32
        t = ctx.divide(ctx.multiply(t, n), d)
        s = ctx.add(s, t)
    return s


PI = _pi()


def exact_sin_cos(x: float) -> tuple[Decimal, Decimal]:
    """sin and cos of the exact value of ``x``: reduction by 2 pi, then Taylor series at 80
    digits until the terms drop below 1e-75 (every operation in this context: decimal's
    operators would round to the thread's 28-digit default)."""
    ctx = decimal.Context(prec=80, Emin=-999999, Emax=999999)
    d = Decimal(x)
    two_pi = ctx.multiply(2, PI)
    k = ctx.divide(d, two_pi).to_integral_value(rounding=decimal.ROUND_HALF_EVEN)
    r = ctx.subtract(d, ctx.multiply(k, two_pi))
    r2 = ctx.multiply(r, r)
    eps = Decimal(10) ** -75
    s, term, n = r, r, 1
    while ctx.abs(term) > eps:
        term = ctx.divide(ctx.multiply(ctx.minus(term), r2), (n + 1) * (n + 2))
        s = ctx.add(s, term)
        n += 2
    c, term, n = Decimal(1), Decimal(1), 0
    while ctx.abs(term) > eps:
        term = ctx.divide(ctx.multiply(ctx.minus(term), r2), (n + 1) * (n + 2))
        c = ctx.add(c, term)
        n += 2
    return s, c


def exact_pow(x: float, y: float) -> Decimal:
    """``x ** y`` for ``x > 0`` (or a negative ``x`` with an integer ``y``)."""
    if x < 0:
        magnitude = exact_pow(-x, y)
        return CTX.minus(magnitude) if int(y) % 2 else magnitude
    return CTX.exp(CTX.multiply(Decimal(y), CTX.ln(Decimal(x))))


def ulp_of(true: Decimal) -> Decimal:
    """The spacing of doubles at ``true`` (the binade of ``|true|``, subnormals included)."""
    a = CTX.abs(true)
    if a == 0:
        return CTX.power(2, -1074)
    _, e = math.frexp(float(a))
    if CTX.power(2, e - 1) > a:  # float() rounded up to the next power of two
        e -= 1
    return CTX.power(2, max(e - 53, -1074))  # exact: 2**-1074 has 751 digits, fewer matter


def ulps(got: float, true: Decimal) -> float:
    if math.isinf(got) or math.isnan(got):
        return math.inf
    return float(CTX.divide(CTX.abs(CTX.subtract(Decimal(got), true)), ulp_of(true)))


def max_ulps(fn, xs, exact) -> tuple[float, float]:
    worst, at = 0.0, math.nan
    for x in xs:
        e = ulps(fn(float(x)), exact(float(x)))
        if e > worst:
            worst, at = e, float(x)
    return worst, at


RNG = np.random.default_rng(20240611)


def log_uniform(lo_exp: int, hi_exp: int, n: int) -> np.ndarray:
    """Positive doubles spread evenly over the binades ``2**lo_exp .. 2**hi_exp``."""
    return np.ldexp(RNG.uniform(1.0, 2.0, n), RNG.integers(lo_exp, hi_exp, n))


def unit_complements(n: int) -> np.ndarray:
    """``1 - u`` for 53-bit uniforms ``u``: what the exponential and Beta draws feed in
    (small values included: the low bits of u are drawn too)."""
    k = RNG.integers(1, 2**53, n, dtype=np.int64)
    k[: n // 4] = RNG.integers(1, 2**20, n // 4)  # tails: 1 - u close to 0
    return k.astype(np.float64) * 2.0**-53


# --------------------------------------------------------------------------------- exp


LN2_MULTIPLES = [k * math.log(2) for k in range(-1074, 1024, 17)]
EXP_EDGES = [
    0.0,
    -0.0,
    5e-324,
    -5e-324,
    1e-300,
    2.0**-28,
    -(2.0**-28),
    2.0**-28 * 1.5,
    0.5 * math.log(2),
    -0.5 * math.log(2),
    1.5 * math.log(2),
    -1.5 * math.log(2),
    1.0,
    -1.0,
    709.782712893384,  # just below the overflow threshold
    -708.3964185322641,  # about where results turn subnormal
    -745.1332191019411,  # about the smallest subnormal
    -744.0,
]


@pytest.mark.parametrize(
    ("label", "xs", "bound"),
    [
        ("used ranges [-9, 1]", RNG.uniform(-9.0, 1.0, 1500), 1.0),
        ("full range", RNG.uniform(-745.13, 709.78, 1500), 1.0),
        ("multiples of ln2", LN2_MULTIPLES, 1.0),
        ("edges", EXP_EDGES, 1.0),
    ],
)
def test_exp_is_within_an_ulp(label: str, xs, bound: float) -> None:
    worst, at = max_ulps(detmath.exp, xs, lambda x: CTX.exp(Decimal(x)))
    print(f"exp {label}: max {worst:.3f} ulp at {at!r}")
    assert worst < bound, (label, worst, at)


def test_exp_special_values() -> None:
    assert detmath.exp(0.0) == 1.0
    assert detmath.exp(math.inf) == math.inf
    assert detmath.exp(-math.inf) == 0.0
    assert math.isnan(detmath.exp(math.nan))
    assert detmath.exp(710.0) == math.inf
    assert detmath.exp(-746.0) == 0.0
    assert detmath.exp(-745.0) == 5e-324


# --------------------------------------------------------------------------------- log


LOG_EDGES = [
    1.0,
    2.0,
    0.5,
    math.sqrt(0.5),
    math.sqrt(2.0),
    1.0 + 2.0**-52,
    1.0 - 2.0**-53,
    1.0 + 2.0**-21,
    1.0 - 2.0**-21,
    1.0 + 2.0**-20,
    2.0**-53,
    5e-324,
    2.0**-1022,
    2.0**-1022 * 0.75,
    1.7976931348623157e308,
    3.0,
    0.1,
    0.75,
    4.0 / 3.0,
]


@pytest.mark.parametrize(
    ("label", "xs", "bound"),
    [
        ("(0, 1] as 1 - u (exponential draws)", unit_complements(1500), 1.0),
        ("full range", log_uniform(-1074, 1024, 1500), 1.0),
        ("near 1", 1.0 + RNG.uniform(-(2.0**-10), 2.0**-10, 500), 1.0),
        ("edges", LOG_EDGES, 1.0),
    ],
)
def test_log_is_within_an_ulp(label: str, xs, bound: float) -> None:
    worst, at = max_ulps(detmath.log, xs, lambda x: CTX.ln(Decimal(x)))
    print(f"log {label}: max {worst:.3f} ulp at {at!r}")
    assert worst < bound, (label, worst, at)


def test_log_special_values() -> None:
    assert detmath.log(1.0) == 0.0
    assert detmath.log(0.0) == -math.inf
    assert detmath.log(-0.0) == -math.inf
    assert math.isnan(detmath.log(-1.0))
    assert detmath.log(math.inf) == math.inf
    assert math.isnan(detmath.log(math.nan))


# ---------------------------------------------------------------------------- sin, cos


HALF_PI_MULTIPLES = [k * (math.pi / 2) for k in range(-16, 17)] + [
    k * (math.pi / 2) for k in (101, 1000, 12345, 2**19, 2**20 - 3)
]
TRIG_EDGES = [
    0.0,
    -0.0,
    1e-300,
    2.0**-27,
    2.0**-26,
    0.7853981633974483,  # pi/4
    0.7853981633974484,
    -0.7853981633974483,
    math.pi,
    -math.pi,
    2 * math.pi,
    math.nextafter(detmath.SIN_COS_LIMIT, 0.0),
    -math.nextafter(detmath.SIN_COS_LIMIT, 0.0),
]


@pytest.mark.parametrize("fn", ["sin", "cos"])
@pytest.mark.parametrize(
    ("label", "xs", "bound"),
    [
        ("[-2 pi, 2 pi]", RNG.uniform(-2 * math.pi, 2 * math.pi, 1500), 1.0),
        ("2 pi u (Box-Muller)", 2.0 * math.pi * (1.0 - unit_complements(300)), 1.0),
        ("large", log_uniform(3, 20, 300), 1.0),
        ("multiples of pi/2", HALF_PI_MULTIPLES, 1.0),
        ("edges", TRIG_EDGES, 1.0),
    ],
)
def test_sin_cos_are_within_an_ulp(fn: str, label: str, xs, bound: float) -> None:
    index = 0 if fn == "sin" else 1
    worst, at = max_ulps(getattr(detmath, fn), xs, lambda x: exact_sin_cos(x)[index])
    print(f"{fn} {label}: max {worst:.3f} ulp at {at!r}")
    assert worst < bound, (fn, label, worst, at)


def test_sin_cos_outside_the_domain_are_nan() -> None:
    for x in (math.inf, -math.inf, math.nan, detmath.SIN_COS_LIMIT, 1e7, -1e300):
        assert math.isnan(detmath.sin(x)) and math.isnan(detmath.cos(x))
    assert detmath.sin(0.0) == 0.0 and math.copysign(1.0, detmath.sin(-0.0)) == -1.0
    assert detmath.cos(0.0) == 1.0


@pytest.mark.parametrize(
    "xs",
    [
        RNG.uniform(-2 * math.pi, 2 * math.pi, 400),
        [-(d * (math.pi / 180.0)) for d in range(360)],  # the rotate op's angles
        HALF_PI_MULTIPLES,
    ],
)
def test_sin_cos_correctly_rounded(xs) -> None:
    """The double-double sin/cos returns the double nearest to the exact value."""
    for x in xs:
        s, c = detmath.sin_cos_correctly_rounded(float(x))
        es, ec = exact_sin_cos(float(x))
        assert s == float(es) and c == float(ec), x
    s, c = detmath.sin_cos_correctly_rounded(-0.0)
    assert s == 0.0 and math.copysign(1.0, s) == -1.0 and c == 1.0


# --------------------------------------------------------------------------------- pow


MULTIPLY_BASES = sorted(
    {float(np.float32(v) / np.float32(255) * np.float32(2)) for v in range(1, 256)}
    | {float(np.float32(1e-37))}
)


def _pairs(xs, ys) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]


def _general_pairs(n: int) -> list[tuple[float, float]]:
    """x log-uniform over most of the range, y chosen so that |y log2 x| < 1070: covers
    results from subnormal to near overflow."""
    xs = log_uniform(-1000, 1000, n)
    xs = xs[np.abs(np.log2(xs)) > 0.01]
    zs = RNG.uniform(-1070.0, 1020.0, xs.size)
    return _pairs(xs, zs / np.log2(xs))


POW_CASES = {
    "multiply rule: 2v/255 or 1e-37 to w in [-1, 2]": [
        (b, float(np.float32(w))) for b in MULTIPLY_BASES for w in RNG.uniform(-1, 2, 4)
    ],
    "Beta draws: (1 - u) ** (1 / a)": _pairs(
        unit_complements(800), 1.0 / RNG.uniform(0.05, 20.0, 800)
    ),
    "x in (0, 2], y in [-2, 10]": _pairs(RNG.uniform(0, 2, 800), RNG.uniform(-2, 10, 800)),
    "general, results from subnormal to near overflow": _general_pairs(800),
    "integer powers of negative bases": [
        (-float(x), float(y))
        for x, y in zip(RNG.uniform(0.5, 3, 200), RNG.integers(-40, 40, 200), strict=True)
    ],
    "edges": [
        (2.0, 10.0),
        (2.0, -1074.0),
        (2.0, 1023.0),
        (0.5, 1074.0),
        (10.0, 308.0),
        (1.0 + 2.0**-30, 2.0**31 + 12345.0),  # |y| > 2**31 path
        (1.0 - 2.0**-30, 3.0e9),
        (5e-324, 0.25),
        (2.0**-1060, 0.5 + 2.0**-40),
        (3.0, 0.5),
        (7.0, 2.0),
        (7.0, -1.0),
    ],
}


@pytest.mark.parametrize("label", sorted(POW_CASES))
def test_pow_is_within_an_ulp(label: str) -> None:
    worst, at = 0.0, None
    for x, y in POW_CASES[label]:
        e = ulps(detmath.pow(x, y), exact_pow(x, y))
        if e > worst:
            worst, at = e, (x, y)
    print(f"pow {label}: max {worst:.3f} ulp at {at!r}")
    assert worst < 1.0, (label, worst, at)


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        (2.0, 0.0, 1.0),
        (math.nan, 0.0, 1.0),
        (1.0, math.nan, 1.0),
        (1.0, math.inf, 1.0),
        (-1.0, math.inf, 1.0),
        (2.0, math.inf, math.inf),
        (0.5, math.inf, 0.0),
        (2.0, -math.inf, 0.0),
        (0.5, -math.inf, math.inf),
        (0.0, 2.5, 0.0),
        (0.0, -1.0, math.inf),
        (-0.0, -3.0, -math.inf),
        (-0.0, 3.0, -0.0),
        (-2.0, 3.0, -8.0),
        (-2.0, -2.0, 0.25),
        (math.inf, -1.0, 0.0),
        (math.inf, 0.5, math.inf),
        (-math.inf, 3.0, -math.inf),
        (2.0, 1024.0, math.inf),
        (2.0, -1075.0, 0.0),
        (0.9, 1e20, 0.0),
        (1.1, 1e20, math.inf),
        (4.0, 0.5, 2.0),
        (2.0, 10.0, 1024.0),
        (10.0, 3.0, 1000.0),
    ],
)
def test_pow_special_values(x: float, y: float, expected: float) -> None:
    got = detmath.pow(x, y)
    assert got == expected and math.copysign(1.0, got) == math.copysign(1.0, expected)


@pytest.mark.parametrize(("x", "y"), [(-2.0, 0.5), (-1.0, 1.5), (math.nan, 1.0), (2.0, math.nan)])
def test_pow_nan_cases(x: float, y: float) -> None:
    assert math.isnan(detmath.pow(x, y))


def nearest_float32(v: Decimal) -> np.float32:
    """The float32 nearest to ``v`` (ties to even), decided exactly."""
    f = np.float32(float(v))
    candidates = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    exact = Fraction(v)
    best = min(
        candidates, key=lambda c: (abs(Fraction(float(c)) - exact), int(c.view(np.int32)) & 1)
    )
    return np.float32(best)


@nb.njit  # not cached: it links detmath, whose edits numba would not see
def _pow32_all(bases: np.ndarray, w: np.float32, out: np.ndarray) -> None:
    for i in range(bases.size):
        out[i] = detmath.pow32(bases[i], w)


def test_pow32_is_the_correctly_rounded_float32_power() -> None:
    """For every base of the multiply rule and a spread of weights: pow32 equals the exact
    power rounded once to float32 (it could differ only when the exact power lies within about
    a double ulp of a float32 midpoint, which none of these do)."""
    bases = np.array(MULTIPLY_BASES, dtype=np.float32)
    out = np.empty_like(bases)
    for w in [*RNG.uniform(-1.0, 2.0, 40), 1.0, 2.0, 0.5, -1.0, 1e-3]:
        w32 = np.float32(w)
        _pow32_all(bases, w32, out)
        for b, got in zip(bases, out, strict=True):
            assert got == nearest_float32(exact_pow(float(b), float(w32))), (b, w32)


@nb.njit  # not cached: it links detmath, whose edits numba would not see
def _log2_parts_jit(x: float) -> tuple[float, float]:
    return detmath.log2_parts(x)


@nb.njit  # not cached: it links detmath, whose edits numba would not see
def _pow_from_log2_jit(x: float, y: float, t1: float, t2: float) -> float:
    return detmath.pow_from_log2(x, y, t1, t2)


def test_log2_parts_are_the_same_in_python_and_compiled() -> None:
    """The multiply rule's table is built by running log2_parts as plain Python at import;
    the kernel's pow runs the compiled form. They must agree bit for bit."""
    for x in [*MULTIPLY_BASES, *log_uniform(-1074, 1024, 300), 5e-324, 1.0, 1.5, 3.0]:
        assert detmath.log2_parts(float(x)) == _log2_parts_jit(float(x)), x


def test_pow_from_log2_is_pow() -> None:
    ys = [*RNG.uniform(-3, 3, 30), 0.0, 1.0, -1.0, 2.0, 0.5, 2.0**31, 2.0**33, math.nan, math.inf]
    for x in [*MULTIPLY_BASES[::8], *log_uniform(-1074, 1024, 40), 1.0, math.inf, 0.0]:
        t1, t2 = detmath.log2_parts(x) if 0 < x < math.inf else (math.nan, math.nan)
        for y in ys:
            a, b = _pow_from_log2_jit(x, float(y), t1, t2), detmath.pow(x, float(y))
            assert a == b or (math.isnan(a) and math.isnan(b)), (x, y)


@nb.njit  # not cached: it links detmath, whose edits numba would not see
def _powers32_jit(bases: np.ndarray, log2: np.ndarray, y: float, out: np.ndarray) -> None:
    detmath.powers32_from_log2(bases, log2, y, out)


def test_powers32_from_log2_is_pow32() -> None:
    """The multiply rule's table fill: every entry is pow32 of its base, whatever the weight
    (the bases include 0, which pow decides without a logarithm)."""
    bases = np.array([0.0, 1.0, *MULTIPLY_BASES], dtype=np.float32)
    log2 = np.array([detmath.log2_parts(float(max(b, 1e-37))) for b in bases]).T.copy()
    out = np.empty(bases.size, dtype=np.float32)
    expected = np.empty_like(out)
    weights = [*RNG.uniform(-1.0, 2.0, 30), 0.0, 1.0, -1.0, 2.0, 0.5, 1e-30, -3e-5]
    for w in np.array(weights, dtype=np.float32):
        _powers32_jit(bases.astype(np.float64), log2, float(w), out)
        _pow32_all(bases, w, expected)
        assert np.array_equal(out, expected, equal_nan=True), w


def test_exp2_tables_are_exact() -> None:
    """The pow tables: heads the doubles nearest to 2**(j/64), tails the doubles nearest to
    what is left, coefficients the doubles nearest to ln2**i / i!."""
    ln2 = CTX.ln(Decimal(2))
    for j in range(64):
        v = CTX.exp(CTX.divide(CTX.multiply(ln2, j), 64))
        assert power._EXP2_HI[j] == float(v)
        assert power._EXP2_LO[j] == float(CTX.subtract(v, Decimal(float(v))))
    coefficients = (power._E1, power._E2, power._E3, power._E4, power._E5, power._E6)
    for i, c in enumerate(coefficients, start=1):
        assert c == float(CTX.divide(CTX.power(ln2, i), math.factorial(i)))


def test_agrees_with_libm_to_an_ulp() -> None:
    """A sanity check against this machine's libm, with the tolerance of two libms that are
    each within an ulp (2 ulps; never equality, which differs by CPU)."""
    for x in RNG.uniform(-20, 20, 200):
        x = float(x)
        assert abs(detmath.exp(x) - math.exp(x)) <= 2 * math.ulp(math.exp(x))
        assert abs(detmath.sin(x) - math.sin(x)) <= 2 * math.ulp(math.sin(x))
        assert abs(detmath.cos(x) - math.cos(x)) <= 2 * math.ulp(math.cos(x))
        assert abs(detmath.log(abs(x)) - math.log(abs(x))) <= 2 * math.ulp(math.log(abs(x)))
        assert abs(detmath.pow(abs(x), 1.3) - abs(x) ** 1.3) <= 2 * math.ulp(abs(x) ** 1.3)


# ------------------------------------------------------------- no libm in the kernels

LIBM_NAMES = {
    "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sin", "cos", "tan", "asin",
    "acos", "atan", "atan2", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "pow", "hypot",
    "gamma", "lgamma", "erf", "erfc", "cbrt", "power", "float_power", "sinc", "deg2rad",
    "rad2deg", "radians", "degrees", "logaddexp", "logaddexp2",
}  # fmt: skip
KERNEL_SOURCES = [
    *sorted((ROOT / "fractals").rglob("*.py")),
    *sorted((ROOT / "ipmix_cli" / "augment").rglob("*.py")),
]


def _libm_uses(path: Path) -> list[str]:
    """``math.f`` / ``np.f`` / ``numpy.f`` for a transcendental ``f``, and ``a ** b`` with a
    non-integer-literal exponent, anywhere in ``path`` (except detmath itself)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in {"math", "np", "numpy"}
            and node.attr in LIBM_NAMES
        ):
            found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            exponent = node.right
            if isinstance(exponent, ast.UnaryOp) and isinstance(exponent.op, ast.USub):
                exponent = exponent.operand
            if not (isinstance(exponent, ast.Constant) and isinstance(exponent.value, int)):
                found.append(f"{path.name}:{node.lineno} **")
    return found


def test_no_transcendental_outside_detmath() -> None:
    """Every exp/log/sin/cos/pow that can shape output bytes goes through detmath: a libm (or
    numpy SIMD) call anywhere in the fractal library or the augment recipe fails this test."""
    uses = [u for p in KERNEL_SOURCES if "detmath" not in p.parts for u in _libm_uses(p)]
    assert len(KERNEL_SOURCES) >= 25 and uses == []  # (the census sees the kernels)
