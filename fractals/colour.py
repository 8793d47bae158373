"""Colouring a graded render, in HSV, with numba.

Hue comes from the graded value (hits / max) plus a random per-image shift that wraps over the
full hue circle; saturation is U(0.3, 1) and value U(0.5, 1) per image; pixels with no hits stay
transparent (the background shows through). The reference feeds 0-255 hues to an OpenCV
conversion whose hue circle ends at 180, which makes some hues twice as likely; here hue is a
float in [0, 1) over the whole circle.

Why a lookup table: with saturation and value fixed per image, the colour of a pixel is a
function of its hue alone, so the HSV -> RGB conversion is done once per table entry (1536 hue
bins, 256 per hue sector) instead of once per lit pixel; per pixel it is then a multiply and a
three-byte copy. The hue quantisation moves a channel by at most one 8-bit level.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from fractals import rng

HUE_BINS = 1536
MIN_SAT = 0.3
MIN_VAL = 0.5


@nb.njit(cache=True)
def hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    """HSV -> RGB on floats in [0, 1], hue wrapping (same result as ``colorsys.hsv_to_rgb``).

    Branch-free form: channel ``c`` with ``k = (c_offset + 6 h) mod 6`` is
    ``v - v s max(0, min(k, 4 - k, 1))`` with offsets 5, 3, 1 for R, G, B.
    """
    h6 = (h - math.floor(h)) * 6.0  # in [0, 6]
    vs = v * s
    k = 5.0 + h6
    k = k - 6.0 if k >= 6.0 else k  # (5 + h6) mod 6 without a libm fmod call
    r = v - vs * max(0.0, min(k, min(4.0 - k, 1.0)))
    k = 3.0 + h6
    k = k - 6.0 if k >= 6.0 else k
    g = v - vs * max(0.0, min(k, min(4.0 - k, 1.0)))
    k = 1.0 + h6
    k = k - 6.0 if k >= 6.0 else k
    b = v - vs * max(0.0, min(k, min(4.0 - k, 1.0)))
    return r, g, b


@nb.njit(cache=True)
def to_u8(x: float) -> np.uint8:
    """Round a [0, 1] float to a uint8 level, clamping out-of-range input."""
    y = x * 255.0 + 0.5
    y = y if y > 0.0 else 0.0
    y = y if y < 255.0 else 255.0
    return np.uint8(int(y))


@nb.njit(cache=True)
def hue_table(sat: float, val: float) -> np.ndarray:
    """RGB (uint8) of ``HUE_BINS`` hues at bin centres, for fixed saturation and value."""
    table = np.empty((HUE_BINS, 3), dtype=np.uint8)
    for i in range(HUE_BINS):
        r, g, b = hsv_to_rgb((i + 0.5) / HUE_BINS, sat, val)
        table[i, 0] = to_u8(r)
        table[i, 1] = to_u8(g)
        table[i, 2] = to_u8(b)
    return table


@nb.njit(cache=True)
def draw_colour(state: np.ndarray) -> tuple[float, float, float]:
    """The per-image colour draws: hue shift U(0, 1), saturation U(0.3, 1), value U(0.5, 1)."""
    shift = rng.uniform(state)
    sat = rng.uniform_range(state, MIN_SAT, 1.0)
    val = rng.uniform_range(state, MIN_VAL, 1.0)
    return shift, sat, val


@nb.njit(cache=True)
def paint(
    out: np.ndarray,
    graded: np.ndarray,
    peak: int,
    top: int,
    left: int,
    shift: float,
    table: np.ndarray,
) -> int:
    """Paint the lit pixels of ``graded`` (an ``s x s`` hit grid with maximum ``peak``) onto
    ``out`` with top-left corner at ``(top, left)`` (it may hang off the image). Colour: hue
    ``shift + hits / peak`` wrapped to [0, 1), through ``table``. Unlit pixels are left as they
    are (transparent), which is the composite. Returns the number of pixels painted.
    """
    s = graded.shape[0]
    height = out.shape[0]
    width = out.shape[1]
    if peak <= 0:
        return 0
    inv = 1.0 / peak
    r0 = max(0, -top)
    r1 = min(s, height - top)
    c0 = max(0, -left)
    c1 = min(s, width - left)
    painted = 0
    last = np.int32(HUE_BINS - 1)
    keep = np.int32(-1)
    idx = np.empty(max(c1 - c0, 0), dtype=np.int32)
    for r in range(r0, r1):
        dst = out[top + r, left + c0 : left + c1]
        src = graded[r, c0:c1]
        # two passes per row: the index arithmetic vectorises, the table gather cannot
        for c in range(c1 - c0):
            hits = src[c]
            h = shift + hits * inv
            h = h - 1.0 if h >= 1.0 else h
            k = min(np.int32(h * HUE_BINS), last)
            idx[c] = k if hits > 0 else keep
        for c in range(c1 - c0):
            k = idx[c]
            if k >= 0:
                dst[c, 0] = table[k, 0]
                dst[c, 1] = table[k, 1]
                dst[c, 2] = table[k, 2]
                painted += 1
    return painted


@nb.njit(cache=True)
def paint_over_field(
    out: np.ndarray,
    graded: np.ndarray,
    peak: int,
    shift: float,
    table: np.ndarray,
    field: np.ndarray,
    field_table: np.ndarray,
    lo: float,
    scale: float,
) -> int:
    """Background and fractal in one pass, for the common case of one full-frame fractal on a
    plasma whose grid matches the image (power-of-two size): each output pixel is written once,
    from a joined table (fractal hues, then plasma colours), instead of the plasma being written
    and then partly overwritten. Same bytes as the plasma followed by :func:`paint`."""
    size = out.shape[0]
    nf = table.shape[0]
    nb_ = field_table.shape[0]
    joined = np.empty((nf + nb_, 3), dtype=np.uint8)
    joined[:nf] = table
    joined[nf:] = field_table
    inv = 1.0 / peak if peak > 0 else 0.0
    last = np.int32(nf - 1)
    last_bg = np.int32(nb_ - 1)
    offset = np.int32(nf)
    painted = 0
    idx = np.empty(size, dtype=np.int32)
    for i in range(size):
        dst = out[i]
        src = graded[i]
        row = field[i]
        # two passes per row: the index arithmetic and select vectorise, the gather cannot
        for j in range(size):
            hits = src[j]
            h = shift + hits * inv
            h = h - 1.0 if h >= 1.0 else h
            kf = min(np.int32(h * nf), last)
            kb = min(np.int32((np.float64(row[j]) - lo) * scale), last_bg) + offset
            idx[j] = kf if hits > 0 else kb
        for j in range(size):
            k = idx[j]
            dst[j, 0] = joined[k, 0]
            dst[j, 1] = joined[k, 1]
            dst[j, 2] = joined[k, 2]
        for j in range(size):
            painted += src[j] > 0
    return painted
