"""Point (per-value) image ops with Pillow's exact semantics, as numba kernels.

Every kernel takes a uint8 ``H x W x 3`` RGB array of any size and returns a new array of the
same shape; parameters are explicit (the recipe layer draws them), nothing here is random.
The LUT-building code follows Pillow's ``ImageOps`` line by line (integer floor divisions,
Python's float ``//``, truncating ``int()``), because the goal is bit-identical output, not
"close": downstream statistics are compared against the PIL-based reference.

Speed notes: posterize, solarize and invert are written as branch-free arithmetic so LLVM
vectorises them; equalize and autocontrast need one histogram pass and one table-lookup pass.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

_U1 = np.uint64(1)
_U2 = np.uint64(2)
_U3 = np.uint64(3)


@nb.njit(cache=True)
def channel_histogram(img: np.ndarray) -> np.ndarray:
    """Per-channel 256-bin histogram of ``img`` as a (3, 256) int64 array.

    Two interleaved partial histograms per channel (even/odd columns) break the
    load-increment-store dependency chain that neighbouring equal pixels create, which is
    the common case in natural images; they are summed at the end.
    """
    H, W = img.shape[0], img.shape[1]
    part = np.zeros((2, 3, 256), np.int64)
    W2 = W - (W & 1)
    for i in range(H):
        for j in range(0, W2, 2):
            part[0, 0, img[i, j, 0]] += 1
            part[0, 1, img[i, j, 1]] += 1
            part[0, 2, img[i, j, 2]] += 1
            part[1, 0, img[i, j + 1, 0]] += 1
            part[1, 1, img[i, j + 1, 1]] += 1
            part[1, 2, img[i, j + 1, 2]] += 1
        if W2 != W:
            part[0, 0, img[i, W - 1, 0]] += 1
            part[0, 1, img[i, W - 1, 1]] += 1
            part[0, 2, img[i, W - 1, 2]] += 1
    hist = np.empty((3, 256), np.int64)
    for c in range(3):
        for v in range(256):
            hist[c, v] = part[0, c, v] + part[1, c, v]
    return hist


@nb.njit(cache=True)
def apply_lut(img: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map every value of channel ``c`` through ``lut[c]`` ((3, 256) uint8), as Image.point."""
    H, W = img.shape[0], img.shape[1]
    out = np.empty((H, W, 3), np.uint8)
    for i in range(H):
        for j in range(W):
            out[i, j, 0] = lut[0, img[i, j, 0]]
            out[i, j, 1] = lut[1, img[i, j, 1]]
            out[i, j, 2] = lut[2, img[i, j, 2]]
    return out


@nb.njit(cache=True)
def apply_lut_into(
    img: np.ndarray, lut: np.ndarray, out: np.ndarray, top: int, left: int, ph: int, pw: int
) -> None:
    """:func:`apply_lut` over the ``ph`` x ``pw`` box at (top, left) only, into that box of
    ``out``: a patch that mixes in a point op of ``x`` needs only its box mapped.

    Flat unsigned indices: with the box's corner not known to be >= 0, numba checks every
    signed index for wrap-around, which made a whole 224 px image cost 115-127 us against
    14-24 us for :func:`apply_lut`."""
    src = np.ascontiguousarray(img).reshape(-1)
    dst = out.reshape(-1)
    l0, l1, l2 = lut[0], lut[1], lut[2]
    row = np.uint64(3 * img.shape[1])
    for i in range(np.uint64(top), np.uint64(top + ph)):
        first = i * row + _U3 * np.uint64(left)
        for k in range(first, first + _U3 * np.uint64(pw), _U3):
            dst[k] = l0[src[k]]
            dst[k + _U1] = l1[src[k + _U1]]
            dst[k + _U2] = l2[src[k + _U2]]


@nb.njit(cache=True)
def value_op_into(
    img: np.ndarray, op: int, param: int, out: np.ndarray, top: int, left: int, ph: int, pw: int
) -> None:
    """Posterize (``op`` 0) keeping ``param`` bits, solarize (1) at threshold ``param`` or
    invert (2) over the ``ph`` x ``pw`` box at (top, left) only, into that box of ``out``:
    the same arithmetic as :func:`posterize`, :func:`solarize` and :func:`invert`, one
    contiguous run of values per row (a table lookup per value was 4x slower)."""
    src = np.ascontiguousarray(img).reshape(-1)
    dst = out.reshape(-1)
    m = np.uint8(posterize_mask(param))
    t = np.int32(param)
    row = 3 * img.shape[1]
    n = 3 * pw
    for i in range(top, top + ph):
        first = i * row + 3 * left
        s = src[first : first + n]
        d = dst[first : first + n]
        if op == 0:
            for k in range(n):
                d[k] = s[k] & m
        elif op == 1:
            for k in range(n):
                v = np.int32(s[k])
                d[k] = np.uint8(255 - v if v >= t else v)
        else:
            for k in range(n):
                d[k] = ~s[k]


