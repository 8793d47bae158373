"""IPMix's pixel-level mixing rules and the float -> uint8 conversion of mixed patches.

The rules work on float32 images in [0, 1] (``a`` the current image, ``b`` the source), in the
same float32 operation order as the reference's torch code, so that the truncating conversion
back to uint8 lands on the same integers. All scalar kernels are ``inline="always"`` so the patch
kernel (patch.py) fuses them into one loop; the array versions exist for tests and for callers
that want one rule on whole images.

The conversion reproduces the reference's ``ToPILImage`` on a float tensor: multiply by 255,
truncate toward zero, cast to uint8. Out-of-range values therefore WRAP modulo 256 (-25.5 ->
231, 331.5 -> 75) and non-finite or huge values become 0 (the x86 float -> int32 conversion
gives 0x80000000, whose low byte is 0). That wrap is the "scar" look of IPMix patches and is
part of the distribution the paper evaluated; ``OVERFLOW_CLIP`` clips instead.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from fractals.detmath import log2_parts, pow32
from fractals.rng import beta_1b, beta_a1, coin, uniform

__all__ = [
    "MULTIPLY_BASE_A",
    "MULTIPLY_BASE_B",
    "MULTIPLY_LOG2",
    "OVERFLOW_CLIP",
    "OVERFLOW_WRAP",
    "RULE_ADD",
    "RULE_MULTIPLY",
    "RULE_NAMES",
    "RULE_RANDOM_ELEMS",
    "RULE_RANDOM_PIXELS",
    "U8_TO_UNIT",
    "add_px",
    "draw_weights",
    "mix_add",
    "mix_multiply",
    "mix_random_elems",
    "mix_random_pixels",
    "multiply_px",
    "overflow_code",
    "truncate_clip",
    "truncate_wrap",
    "unit_to_uint8",
]

RULE_ADD = 0
RULE_MULTIPLY = 1
RULE_RANDOM_PIXELS = 2
RULE_RANDOM_ELEMS = 3
RULE_NAMES: tuple[str, ...] = ("add", "multiply", "random_pixels", "random_elems")
N_RULES = 4

OVERFLOW_WRAP = 0
OVERFLOW_CLIP = 1

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F2 = np.float32(2.0)
_F255 = np.float32(255.0)
_TINY = np.float32(1e-37)
_I32_LIMIT = np.float32(2147483648.0)  # 2**31: beyond it the x86 int32 conversion gives 0

# v / 255 in float32 for every uint8 v: what torch's ToTensor produces. float32(v/255) * 255
# truncates back to exactly v for all 256 values (checked in tests), so untouched pixels survive
# the round trip unchanged.
U8_TO_UNIT = np.arange(256, dtype=np.float32) / np.float32(255.0)


def _multiply_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The multiply rule's bases for the 256 pixel values and their base-2 logarithms.

    ``base_a[v] = 2 U8_TO_UNIT[v]`` (the current image's side) and ``base_b[v] = max(base_a[v],
    1e-37)`` (the source's side, clipped), exactly, in float64; ``log2[:, v]`` is
    :func:`fractals.detmath.log2_parts` of ``base_b[v]`` (which is ``base_a[v]`` except at 0,
    where ``base_a`` needs no logarithm: ``0 ** w`` is decided before one is used). The patch
    kernel raises the bases to a patch's weight from these logarithms
    (:func:`fractals.detmath.powers32_from_log2`, or ``pow_from_log2`` per value for a small
    box): the same bits as :func:`multiply_px`'s ``pow32``, at about 5 ns a power instead of
    40, which keeps the rule as fast as it was with libm's ``powf``. ``log2_parts`` runs here
    as plain Python (the same IEEE operations in the same order as its compiled form, checked
    in tests), so importing compiles nothing; it takes about 7 ms.
    """
    base_a = (U8_TO_UNIT * _F2).astype(np.float64)
    base_b = np.maximum(U8_TO_UNIT * _F2, _TINY).astype(np.float64)
    log2 = np.empty((2, 256))
    for v in range(256):
        log2[0, v], log2[1, v] = log2_parts(float(base_b[v]))
    return base_a, base_b, log2


MULTIPLY_BASE_A, MULTIPLY_BASE_B, MULTIPLY_LOG2 = _multiply_tables()


def overflow_code(name: str) -> int:
    """Map the config's ``patch_overflow`` string to the kernel's integer code."""
    if name == "wrap":
        return OVERFLOW_WRAP
    if name == "clip":
        return OVERFLOW_CLIP
    raise ValueError(f"patch_overflow must be 'wrap' or 'clip', got {name!r}")


@nb.njit(cache=True)
def draw_weights(state: np.ndarray, beta: float) -> tuple[np.float32, np.float32, int]:
    """The add/multiply weights (wa, wb) and which branch produced them.

    Branch 0 (probability 1/2): wa ~ Beta(beta, 1), wb ~ Beta(1, beta) -- a convex-ish blend.
    Branch 1: wa = 1 + Beta(1, beta), wb = -Beta(1, beta) -- extrapolation away from ``b``.
    Draw order: branch coin, then wa, then wb.
    """
    if coin(state):
        wa = np.float32(beta_a1(state, beta))
        wb = np.float32(beta_1b(state, beta))
        return wa, wb, 0
    wa = _F1 + np.float32(beta_1b(state, beta))
    wb = -np.float32(beta_1b(state, beta))
    return wa, wb, 1


