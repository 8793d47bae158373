"""ImageEnhance.Color / Contrast / Brightness / Sharpness as fused numba kernels.

Pillow computes ``Image.blend(degenerate, img, factor)``: per value,
``out = (uint8) clip(float32(deg) + float32(factor) * float32(img - deg))`` in single
precision (libImaging/Blend.c; the factor arrives as a C ``float``), clipping only matters
when ``factor`` is outside [0, 1] and truncation toward zero otherwise. The degenerate images:

- Color: ``img.convert("L").convert("RGB")``, L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16
  (libImaging/Convert.c's fixed-point ITU-R 601-2 luma);
- Contrast: a constant gray ``int(mean(L) + 0.5)`` where the mean is ImageStat's
  ``sum / count`` of that same L image;
- Brightness: black;
- Sharpness: ``img.filter(SMOOTH)``, the 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 evaluated
  in float32 in libImaging/Filter.c's order (offset 0.5, bottom row first, each row
  left-to-right), clipped and truncated, the one-pixel border copied unchanged, and images
  smaller than 3x3 copied whole.

We never materialise the degenerate image: each kernel computes the degenerate value and
blends it in the same pass, repeating the same float32 operations so the output is
bit-identical to Pillow's.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_F0 = np.float32(0.0)
_F255 = np.float32(255.0)
_F_HALF = np.float32(0.5)
# Filter.c divides the float32 kernel by the float32 divisor.
_K1 = np.float32(np.float32(1.0) / np.float32(13.0))
_K5 = np.float32(np.float32(5.0) / np.float32(13.0))


@nb.njit(cache=True, inline="always")
def _blend1(deg: np.float32, val: np.float32, alpha: np.float32) -> np.uint8:
    """One value of Image.blend(deg_image, image, alpha) (Blend.c), clip included.

    ``deg`` and ``val`` are uint8 levels held in float32, so ``val - deg`` is exactly
    Blend.c's ``(float)(int in2 - int in1)``; keeping every operand 32-bit (numba widens
    integer arithmetic to int64, and int64 -> float has no AVX2 instruction) lets the loops
    vectorise. min/max replace Blend.c's if-chain with the same result: t <= 0 -> 0,
    t >= 255 -> 255, else truncation (t is never NaN here).
    """
    t = deg + alpha * (val - deg)
    t = min(max(t, _F0), _F255)
    return np.uint8(np.int32(t))


@nb.njit(cache=True, inline="always")
def _luma(r: np.uint8, g: np.uint8, b: np.uint8) -> np.float32:
    # Convert.c L24: (19595 R + 38470 G + 7471 B + 0x8000) >> 16, as an exact float32.
    v = np.int32(r) * np.int32(19595) + np.int32(g) * np.int32(38470)
    v = v + np.int32(b) * np.int32(7471) + np.int32(0x8000)
    return np.float32(np.int32(v >> 16))


@nb.njit(cache=True)
def brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """ImageEnhance.Brightness(img).enhance(factor): blend with black."""
    alpha = np.float32(factor)
    src = np.ascontiguousarray(img).reshape(-1)
    out = np.empty((img.shape[0], img.shape[1], 3), np.uint8)
    dst = out.reshape(-1)
    for k in range(src.size):
        dst[k] = _blend1(_F0, np.float32(src[k]), alpha)
    return out


@nb.njit(cache=True)
def color(img: np.ndarray, factor: float) -> np.ndarray:
    """ImageEnhance.Color(img).enhance(factor): blend with the image's L-mode grayscale."""
    alpha = np.float32(factor)
    src = np.ascontiguousarray(img).reshape(-1)
    out = np.empty((img.shape[0], img.shape[1], 3), np.uint8)
    dst = out.reshape(-1)
    for p in range(src.size // 3):
        k = np.uint64(3 * p)
        k1 = k + np.uint64(1)
        k2 = k + np.uint64(2)
        r = src[k]
        g = src[k1]
        b = src[k2]
        gray = _luma(r, g, b)
        dst[k] = _blend1(gray, np.float32(r), alpha)
        dst[k1] = _blend1(gray, np.float32(g), alpha)
        dst[k2] = _blend1(gray, np.float32(b), alpha)
    return out


@nb.njit(cache=True)
def mean_gray_level(img: np.ndarray) -> int:
    """``int(ImageStat.Stat(img.convert("L")).mean[0] + 0.5)``, the Contrast degenerate.

    ImageStat's mean is ``sum / count`` of Python ints, a correctly rounded division, which
    float64 reproduces exactly for any image below 2**53 / 255 pixels.
    """
    src = np.ascontiguousarray(img).reshape(-1)
    total = np.int64(0)
    for p in range(src.size // 3):
        k = np.uint64(3 * p)
        total += np.int64(_luma(src[k], src[k + np.uint64(1)], src[k + np.uint64(2)]))
    count = src.size // 3
    if count == 0:
        return 0
    return int(float(total) / float(count) + 0.5)


@nb.njit(cache=True)
def contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """ImageEnhance.Contrast(img).enhance(factor): blend with a constant mean-gray image."""
    alpha = np.float32(factor)
    mean = np.float32(mean_gray_level(img))
    src = np.ascontiguousarray(img).reshape(-1)
    out = np.empty((img.shape[0], img.shape[1], 3), np.uint8)
    dst = out.reshape(-1)
    for k in range(src.size):
        dst[k] = _blend1(mean, np.float32(src[k]), alpha)
    return out


@nb.njit(cache=True)
def sharpness(img: np.ndarray, factor: float) -> np.ndarray:
    """ImageEnhance.Sharpness(img).enhance(factor): blend with the SMOOTH-filtered image.

    The filtered image keeps the original one-pixel border (and is the original when the
    image is smaller than 3x3), where the blend is the identity; the interior is computed
    per row over the interleaved RGB values, neighbours at +-3 (columns) and +-3W (rows).
    """
    alpha = np.float32(factor)
    H, W = img.shape[0], img.shape[1]
    src = np.ascontiguousarray(img).reshape(-1)
    out = np.empty((H, W, 3), np.uint8)
    dst = out.reshape(-1)
    if H < 3 or W < 3:
        for k in range(src.size):
            dst[k] = src[k]
        return out
    row = np.uint64(3 * W)
    u3 = np.uint64(3)
    for k in range(row):
        dst[k] = src[k]
    for i in range(1, H - 1):
        mid = np.uint64(i) * row
        up = mid - row
        dn = mid + row
        for k in range(u3):
            dst[mid + k] = src[mid + k]
            dst[mid + row - u3 + k] = src[mid + row - u3 + k]
        for j in range(u3, row - u3):
            # Filter.c: ss = 0.5; ss += row(y+1); ss += row(y); ss += row(y-1), each row
            # (left * k0 + centre * k1) + right * k2, all float32.
            ss = _F_HALF
            ss += (
                np.float32(src[dn + j - u3]) * _K1
                + np.float32(src[dn + j]) * _K1
                + np.float32(src[dn + j + u3]) * _K1
            )
            ss += (
                np.float32(src[mid + j - u3]) * _K1
                + np.float32(src[mid + j]) * _K5
                + np.float32(src[mid + j + u3]) * _K1
            )
            ss += (
                np.float32(src[up + j - u3]) * _K1
                + np.float32(src[up + j]) * _K1
                + np.float32(src[up + j + u3]) * _K1
            )
            smooth = np.float32(np.int32(min(max(ss, _F0), _F255)))
            dst[mid + j] = _blend1(smooth, np.float32(src[mid + j]), alpha)
    last = np.uint64(H - 1) * row
    for k in range(row):
        dst[last + k] = src[last + k]
    return out