@nb.njit(cache=True)
def mirror_into(img: np.ndarray, out: np.ndarray, top: int, left: int, ph: int, pw: int) -> None:
    """The box (top, left, ph, pw) of :func:`mirror`'s result, into that box of ``out``."""
    src = np.ascontiguousarray(img).reshape(-1)
    dst = out.reshape(-1)
    row = np.uint64(3 * img.shape[1])
    for i in range(np.uint64(top), np.uint64(top + ph)):
        # Output pixel j of row i reads pixel W - 1 - j: value k + ch from mirror - k + ch.
        base = i * row
        mirror = base + base + row - _U3  # twice the row start, plus the last pixel's offset
        for k in range(base + _U3 * np.uint64(left), base + _U3 * np.uint64(left + pw), _U3):
            j = mirror - k
            dst[k] = src[j]
            dst[k + _U1] = src[j + _U1]
            dst[k + _U2] = src[j + _U2]


@nb.njit(cache=True)
def _clip_lut_value(v: int) -> np.uint8:
    # Pillow converts a Python int LUT entry to UINT8 by clipping to [0, 255].
    if v < 0:
        return np.uint8(0)
    if v > 255:
        return np.uint8(255)
    return np.uint8(v)


@nb.njit(cache=True)
def equalize_lut(hist: np.ndarray) -> np.ndarray:
    """ImageOps.equalize's LUT for a (3, 256) histogram, same integer arithmetic.

    Pillow's table can reach 256 at the top occupied bin (``n // step`` with a rounding
    offset of ``step // 2``); the C side clips list entries to 255 when it builds the
    8-bit table, so we clip too.
    """
    lut = np.empty((3, 256), np.uint8)
    for c in range(3):
        n_nonzero = 0
        total = 0
        last = 0
        for v in range(256):
            h = hist[c, v]
            if h != 0:
                n_nonzero += 1
                total += h
                last = h
        step = (total - last) // 255 if n_nonzero > 1 else 0
        if step == 0:
            for v in range(256):
                lut[c, v] = v
        else:
            n = step // 2
            for v in range(256):
                lut[c, v] = _clip_lut_value(n // step)
                n += hist[c, v]
    return lut


@nb.njit(cache=True)
def equalize(img: np.ndarray) -> np.ndarray:
    """ImageOps.equalize(img): per-channel histogram equalisation, bit-exact."""
    return apply_lut(img, equalize_lut(channel_histogram(img)))


@nb.njit(cache=True)
def _py_float_floordiv(a: float, b: float) -> float:
    """Python's ``a // b`` for floats (CPython's fmod-based algorithm, not floor(a / b)).

    The two differ when ``a / b`` rounds up onto an integer; autocontrast's
    ``int(n * cutoff // 100)`` must match Python exactly.
    """
    mod = np.fmod(a, b)
    div = (a - mod) / b
    if mod != 0.0 and (b < 0.0) != (mod < 0.0):
        div -= 1.0
    if div != 0.0:
        floordiv = math.floor(div)
        if div - floordiv > 0.5:
            floordiv += 1.0
    else:
        floordiv = math.copysign(0.0, a / b)
    return floordiv


@nb.njit(cache=True)
def autocontrast_lut(hist: np.ndarray, cutoff: float) -> np.ndarray:
    """ImageOps.autocontrast's LUT for a (3, 256) histogram and a float ``cutoff`` (percent,
    applied to both ends), reproducing Pillow's loop structure, including its quirks:
    a cutoff of exactly 0 skips the cut, the cut counts are ``int(n * cutoff // 100)`` in
    float arithmetic, and the scale/offset are doubles truncated with ``int()``."""
    lut = np.empty((3, 256), np.uint8)
    h = np.empty(256, np.int64)
    for c in range(3):
        for v in range(256):
            h[v] = hist[c, v]
        if cutoff != 0.0:
            n = 0
            for v in range(256):
                n += h[v]
            cut = int(_py_float_floordiv(float(n) * cutoff, 100.0))
            for lo in range(256):
                if cut > h[lo]:
                    cut = cut - h[lo]
                    h[lo] = 0
                else:
                    h[lo] -= cut
                    cut = 0
                if cut <= 0:
                    break
            cut = int(_py_float_floordiv(float(n) * cutoff, 100.0))
            for hi in range(255, -1, -1):
                if cut > h[hi]:
                    cut = cut - h[hi]
                    h[hi] = 0
                else:
                    h[hi] -= cut
                    cut = 0
                if cut <= 0:
                    break
        # Python's for-loop leaves the variable at its last value when nothing breaks.
        lo = 255
        for v in range(256):
            if h[v] != 0:
                lo = v
                break
        hi = 0
        for v in range(255, -1, -1):
            if h[v] != 0:
                hi = v
                break
        if hi <= lo:
            for v in range(256):
                lut[c, v] = v
        else:
            scale = 255.0 / (hi - lo)
            offset = -lo * scale
            for v in range(256):
                lut[c, v] = _clip_lut_value(int(v * scale + offset))
    return lut


@nb.njit(cache=True)
def autocontrast(img: np.ndarray, cutoff: float) -> np.ndarray:
    """ImageOps.autocontrast(img, cutoff) per channel, bit-exact (``cutoff`` in percent)."""
    return apply_lut(img, autocontrast_lut(channel_histogram(img), cutoff))


@nb.njit(cache=True)
def posterize_mask(bits: int) -> int:
    """The bit mask posterize keeps, ``bits`` clamped to 0..8 (see :func:`posterize`)."""
    if bits <= 0:
        return 0
    if bits >= 8:
        return 255
    return (255 << (8 - bits)) & 255


@nb.njit(cache=True)
def posterize(img: np.ndarray, bits: int) -> np.ndarray:
    """ImageOps.posterize(img, bits): keep the top ``bits`` bits of every value.

    Pillow rejects bits outside 1..8; we clamp instead (bits <= 0 gives black, >= 8 a copy)
    so a hot loop never raises. The reference mapping only produces 1..4.
    """
    m = np.uint8(posterize_mask(bits))
    src = np.ascontiguousarray(img).reshape(-1)
    out = np.empty((img.shape[0], img.shape[1], 3), np.uint8)
    dst = out.reshape(-1)
    for k in range(src.size):
        dst[k] = src[k] & m
    return out


@nb.njit(cache=True)
def solarize(img: np.ndarray, threshold: int) -> np.ndarray:
    """ImageOps.solarize(img, threshold): values >= threshold become 255 - value."""
    t = np.int32(threshold)
    src = np.ascontiguousarray(img).reshape(-1)
    out = np.empty((img.shape[0], img.shape[1], 3), np.uint8)
    dst = out.reshape(-1)
    for k in range(src.size):
        v = np.int32(src[k])
        dst[k] = np.uint8(255 - v if v >= t else v)
    return out


@nb.njit(cache=True)
def invert(img: np.ndarray) -> np.ndarray:
    """ImageOps.invert(img): 255 - value."""
    src = np.ascontiguousarray(img).reshape(-1)
    out = np.empty((img.shape[0], img.shape[1], 3), np.uint8)
    dst = out.reshape(-1)
    for k in range(src.size):
        dst[k] = ~src[k]
    return out


@nb.njit(cache=True)
def mirror(img: np.ndarray) -> np.ndarray:
    """ImageOps.mirror(img): flip left-right.

    Unsigned indices: with signed ones numba adds a negative-index wrap-around check to
    every access, which makes this copy ~20x slower.
    """
    H, W = img.shape[0], img.shape[1]
    src = np.ascontiguousarray(img).reshape(-1)
    out = np.empty((H, W, 3), np.uint8)
    dst = out.reshape(-1)
    row = np.uint64(3 * W)
    u1 = np.uint64(1)
    u2 = np.uint64(2)
    for i in range(H):
        base = np.uint64(i) * row
        end = base + row - np.uint64(3)
        for j in range(W):
            jj = np.uint64(3 * j)
            k = base + jj
            r = end - jj
            dst[k] = src[r]
            dst[k + u1] = src[r + u1]
            dst[k + u2] = src[r + u2]
    return out
