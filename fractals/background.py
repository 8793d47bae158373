"""Backgrounds: diamond-square plasma noise coloured in HSV, or plain black.

Plasma (as in Anderson & Farrell): a diamond-square height field on a ``(2**n + 1)``-square
grid with random corners, noise amplitude ``0.5 * exp(decay * (1 - level))`` with decay
U(0.4, 0.8), wrapping neighbours at the borders. Its value ``x`` is coloured with hue
``x * U(0.25, 1) + U(0, 1)`` (wrapped over the full circle), saturation ``x * U(0.1, 0.3) +
U(0.4, 0.6)`` and value ``x * U(0.3, 0.6) + U(0.4, 0.6)`` (both clipped to [0, 1]).

Design choices, and why:

* Resolution independence. Levels are generated coarse to fine from one stream, and the number
  and order of draws of a level do not depend on the grid size, so a larger grid is the smaller
  one plus finer detail. Pixel ``p`` of a ``size``-px image samples grid node
  ``p * 2**n // size`` (the identity when ``size`` is a power of two). Re-rendering a record at
  another size therefore gives the same background at that resolution.
* Speed. The per-node noise uses 16 bits of a 64-bit draw (four nodes per draw); the colour is
  a function of ``x`` alone, so it is looked up in a 2048-entry table spanning the field's range
  rather than converted per pixel (at most about one 8-bit level of error).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from fractals import colour, detmath, rng

PLASMA_BINS = 2048
_M16 = np.uint64(0xFFFF)
_INV16 = 1.0 / 65536.0
_U16 = np.uint64(16)


@nb.njit(cache=True)
def levels_for(size: int) -> int:
    """Number of diamond-square levels: the smallest ``n`` with ``2**n >= size``."""
    n = 0
    while (1 << n) < size:
        n += 1
    return n


@nb.njit(cache=True)
def diamond_square(state: np.ndarray, n: int, decay: float) -> np.ndarray:
    """The ``(2**n + 1)``-square diamond-square field drawn from ``state`` (float32 storage, so
    the 257-square field of a 256-px image fits in L2; sums are float64).

    Draw order: the four corners (U(0, 1)), then for each level the diamond centres and the
    square (edge) nodes, row-major, each with noise U(-m, m) from a 16-bit slice of a draw.
    Indices are unsigned so that the compiler emits no negative-index wrap-around checks. The
    noise draw is written out in both loops: a helper returning ``(noise, word, left)`` was not
    inlined and made the field three times slower.
    """
    side = 1 << n
    a = np.zeros((side + 1, side + 1), dtype=np.float32)
    a[0, 0] = rng.uniform(state)
    a[0, side] = rng.uniform(state)
    a[side, 0] = rng.uniform(state)
    a[side, side] = rng.uniform(state)
    word = np.uint64(0)
    left = 0  # 16-bit slices left in ``word``
    top = np.uint64(side)
    zero = np.uint64(0)
    for k in range(1, n + 1):
        m = 0.5 * detmath.exp(decay * (1 - k))  # detmath: the same bits on every CPU
        scale = 2.0 * m * _INV16  # 16-bit slice -> U(-m, m)
        half = np.uint64(side >> k)
        step = half + half
        # diamond: centre of each square
        i = half
        while i < top:
            up = a[i - half]
            down = a[i + half]
            row = a[i]
            j = half
            while j < top:
                if left == 0:
                    word = rng.next_u64(state)
                    left = 4
                noise = float(np.int64(word & _M16)) * scale - m
                word >>= _U16
                left -= 1
                row[j] = (
                    0.25 * (np.float64(up[j - half]) + np.float64(up[j + half]))
                    + 0.25 * (np.float64(down[j - half]) + np.float64(down[j + half]))
                    + noise
                )
                j += step
            i += step
        # square: edge midpoints, neighbours wrap around the (periodic) border
        i = zero
        while i <= top:
            up = a[i - half if i > zero else top - half]
            down = a[i + half if i < top else half]
            row = a[i]
            j = half if (i // half) % np.uint64(2) == zero else zero
            while j <= top:
                lft = j - half if j > zero else top - half
                rgt = j + half if j < top else half
                if left == 0:
                    word = rng.next_u64(state)
                    left = 4
                noise = float(np.int64(word & _M16)) * scale - m
                word >>= _U16
                left -= 1
                row[j] = (
                    0.25 * (np.float64(up[j]) + np.float64(down[j]))
                    + 0.25 * (np.float64(row[lft]) + np.float64(row[rgt]))
                    + noise
                )
                j += step
            i += half
    return a


@nb.njit(cache=True)
def plasma_field(state: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Draw a plasma for a ``size``-px image: returns ``(field, table, lo, scale)``, where pixel
    value ``x`` has colour ``table[min(int((x - lo) * scale), PLASMA_BINS - 1)]``.

    Draw order: decay, hue scale, hue shift, sat scale, sat shift, val scale, val shift, then
    the field (whose draw count depends on the size, so it comes last).
    """
    decay = rng.uniform_range(state, 0.4, 0.8)
    hue_scale = rng.uniform_range(state, 0.25, 1.0)
    hue_shift = rng.uniform(state)
    sat_scale = rng.uniform_range(state, 0.1, 0.3)
    sat_shift = rng.uniform_range(state, 0.4, 0.6)
    val_scale = rng.uniform_range(state, 0.3, 0.6)
    val_shift = rng.uniform_range(state, 0.4, 0.6)
    field = diamond_square(state, levels_for(size), decay)
    # colour table over the range of the whole field (contiguous, vectorisable scan)
    flat = field.ravel()
    lo = np.float32(np.inf)
    hi = np.float32(-np.inf)
    for p in range(flat.shape[0]):
        lo = min(lo, flat[p])
        hi = max(hi, flat[p])
    span = np.float64(hi) - np.float64(lo)
    scale = PLASMA_BINS / span if span > 0.0 else 0.0
    table = np.empty((PLASMA_BINS, 3), dtype=np.uint8)
    for b in range(PLASMA_BINS):
        x = lo + (b + 0.5) / PLASMA_BINS * span
        h = x * hue_scale + hue_shift
        s = min(max(x * sat_scale + sat_shift, 0.0), 1.0)
        v = min(max(x * val_scale + val_shift, 0.0), 1.0)
        r, g, bl = colour.hsv_to_rgb(h, s, v)
        table[b, 0] = colour.to_u8(r)
        table[b, 1] = colour.to_u8(g)
        table[b, 2] = colour.to_u8(bl)
    return field, table, np.float64(lo), scale


