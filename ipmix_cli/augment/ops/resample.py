"""Pillow's BILINEAR ``resize`` of RGB uint8 images, bit-exact, as a numba kernel.

At 224 px the ImageNet pre-transform (RandomResizedCrop: crop, then resize) was the largest
single cost of a sample, about 0.7-1.3 ms in Pillow, plus two array<->PIL copies. This kernel
reads the crop window straight out of the decoded image (no crop copy, no PIL image) and runs
both passes over whole rows at once, which LLVM vectorises: the horizontal pass is a vertical
one between two transposes (under 1 ns a pixel each), where Pillow walks each row scalar.

Bit-exactness rests on repeating libImaging/Resample.c step by step:

- the filter weights of each output pixel are computed in float64 in Pillow's order
  (``center = (xx + 0.5) * scale``; window ``[int(center - support + 0.5), int(center +
  support + 0.5))`` clamped to the image; weight ``1 - |(x - center + 0.5) / filterscale|``;
  normalised by their sum), then rounded to 22-bit fixed point as ``int(0.5 + w * 2**22)``;
- each pass sums ``pixel * weight`` in int32 from ``2**21`` and keeps ``sum >> 22`` clamped to
  0..255; integer sums are exact, so the order of the additions does not matter;
- the two passes round to uint8 in between, so their order matters (one grey level on some
  pixels). Pillow 13 runs the vertical pass first when the height shrinks by more than
  twice as many pixels as the width does (``H - H2 > 2 * (W - W2)``, height reduced), and,
  at the Python level, for images more than 100 times taller than wide; otherwise the
  horizontal one first. ``tests/test_resample.py`` checks this rule against Pillow itself
  on random shapes, since it is not documented.

The weights depend only on the two sizes, and the pixels only on integer arithmetic, so the
result is the same on every CPU.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

PRECISION_BITS = 22
_HALF = np.int32(1 << (PRECISION_BITS - 1))


@nb.njit(cache=True)
def coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(bounds, weights)`` of a resize from ``in_size`` to ``out_size`` along one axis, with
    ``first, count = bounds[i]``: output pixel ``i`` is ``sum(weights[i, k] * in[first + k]
    for k < count)`` in 22-bit fixed point."""
    scale = float(in_size) / out_size
    filterscale = scale if scale > 1.0 else 1.0
    support = filterscale  # the bilinear filter's support is 1
    ksize = int(math.ceil(support)) * 2 + 1
    inv_filterscale = 1.0 / filterscale
    bounds = np.empty((out_size, 2), np.int64)
    weights = np.zeros((out_size, ksize), np.int32)
    w = np.empty(ksize)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = int(center - support + 0.5)  # truncation toward zero, as C's (int)
        if xmin < 0:
            xmin = 0
        xmax = int(center + support + 0.5)
        if xmax > in_size:
            xmax = in_size
        xmax -= xmin
        total = 0.0
        for x in range(xmax):
            t = ((x + xmin) - center + 0.5) * inv_filterscale
            if t < 0.0:
                t = -t
            v = 1.0 - t if t < 1.0 else 0.0
            w[x] = v
            total += v
        for x in range(xmax):
            v = w[x] / total if total != 0.0 else w[x]
            s = v * (1 << PRECISION_BITS)
            weights[xx, x] = np.int32(-0.5 + s) if v < 0.0 else np.int32(0.5 + s)
        bounds[xx, 0] = xmin
        bounds[xx, 1] = xmax
    return bounds, weights


@nb.njit(cache=True)
def _vertical(
    src: np.ndarray,
    top: int,
    left: int,
    width: int,
    bounds: np.ndarray,
    weights: np.ndarray,
    out: np.ndarray,
) -> None:
    """Columns ``left .. left + width`` of ``src`` (rows from ``top``) resampled along y into
    ``out`` (H2, width, 3): each output row is a weighted sum of whole source rows, so the
    inner loops run over contiguous values and vectorise (slices rather than computed
    indices, and min/max rather than branches, are what let LLVM do it)."""
    n = width * 3
    acc = np.empty(n, np.int32)
    flat = src.reshape(-1)
    row_len = src.shape[1] * 3
    offset = left * 3
    for yy in range(out.shape[0]):
        acc[:] = _HALF
        first = bounds[yy, 0] + top
        for k in range(bounds[yy, 1]):
            wk = weights[yy, k]
            start = (first + k) * row_len + offset
            row = flat[start : start + n]
            for i in range(n):
                acc[i] += np.int32(row[i]) * wk
        dst = out[yy].reshape(-1)
        for i in range(n):
            dst[i] = np.uint8(min(max(acc[i] >> PRECISION_BITS, 0), 255))


_U1 = np.uint64(1)
_U2 = np.uint64(2)
_U3 = np.uint64(3)
_B8 = np.uint32(8)
_B16 = np.uint32(16)
_B24 = np.uint32(24)
_LOW = np.uint32(255)


