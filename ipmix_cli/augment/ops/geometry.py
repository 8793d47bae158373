"""Geometric image ops (affine transform, rotation) with Pillow's bilinear semantics.

``affine(img, a, b, c, d, e, f)`` is ``Image.transform(size, AFFINE, (a..f), BILINEAR)``: the
output pixel (x, y) samples the input at ``(a*(x+.5) + b*(y+.5) + c, d*(x+.5) + e*(y+.5) + f)``
(output -> input mapping), black where that point falls outside the input. The arithmetic
repeats libImaging/Geometry.c's generic transform and ``bilinear_filter32RGB`` operation by
operation in float64 (same products, same sums in the same order, edge-clamped neighbours,
a missing lower row replaced by the upper one, truncation to uint8), so the result is
bit-identical to Pillow rather than merely close: a pixel sampled exactly at a source pixel
centre is ``v + (w - v) * 0.9999999999`` truncated, so even a 1e-16 error in a coordinate
can move a value by one level.

``rotate(img, degrees)`` is ``Image.rotate(degrees, resample=BILINEAR)`` (about the centre,
same size): it rebuilds Pillow's matrix in Python's exact float steps, including
``round(cos, 15)`` (done here as a correctly rounded decimal rounding, see ``_round15``, of a
correctly rounded cosine, see ``rotate_matrix``), and Pillow's transpose fast paths for 0 / 90 /
180 / 270 degrees.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from fractals.detmath import sin_cos_correctly_rounded
from fractals.detmath.bits import two_prod

_TEN15 = 1e15  # exactly representable: 10**15 < 2**53


@nb.njit(cache=True)
def _round15(x: float) -> float:
    """Python's ``round(x, 15)`` for |x| <= 1, exactly.

    CPython rounds the exact binary value of ``x`` to 15 decimals (half to even) and parses
    the decimal back, i.e. returns the double nearest to N / 10**15. The naive
    ``rint(x * 1e15) / 1e15`` rounds the product first (its ulp is 1/8 near 1e15), which
    flips the rounding decision for a few percent of inputs. We form the product exactly as
    p + err (Dekker's two-product), decide the rounding of p + err exactly, then divide the
    integer N by 1e15 (both exact, so the division is correctly rounded like strtod).
    """
    if x != x or x == 0.0:
        return x
    p, err = two_prod(x, _TEN15)
    fl = math.floor(p)
    frac = p - fl  # exact
    if frac < 0.25:
        n = fl
    elif frac > 0.75:
        n = fl + 1.0
    else:
        dist = frac - 0.5  # exact (Sterbenz)
        if dist > -err:
            n = fl + 1.0
        elif dist < -err:
            n = fl
        else:  # exact tie: half to even
            n = fl if np.fmod(fl, 2.0) == 0.0 else fl + 1.0
    if n == 0.0:
        return math.copysign(0.0, x)
    return n / _TEN15


@nb.njit(cache=True)
def rotate_matrix(width: int, height: int, degrees: float) -> tuple:
    """The (a, b, c, d, e, f) output->input matrix Pillow's ``Image.rotate`` builds for a
    rotation by ``degrees`` counter-clockwise about the image centre (no expand, no
    translate), with the same float operations in the same order.

    Pillow takes ``round(math.cos(rad), 15)`` with the platform's libm. The rounding to 15
    decimals does not absorb libm differences: for 95 of the 360 integer angles the exact
    cosine or sine lies within one ulp of a 15-decimal rounding midpoint (the closest, 342
    degrees, within 0.002 ulp), so a result one ulp off flips the rounded matrix entry. So the
    cosine and sine here are correctly rounded (``detmath.sin_cos_correctly_rounded``), which
    is what a correctly rounding libm (glibc's, in practice) hands Pillow: the matrix is the
    same on every CPU and equal to Pillow's wherever Pillow's libm rounds correctly.
    ``tests/test_image_ops.py`` checks all 360 integer angles against exact decimal values.
    """
    angle = degrees % 360.0
    rad = -(angle * (math.pi / 180.0))  # math.radians is x * (pi / 180)
    sin_rad, cos_rad = sin_cos_correctly_rounded(rad)
    cs = _round15(cos_rad)
    sn = _round15(sin_rad)
    msn = _round15(-sin_rad)
    cx = width / 2.0
    cy = height / 2.0
    c = cs * (-cx) + sn * (-cy) + 0.0
    f = msn * (-cx) + cs * (-cy) + 0.0
    c += cx
    f += cy
    return cs, sn, c, msn, cs, f


_U1 = np.uint64(1)
_U2 = np.uint64(2)
_U3 = np.uint64(3)


@nb.njit(cache=True)
def _translate_into(
    img: np.ndarray, dx: int, dy: int, out: np.ndarray, top: int, left: int, ph: int, pw: int
) -> None:
    """out[y, x] = img[y + dy, x + dx] where that is inside the image, else black, for the
    ``ph`` x ``pw`` box of ``out`` at (top, left).

    This is exactly what Pillow's bilinear affine produces for an integer translation:
    all interpolation weights are exactly 0, so every sample is a source pixel verbatim.
    """
    H, W = img.shape[0], img.shape[1]
    src = np.ascontiguousarray(img).reshape(-1)
    dst = out.reshape(-1)
    x_lo = max(left, -dx)
    x_hi = min(left + pw, W - dx)
    for y in range(top, top + ph):
        row = np.uint64(3 * y * W)
        for k in range(np.uint64(3 * left), np.uint64(3 * (left + pw))):
            dst[row + k] = 0
        if x_hi <= x_lo or y + dy < 0 or y + dy >= H:
            continue
        o = np.uint64(3 * (y * W + x_lo))
        i = np.uint64(3 * ((y + dy) * W + x_lo + dx))
        for k in range(np.uint64(3 * (x_hi - x_lo))):
            dst[o + k] = src[i + k]


_MODE_XY = 0  # general: both interpolation weights vary
_MODE_X = 1  # every WY is exactly 0 (shear_x-like matrices)
_MODE_Y = 2  # every WX is exactly 0 (shear_y-like matrices)
_KEY_OUT = np.int64(-(2**62))
_KEY_EDGE = np.int64(-(2**62) + 1)  # real keys are y0 * 2**32 + column offset, y0 >= 0


@nb.njit(cache=True)
def _row_coords(
    y: int,
    a: float,
    b: float,
    c: float,
    d: float,
    e: float,
    f: float,
    W: int,
    H: int,
    mode: int,
    x_lo: int,
    x_hi: int,
    X0: np.ndarray,
    Y0: np.ndarray,
    WX: np.ndarray,
    WY: np.ndarray,
    KEY: np.ndarray,
) -> np.int32:
    """Source coordinates of output pixels ``x_lo .. x_hi - 1`` of row ``y``: Geometry.c's
    affine_transform followed by bilinear_filter32RGB's head (inside test, -0.5, floor,
    fractional weights), written branch-free so LLVM vectorises it.

    KEY[x] groups pixels into runs: _KEY_OUT outside the image, _KEY_EDGE where Pillow's
    edge clamping is needed (a neighbour the interpolation actually uses lies outside), and
    otherwise ``y0 * 2**32 + (x0 - x)``: neighbours with equal KEY read the same source rows
    at the same column offset, so their four neighbours sit at fixed offsets in memory, and
    finding where a run ends is one comparison a pixel. Out-of-image coordinates are clamped
    before the int conversion only to keep it defined; they are never used. WX / WY hold one
    weight per RGB value (3 per pixel); in ``_MODE_X`` WY and Y0 are not written, in
    ``_MODE_Y`` WX and X0 (see :func:`affine_into`).
    """
    fw = float(W)
    fh = float(H)
    yin = y + 0.5
    byc = b * yin
    eyf = e * yin
    # Neighbour actually read: right one unless all WX are 0, lower one unless all WY are 0.
    x_last = np.int32(W - 1 if mode == _MODE_Y else W - 2)
    y_last = np.int32(H - 1 if mode == _MODE_X else H - 2)
    # Unsigned indices: with signed ones numba checks each store for a negative index
    # wherever x_lo is not known to be >= 0 (a patch's box), which kept these loops scalar:
    # the coordinates of a 224 px rotation took 213 us, now 79 (a whole-image box through
    # affine_into: 282 -> 151 us for shear_x). One loop per mode, since a shear needs one
    # axis only: the other's weight is exactly 0 and its source coordinate a row constant
    # (shear_x) or x plus an integer (shear_y), which affine_into knows; a test inside one
    # loop kept it from vectorising.
    lo, hi = np.uint64(x_lo), np.uint64(x_hi)
    if mode == _MODE_X:
        # Returned: the row's source row (d is 0, so every pixel's is this one's).
        row_y0 = _pixel_coords(lo, a, c, d, f, byc, eyf, fw, fh, x_last, y_last)[1]
        for ux in range(lo, hi):
            x0, y0, wx, wy, key = _pixel_coords(ux, a, c, d, f, byc, eyf, fw, fh, x_last, y_last)
            k = _U3 * ux
            _per_channel(WX, k, wx)
            X0[ux] = x0
            KEY[ux] = key
        return row_y0
    if mode == _MODE_Y:
        for ux in range(lo, hi):
            x0, y0, wx, wy, key = _pixel_coords(ux, a, c, d, f, byc, eyf, fw, fh, x_last, y_last)
            k = _U3 * ux
            _per_channel(WY, k, wy)
            Y0[ux] = y0
            KEY[ux] = key
        return np.int32(0)
    for ux in range(lo, hi):
        x0, y0, wx, wy, key = _pixel_coords(ux, a, c, d, f, byc, eyf, fw, fh, x_last, y_last)
        # Weights are stored once per channel so the interpolation loops can run over
        # contiguous RGB values (short runs then still vectorise).
        k = _U3 * ux
        _per_channel(WX, k, wx)
        _per_channel(WY, k, wy)
        X0[ux] = x0
        Y0[ux] = y0
        KEY[ux] = key
    return np.int32(0)


@nb.njit(cache=True, inline="always")
def _per_channel(weights: np.ndarray, k: np.uint64, w: float) -> None:
    """A pixel's weight once per channel at ``k`` (see :func:`_row_coords`)."""
    weights[k] = w
    weights[k + _U1] = w
    weights[k + _U2] = w


@nb.njit(cache=True, inline="always")
def _pixel_coords(
    ux: np.uint64,
    a: float,
    c: float,
    d: float,
    f: float,
    byc: float,
    eyf: float,
    fw: float,
    fh: float,
    x_last: np.int32,
    y_last: np.int32,
) -> tuple:
    """One output pixel's source neighbour, weights and run key (see :func:`_row_coords`)."""
    zero = np.int32(0)
    xi = np.int32(ux)  # int32 -> float converts 4 lanes at once; int64 has no AVX2 op
    xin = np.float64(xi) + 0.5
    xx = a * xin + byc + c
    yy = d * xin + eyf + f
    ok = (xx >= 0.0) & (xx < fw) & (yy >= 0.0) & (yy < fh)
    xs = ((xx if xx < fw else fw) if xx >= 0.0 else 0.0) - 0.5
    ys = ((yy if yy < fh else fh) if yy >= 0.0 else 0.0) - 0.5
    fx = np.floor(xs)
    fy = np.floor(ys)
    x0 = np.int32(fx)
    y0 = np.int32(fy)
    wx = xs - fx
    wy = ys - fy
    inner = (x0 >= zero) & (x0 <= x_last) & (y0 >= zero) & (y0 <= y_last)
    run = (np.int64(y0) << np.int64(32)) + np.int64(x0 - xi)
    key = (run if inner else _KEY_EDGE) if ok else _KEY_OUT
    return x0, y0, wx, wy, key


@nb.njit(cache=True)
def _edge_pixel(
    src: np.ndarray,
    dst: np.ndarray,
    o: np.uint64,
    x0: int,
    y0: int,
    wx: float,
    wy: float,
    W: int,
    H: int,
) -> None:
    # One sample with Pillow's edge clamping (XCLIP/YCLIP; a missing lower row is the
    # clamped upper one, which gives v2 == v1 exactly as Pillow's "v2 = v1").
    row = np.uint64(3 * W)
    xa = np.uint64(max(x0, 0)) * _U3
    xb = np.uint64(min(x0 + 1, W - 1)) * _U3
    ra = np.uint64(max(y0, 0)) * row
    rb = np.uint64(min(y0 + 1, H - 1)) * row
    for ch in range(3):
        cc = np.uint64(ch)
        p = np.int32(src[ra + xa + cc])
        r = np.int32(src[rb + xa + cc])
        v1 = p + (np.int32(src[ra + xb + cc]) - p) * wx
        v2 = r + (np.int32(src[rb + xb + cc]) - r) * wx
        dst[o + cc] = np.uint8(np.int32(v1 + (v2 - v1) * wy))


@nb.njit(cache=True)
def _run_xy(
    src: np.ndarray,
    dst: np.ndarray,
    o: np.uint64,
    ra: np.uint64,
    rb: np.uint64,
    k1: int,
    k2: int,
    WX: np.ndarray,
    WY: np.ndarray,
) -> None:
    # Values k1..k2-1 of a run: the upper-left neighbour of value k is src[ra + k], the
    # right neighbours are 3 further, the lower row starts at rb. Pillow's exact steps.
    for k in range(k1, k2):
        uk = np.uint64(k)
        wx = WX[uk]
        p = float(src[ra + uk])
        r = float(src[rb + uk])
        v1 = p + (float(src[ra + uk + _U3]) - p) * wx
        v2 = r + (float(src[rb + uk + _U3]) - r) * wx
        dst[o + uk] = np.uint8(np.int32(v1 + (v2 - v1) * WY[uk]))


@nb.njit(cache=True)
def _run_x(
    src: np.ndarray, dst: np.ndarray, o: np.uint64, ra: np.uint64, k1: int, k2: int, WX: np.ndarray
) -> None:
    # All WY == 0: Pillow's v1 + (v2 - v1) * 0.0 is exactly v1.
    for k in range(k1, k2):
        uk = np.uint64(k)
        p = float(src[ra + uk])
        dst[o + uk] = np.uint8(np.int32(p + (float(src[ra + uk + _U3]) - p) * WX[uk]))


@nb.njit(cache=True)
def _run_y(
    src: np.ndarray,
    dst: np.ndarray,
    o: np.uint64,
    ra: np.uint64,
    rb: np.uint64,
    k1: int,
    k2: int,
    WY: np.ndarray,
) -> None:
    # All WX == 0: p + (q - p) * 0.0 is exactly p (and r for the lower row).
    for k in range(k1, k2):
        uk = np.uint64(k)
        p = float(src[ra + uk])
        dst[o + uk] = np.uint8(np.int32(p + (float(src[rb + uk]) - p) * WY[uk]))


@nb.njit(cache=True)
def affine(
    img: np.ndarray, a: float, b: float, c: float, d: float, e: float, f: float
) -> np.ndarray:
    """``Image.transform(img.size, Image.AFFINE, (a, b, c, d, e, f), resample=BILINEAR)``,
    bit-exact, black fill. Output->input mapping: translate (1, 0, 2, 0, 1, 0) moves the
    content two pixels toward smaller x."""
    H, W = img.shape[0], img.shape[1]
    out = np.empty((H, W, 3), np.uint8)
    affine_into(img, a, b, c, d, e, f, out, 0, 0, H, W)
    return out


@nb.njit(cache=True)
def affine_into(
    img: np.ndarray,
    a: float,
    b: float,
    c: float,
    d: float,
    e: float,
    f: float,
    out: np.ndarray,
    top: int,
    left: int,
    ph: int,
    pw: int,
) -> None:
    """The ``ph`` x ``pw`` box at (top, left) of :func:`affine`'s result, written into the
    same box of ``out`` (an array of ``img``'s shape; the rest of it is left alone). Every
    output pixel is computed from its own coordinates alone, so a box is the same bytes as
    that box of the whole image: a patch that mixes in an image op of ``x`` needs only its
    box computed.

    Per output row we first compute every pixel's source coordinates in a vectorised pass,
    then walk the row in runs of pixels that read the same two source rows at the same
    column offset: inside a run the four neighbours sit at fixed offsets in memory, so the
    interpolation loop reads contiguously and vectorises. Shears give row-long (shear_x)
    or ~1/s-long (shear_y) runs, small rotations a few pixels. When the matrix makes one
    weight exactly zero everywhere (shear_x: d = 0, e = 1, integral f; shear_y: a = 1,
    b = 0, integral c) that lerp is skipped, which is exact: Pillow's ``v1 + (v2 - v1) *
    0.0`` is ``v1``. Out-of-image samples are black; samples that need edge clamping go
    through a scalar path.
    """
    H, W = img.shape[0], img.shape[1]
    c_int = c == math.floor(c) and abs(c) < 1e9
    f_int = f == math.floor(f) and abs(f) < 1e9
    x_plain = a == 1.0 and b == 0.0 and c_int  # source x = output x + c exactly: WX == 0
    y_plain = d == 0.0 and e == 1.0 and f_int  # source y = output y + f exactly: WY == 0
    if x_plain and y_plain:
        # Integer translation: Pillow's arithmetic reduces to a shifted copy.
        _translate_into(img, int(c), int(f), out, top, left, ph, pw)
        return
    mode = _MODE_Y if x_plain else (_MODE_X if y_plain else _MODE_XY)
    src = np.ascontiguousarray(img).reshape(-1)
    dst = out.reshape(-1)
    X0 = np.empty(W, np.int32)
    Y0 = np.empty(W, np.int32)
    WX = np.empty(3 * W)
    WY = np.empty(3 * W)
    KEY = np.empty(W, np.int64)
    row = 3 * W
    u1 = np.uint64(1)
    u2 = np.uint64(2)
    x_end = left + pw
    # The coordinates _row_coords leaves out: shear_y's source x is x + c exactly (a = 1,
    # b = 0, c integral) with weight 0; shear_x's source row is the same for a whole row.
    x_shift = int(c) if mode == _MODE_Y else 0
    for y in range(top, top + ph):
        row_y0 = _row_coords(y, a, b, c, d, e, f, W, H, mode, left, x_end, X0, Y0, WX, WY, KEY)
        base = np.uint64(y * row)
        x = left
        while x < x_end:
            key = KEY[np.uint64(x)]
            if key <= _KEY_EDGE:  # the two sentinels are the smallest keys
                o = base + np.uint64(3 * x)
                if key == _KEY_OUT:
                    dst[o] = 0
                    dst[o + u1] = 0
                    dst[o + u2] = 0
                elif mode == _MODE_X:
                    _edge_pixel(src, dst, o, X0[x], row_y0, WX[3 * x], 0.0, W, H)
                elif mode == _MODE_Y:
                    _edge_pixel(src, dst, o, x + x_shift, Y0[x], 0.0, WY[3 * x], W, H)
                else:
                    _edge_pixel(src, dst, o, X0[x], Y0[x], WX[3 * x], WY[3 * x], W, H)
                x += 1
                continue
            y0 = row_y0 if mode == _MODE_X else Y0[x]
            x0 = x + x_shift if mode == _MODE_Y else X0[x]
            # The run's end: one comparison a pixel, unsigned (a signed index is checked for
            # wrap-around on every step: ~1/4 of a 224 px shear's time went here).
            end = np.uint64(x_end)
            ux2 = np.uint64(x + 1)
            while ux2 < end and KEY[ux2] == key:
                ux2 += _U1
            x2 = np.int64(ux2)
            # Source index of channel 0 of output pixel x' in the run is ra + 3 x'. Indices
            # are unsigned (numba then skips negative-index wrap-around checks, which
            # otherwise dominate these loops); ra itself may wrap below zero when the
            # column offset is negative, which is harmless since ra + 3 x' is exact
            # modulo 2**64.
            ra = np.uint64(y0 * row) + np.uint64(3 * (x0 - x))
            rb = ra + np.uint64(row)
            if mode == _MODE_XY:
                _run_xy(src, dst, base, ra, rb, 3 * x, 3 * x2, WX, WY)
            elif mode == _MODE_X:
                _run_x(src, dst, base, ra, 3 * x, 3 * x2, WX)
            else:
                _run_y(src, dst, base, ra, rb, 3 * x, 3 * x2, WY)
            x = x2


@nb.njit(cache=True)
def _transposed_into(
    img: np.ndarray, angle: float, out: np.ndarray, top: int, left: int, ph: int, pw: int
) -> None:
    """Pillow's exact transposes for 180 degrees and, on square images, 90 (counter-clockwise)
    and 270, over the box of ``out``."""
    H, W = img.shape[0], img.shape[1]
    for i in range(top, top + ph):
        for j in range(left, left + pw):
            if angle == 180.0:
                si, sj = H - 1 - i, W - 1 - j
            elif angle == 90.0:
                si, sj = j, W - 1 - i
            else:
                si, sj = H - 1 - j, i
            for ch in range(3):
                out[i, j, ch] = img[si, sj, ch]


@nb.njit(cache=True)
def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    """``Image.rotate(degrees, resample=BILINEAR)``: counter-clockwise about the centre,
    same size, black corners; bit-exact, including Pillow's exact-transpose fast paths."""
    H, W = img.shape[0], img.shape[1]
    if degrees % 360.0 == 0.0:
        return img.copy()
    out = np.empty((H, W, 3), np.uint8)
    rotate_into(img, degrees, out, 0, 0, H, W)
    return out


@nb.njit(cache=True)
def rotate_into(
    img: np.ndarray, degrees: float, out: np.ndarray, top: int, left: int, ph: int, pw: int
) -> None:
    """The ``ph`` x ``pw`` box at (top, left) of :func:`rotate`'s result, into that box of
    ``out`` (see :func:`affine_into`)."""
    H, W = img.shape[0], img.shape[1]
    angle = degrees % 360.0
    if angle == 0.0:
        _translate_into(img, 0, 0, out, top, left, ph, pw)
    elif angle == 180.0 or ((angle == 90.0 or angle == 270.0) and W == H):
        _transposed_into(img, angle, out, top, left, ph, pw)
    else:
        a, b, c, d, e, f = rotate_matrix(W, H, degrees)
        affine_into(img, a, b, c, d, e, f, out, top, left, ph, pw)