@nb.njit(cache=True)
def paint_field(out: np.ndarray, field: np.ndarray, table: np.ndarray, lo: float, scale: float):
    """Colour ``out`` from a plasma field; pixel ``p`` samples node ``p * 2**n // size``."""
    size = out.shape[0]
    side = field.shape[0] - 1
    last = PLASMA_BINS - 1
    nodes = np.empty(size, dtype=np.int64)  # grid node sampled by pixel row / column p
    for p in range(size):
        nodes[p] = p * side // size
    for i in range(size):
        row = field[nodes[i]]
        dst = out[i]
        for j in range(size):
            k = min(int((np.float64(row[nodes[j]]) - lo) * scale), last)
            dst[j, 0] = table[k, 0]
            dst[j, 1] = table[k, 1]
            dst[j, 2] = table[k, 2]


@nb.njit(cache=True)
def plasma(out: np.ndarray, state: np.ndarray) -> None:
    """Fill ``out`` (``size x size x 3`` uint8) with a coloured plasma drawn from ``state``."""
    field, table, lo, scale = plasma_field(state, out.shape[0])
    paint_field(out, field, table, lo, scale)


@nb.njit(cache=True)
def black(out: np.ndarray) -> None:
    """Fill ``out`` with black."""
    out[:, :, :] = 0