@nb.njit(cache=True)
def _transpose(src: np.ndarray, top: int, left: int, rows: int, cols: int, out: np.ndarray) -> None:
    """``src[top:top+rows, left:left+cols]`` with its two axes swapped, into ``out`` (cols,
    rows, 3): the horizontal pass runs as a vertical one on it.

    Moving 3-byte pixels costs more than the arithmetic of the pass, so each pixel moves as 4
    bytes, read with the first byte of the pixel after it and written over the first byte of
    the next pixel of its ``out`` row, which a later iteration writes (source rows are taken
    in order). The last source row, whose neighbour bytes would land on finished pixels, and
    a pixel at the very end of ``src`` move 3 bytes at a time. Flat unsigned indices: signed
    ones made numba check every access for a negative index. 300 x 400 px: 196 us with 3-D
    indexing, 86-132 with bytes, 41-66 with 4-byte moves (one core, same process)."""
    if rows <= 0 or cols <= 0:
        return
    s = src.reshape(-1)
    d = out.reshape(-1)
    src_row = np.uint64(src.shape[1] * 3)
    out_row = np.uint64(out.shape[1] * 3)
    base = np.uint64(top) * src_row + np.uint64(left) * _U3
    end = np.uint64(s.shape[0])
    for y in range(rows):
        i = base + np.uint64(y) * src_row
        o = np.uint64(y) * _U3
        wide = cols if y < rows - 1 else 0
        if wide and i + np.uint64(3 * cols) >= end:  # no byte after the row's last pixel
            wide = cols - 1
        for _ in range(wide):
            v = np.uint32(s[i]) | (np.uint32(s[i + _U1]) << _B8)
            v |= (np.uint32(s[i + _U2]) << _B16) | (np.uint32(s[i + _U3]) << _B24)
            d[o] = np.uint8(v & _LOW)
            d[o + _U1] = np.uint8((v >> _B8) & _LOW)
            d[o + _U2] = np.uint8((v >> _B16) & _LOW)
            d[o + _U3] = np.uint8(v >> _B24)
            i += _U3
            o += out_row
        for _ in range(wide, cols):
            d[o] = s[i]
            d[o + _U1] = s[i + _U1]
            d[o + _U2] = s[i + _U2]
            i += _U3
            o += out_row


@nb.njit(cache=True)
def _horizontal_into(
    src: np.ndarray,
    top: int,
    left: int,
    rows: int,
    cols: int,
    bounds: np.ndarray,
    weights: np.ndarray,
    out: np.ndarray,
) -> None:
    """The horizontal pass over ``src[top:top+rows, left:left+cols]`` into ``out`` (rows, W2,
    3): transpose, resample along the (now vertical) x axis, transpose back."""
    across = np.empty((cols, rows, 3), np.uint8)
    _transpose(src, top, left, rows, cols, across)
    done = np.empty((out.shape[1], rows, 3), np.uint8)
    _vertical(across, 0, 0, rows, bounds, weights, done)
    _transpose(done, 0, 0, out.shape[1], rows, out)


@nb.njit(cache=True)
def vertical_first(height: int, width: int, out_height: int, out_width: int) -> bool:
    """Pillow 13's choice of pass order (see the module docstring)."""
    if out_height >= height:
        return False
    if height > 100 * width:
        return True
    return height - out_height > 2 * (width - out_width)


@nb.njit(cache=True)
def resize_window(
    img: np.ndarray, top: int, left: int, height: int, width: int, out_h: int, out_w: int
) -> np.ndarray:
    """``Image.fromarray(img[top:top+height, left:left+width]).resize((out_w, out_h),
    BILINEAR)`` as a new (out_h, out_w, 3) uint8 array, without copying the window first.
    ``img`` is a C-contiguous (H, W, 3) uint8 array."""
    out = np.empty((out_h, out_w, 3), np.uint8)
    resize_window_into(img, top, left, height, width, out)
    return out


@nb.njit(cache=True)
def resize_window_into(
    img: np.ndarray, top: int, left: int, height: int, width: int, out: np.ndarray
) -> None:
    """:func:`resize_window` into ``out`` (out_h, out_w, 3), C-contiguous: a batch's row, so
    the result is not copied into the batch afterwards."""
    out_h, out_w = out.shape[0], out.shape[1]
    need_h = out_w != width
    need_v = out_h != height
    if not need_h and not need_v:
        for y in range(height):
            src = img[top + y, left : left + width].reshape(-1)
            dst = out[y].reshape(-1)
            for k in range(3 * width):
                dst[k] = src[k]
        return
    if not need_v:
        bx, kx = coefficients(width, out_w)
        _horizontal_into(img, top, left, height, width, bx, kx, out)
        return
    by, ky = coefficients(height, out_h)
    if not need_h:
        _vertical(img, top, left, width, by, ky, out)
        return
    bx, kx = coefficients(width, out_w)
    if vertical_first(height, width, out_h, out_w):
        tmp = np.empty((out_h, width, 3), np.uint8)
        _vertical(img, top, left, width, by, ky, tmp)
        _horizontal_into(tmp, 0, 0, out_h, width, bx, kx, out)
        return
    # Horizontal first, over the source rows the vertical pass will read only.
    first = by[0, 0]
    last = by[out_h - 1, 0] + by[out_h - 1, 1]
    for yy in range(out_h):
        by[yy, 0] -= first
    tmp = np.empty((last - first, out_w, 3), np.uint8)
    _horizontal_into(img, top + first, left, last - first, width, bx, kx, tmp)
    _vertical(tmp, 0, 0, out_w, by, ky, out)


def resize_bilinear(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow's ``resize((size[1], size[0]), BILINEAR)`` of a uint8 (H, W, 3) array."""
    arr = np.ascontiguousarray(img)
    h, w = arr.shape[:2]
    return resize_window(arr, 0, 0, h, w, int(size[0]), int(size[1]))