@nb.njit(cache=True, inline="always")
def add_px(a: np.float32, b: np.float32, wa: np.float32, wb: np.float32) -> np.float32:
    """``((wa * (2a - 1) + wb * (2b - 1)) + 1) / 2`` in float32, reference order."""
    return ((wa * (a * _F2 - _F1) + wb * (b * _F2 - _F1)) + _F1) / _F2


@nb.njit(cache=True, inline="always")
def multiply_px(a: np.float32, b: np.float32, wa: np.float32, wb: np.float32) -> np.float32:
    """``((2a) ** wa * max(2b, 1e-37) ** wb) / 2`` in float32 (the clip keeps 0 ** negative
    finite; it can still reach ~1e37, which the wrap conversion maps to 0).

    The powers are :func:`fractals.detmath.pow32`, not libm's ``powf``: powf's last bit differs
    between CPUs and libms, and the wrap conversion turns one ulp of a huge value into tens of
    grey levels."""
    bb = b * _F2
    if bb < _TINY:
        bb = _TINY
    return pow32(a * _F2, wa) * pow32(bb, wb) / _F2


@nb.njit(cache=True, inline="always")
def truncate_wrap(v255: np.float32) -> np.uint8:
    """Reference cast of an already-scaled value: truncate toward zero, keep the low byte;
    NaN, inf and |v| >= 2**31 give 0."""
    if not (v255 > -_I32_LIMIT and v255 < _I32_LIMIT):  # also catches NaN
        return np.uint8(0)
    return np.uint8(np.int64(v255) & 255)


@nb.njit(cache=True, inline="always")
def truncate_clip(v255: np.float32) -> np.uint8:
    """Like :func:`truncate_wrap` but clipping to [0, 255] (NaN gives 0)."""
    if v255 >= _F255:
        return np.uint8(255)
    if not v255 > _F0:  # also catches NaN
        return np.uint8(0)
    return np.uint8(np.int64(v255))


@nb.njit(cache=True)
def unit_to_uint8(values: np.ndarray, overflow: int) -> np.ndarray:
    """Convert float [0, 1] values (any shape) to uint8 the reference's way: ``v * 255`` in
    float32, then :func:`truncate_wrap` (``OVERFLOW_WRAP``) or :func:`truncate_clip`."""
    flat = values.ravel()
    out = np.empty(flat.size, dtype=np.uint8)
    for i in range(flat.size):
        v = np.float32(flat[i]) * _F255
        if overflow == OVERFLOW_WRAP:
            out[i] = truncate_wrap(v)
        else:
            out[i] = truncate_clip(v)
    return out.reshape(values.shape)


@nb.njit(cache=True)
def mix_add(a: np.ndarray, b: np.ndarray, wa: float, wb: float) -> np.ndarray:
    """The add rule on whole float32 arrays (same shape)."""
    fa = a.ravel()
    fb = b.ravel()
    out = np.empty(fa.size, dtype=np.float32)
    wa32 = np.float32(wa)
    wb32 = np.float32(wb)
    for i in range(fa.size):
        out[i] = add_px(np.float32(fa[i]), np.float32(fb[i]), wa32, wb32)
    return out.reshape(a.shape)


@nb.njit(cache=True)
def mix_multiply(a: np.ndarray, b: np.ndarray, wa: float, wb: float) -> np.ndarray:
    """The multiply rule on whole float32 arrays (same shape)."""
    fa = a.ravel()
    fb = b.ravel()
    out = np.empty(fa.size, dtype=np.float32)
    wa32 = np.float32(wa)
    wb32 = np.float32(wb)
    for i in range(fa.size):
        out[i] = multiply_px(np.float32(fa[i]), np.float32(fb[i]), wa32, wb32)
    return out.reshape(a.shape)


@nb.njit(cache=True)
def mix_random_pixels(a: np.ndarray, b: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, float]:
    """random_pixels on (H, W, C) arrays: q ~ U(0, 1) once, then one U(0, 1) per pixel (shared
    by its channels); the pixel keeps ``a`` where that draw is < q, else takes ``b``.
    Returns (out, q). Draw order: q, then pixels in row-major order."""
    q = uniform(state)
    out = np.empty(a.shape, dtype=np.float32)
    for y in range(a.shape[0]):
        for x in range(a.shape[1]):
            keep = uniform(state) < q
            for ch in range(a.shape[2]):
                out[y, x, ch] = a[y, x, ch] if keep else b[y, x, ch]
    return out, q


@nb.njit(cache=True)
def mix_random_elems(a: np.ndarray, b: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, float]:
    """random_elems on (H, W, C) arrays: like :func:`mix_random_pixels` with one draw per
    element (channels decided independently). Returns (out, q)."""
    q = uniform(state)
    out = np.empty(a.shape, dtype=np.float32)
    for y in range(a.shape[0]):
        for x in range(a.shape[1]):
            for ch in range(a.shape[2]):
                out[y, x, ch] = a[y, x, ch] if uniform(state) < q else b[y, x, ch]
    return out, q
