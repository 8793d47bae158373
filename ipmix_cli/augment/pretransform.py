"""Pre-transforms applied before IPMix, and the random crop of the mixing picture.

The reference re-draws these every time a sample is loaded; we draw them from the sample's
stream 0 (seed, source, copy, 0) so each stored copy gets its own pre-transform, exactly as a
fresh epoch would, and both JSD views share it.

- CIFAR: RandomHorizontalFlip then RandomCrop(size, padding=4) with zero padding: flip coin,
  then top = randint(0, 2 * pad), left = randint(0, 2 * pad) (torchvision's order).
- ImageNet: RandomResizedCrop(size) as torchvision draws it (scale U(0.08, 1) of the area,
  log-uniform aspect ratio in [3/4, 4/3], 10 attempts, then a centre-crop fallback), crop then
  Pillow BILINEAR resize (what torchvision does on PIL images), then the flip coin. The crop
  parameters are drawn by a jitted helper; the resize is ``ops.resample``, a numba kernel
  bit-identical to Pillow's, reading the crop window in place.
- Size policy ('center', for 'cifar' and 'none', and the clean export): torchvision's
  Resize(side) + CenterCrop(size) with Pillow BILINEAR, no random draw; it runs before the
  pre-transform so the preset's own flip and crop see an image of the output size.
- Mixing picture: a random crop of the output size from the pre-resized picture
  (top = randint(0, h - H), left = randint(0, w - W)). A picture smaller than the output along
  an axis is placed at a random offset on that axis, zero elsewhere (pad-if-needed).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from fractals import detmath
from fractals.rng import coin, randint, uniform_range
from ipmix_cli.augment.ops.point import mirror_into
from ipmix_cli.augment.ops.resample import resize_bilinear, resize_window_into

__all__ = [
    "PRE_FIELDS",
    "PRE_FLIP",
    "PRE_LEFT",
    "PRE_PICK",
    "PRE_PLEFT",
    "PRE_PTOP",
    "PRE_RRC_ATTEMPTS",
    "PRE_RRC_H",
    "PRE_RRC_I",
    "PRE_RRC_J",
    "PRE_RRC_W",
    "PRE_TOP",
    "RRC_RATIO",
    "RRC_SCALE",
    "cifar_flip_crop",
    "random_crop_picture",
    "random_flip",
    "random_resized_crop",
    "rrc_into",
    "resize_center_crop",
    "rrc_params",
]

_U1 = np.uint64(1)
_U2 = np.uint64(2)
_U3 = np.uint64(3)

RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)

# Per-sample pre-transform trace (float64[PRE_FIELDS]); -1 where not applicable.
PRE_FLIP = 0  # horizontal flip coin (0/1)
PRE_TOP = 1  # CIFAR crop: top of the window in the padded image, 0..2*pad
PRE_LEFT = 2
PRE_PICK = 3  # index of the mixing picture
PRE_PTOP = 4  # out[y, x] = picture[y + PTOP, x + PLEFT] (negative: the picture was padded)
PRE_PLEFT = 5
PRE_RRC_I = 6  # RandomResizedCrop box (top, left, height, width) in the source image
PRE_RRC_J = 7
PRE_RRC_H = 8
PRE_RRC_W = 9
PRE_RRC_ATTEMPTS = 10  # index of the accepted attempt, 10 for the centre-crop fallback
PRE_FIELDS = 11


@nb.njit(cache=True)
def cifar_flip_crop(
    img: np.ndarray, state: np.ndarray, pad: int, out: np.ndarray, rec: np.ndarray
) -> None:
    """Random horizontal flip, then a random crop of the same size from the image padded with
    ``pad`` zero pixels on every side; writes into ``out`` (same shape as ``img``)."""
    H = img.shape[0]
    W = img.shape[1]
    flip = coin(state)
    top = randint(state, 0, 2 * pad)
    left = randint(state, 0, 2 * pad)
    rec[PRE_FLIP] = 1.0 if flip else 0.0
    rec[PRE_TOP] = top
    rec[PRE_LEFT] = left
    # Row by row over flat unsigned indices: output pixels x_lo .. x_hi - 1 of a row read
    # source pixels in order (or reversed, flipped), the rest are padding. Indexing three
    # axes per value with a test per pixel took 2.15 us a 32 px call from Python, this 1.28.
    src = img.reshape(-1)
    dst = out.reshape(-1)
    row = np.uint64(3 * W)
    x_lo = max(0, pad - left)
    x_hi = min(W, W + pad - left)
    for y in range(H):
        base = np.uint64(y) * row
        sy = y + top - pad
        if sy < 0 or sy >= H or x_hi <= x_lo:
            for k in range(base, base + row):
                dst[k] = 0
            continue
        for k in range(base, base + _U3 * np.uint64(x_lo)):
            dst[k] = 0
        for k in range(base + _U3 * np.uint64(x_hi), base + row):
            dst[k] = 0
        o = base + _U3 * np.uint64(x_lo)
        n = _U3 * np.uint64(x_hi - x_lo)
        first = x_lo + left - pad  # source pixel of output pixel x_lo, unflipped
        if not flip:
            i = np.uint64(sy) * row + _U3 * np.uint64(first)
            for k in range(n):
                dst[o + k] = src[i + k]
            continue
        # Flipped: output pixel x reads pixel W - 1 - (x + left - pad) of the source row.
        last = np.uint64(sy) * row + _U3 * np.uint64(W - 1 - first)
        for j in range(np.uint64(0), n, _U3):
            dst[o + j] = src[last - j]
            dst[o + j + _U1] = src[last - j + _U1]
            dst[o + j + _U2] = src[last - j + _U2]


@nb.njit(cache=True)
def random_flip(img: np.ndarray, state: np.ndarray, out: np.ndarray, rec: np.ndarray) -> None:
    """Random horizontal flip into ``out`` (the ImageNet pre-transform's second half)."""
    H = img.shape[0]
    W = img.shape[1]
    flip = coin(state)
    rec[PRE_FLIP] = 1.0 if flip else 0.0
    if not flip:
        src = img.reshape(-1)
        dst = out.reshape(-1)
        for i in range(dst.shape[0]):
            dst[i] = src[i]
        return
    mirror_into(img, out, 0, 0, H, W)  # 2.4 us a 224 px image; three-axis indexing took 31


@nb.njit(cache=True)
def rrc_params(
    state: np.ndarray,
    height: int,
    width: int,
    scale_lo: float,
    scale_hi: float,
    ratio_lo: float,
    ratio_hi: float,
) -> tuple[int, int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``: returns (top, left, h, w, attempt).

    Ten tries of area fraction U(scale) and log-uniform ratio, rounded half-to-even like
    Python's ``round``; the first box that fits wins (top then left drawn uniformly). If none
    fits, a centre crop clamped to the ratio range (``attempt`` = 10).
    """
    area = height * width
    log_lo = detmath.log(ratio_lo)  # detmath, not libm: the same crop on every CPU
    log_hi = detmath.log(ratio_hi)
    for attempt in range(10):
        target_area = area * uniform_range(state, scale_lo, scale_hi)
        aspect = detmath.exp(uniform_range(state, log_lo, log_hi))
        w = int(np.rint(math.sqrt(target_area * aspect)))
        h = int(np.rint(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = randint(state, 0, height - h)
            j = randint(state, 0, width - w)
            return i, j, h, w, attempt
    in_ratio = width / height
    if in_ratio < ratio_lo:
        w = width
        h = int(np.rint(w / ratio_lo))
    elif in_ratio > ratio_hi:
        h = height
        w = int(np.rint(h * ratio_hi))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w, 10


def random_resized_crop(
    img: np.ndarray,
    state: np.ndarray,
    size: tuple[int, int],
    rec: np.ndarray | None = None,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
) -> np.ndarray:
    """RandomResizedCrop of ``img`` (uint8 H x W x 3) to ``size`` = (H', W') drawing from
    ``state``: crop, then Pillow BILINEAR resize (torchvision's PIL path). No flip here: the
    kernel draws it next from the same stream.

    The resize is ``ops.resample.resize_window``: Pillow's fixed-point resampler step by
    step, pass order included, 3-5x faster than Pillow at 224 px because both passes run
    over whole rows (the horizontal one on a transposed copy) and the crop is never copied.
    """
    out = np.empty((int(size[0]), int(size[1]), 3), np.uint8)
    record = rec if rec is not None else np.empty(PRE_FIELDS)
    rrc_into(np.ascontiguousarray(img), state, out, record, scale[0], scale[1], ratio[0], ratio[1])
    return out


@nb.njit(cache=True)
def rrc_into(
    img: np.ndarray,
    state: np.ndarray,
    out: np.ndarray,
    rec: np.ndarray,
    scale_lo: float,
    scale_hi: float,
    ratio_lo: float,
    ratio_hi: float,
) -> None:
    """:func:`random_resized_crop` into ``out`` (a batch's row; its shape is the output
    size), the box recorded in ``rec``: one compiled call per image, no result to copy."""
    i, j, h, w, attempt = rrc_params(
        state, img.shape[0], img.shape[1], scale_lo, scale_hi, ratio_lo, ratio_hi
    )
    rec[PRE_RRC_I] = i
    rec[PRE_RRC_J] = j
    rec[PRE_RRC_H] = h
    rec[PRE_RRC_W] = w
    rec[PRE_RRC_ATTEMPTS] = attempt
    resize_window_into(img, i, j, h, w, out)


@nb.njit(cache=True)
def random_crop_picture(
    pic: np.ndarray, ph: int, pw: int, state: np.ndarray, out: np.ndarray, rec: np.ndarray
) -> None:
    """Random crop of ``out``'s size from the top-left ``ph x pw`` of ``pic`` (the padded
    mixing-set slot). Draws top then left; an axis where the picture is too small draws the
    picture's offset instead and pads with zeros."""
    H = out.shape[0]
    W = out.shape[1]
    top = randint(state, 0, ph - H) if ph >= H else -randint(state, 0, H - ph)
    left = randint(state, 0, pw - W) if pw >= W else -randint(state, 0, W - pw)
    rec[PRE_PTOP] = top
    rec[PRE_PLEFT] = left
    if top >= 0 and left >= 0:  # the usual case: the window lies inside the picture
        n_row = W * 3
        for y in range(H):
            src = pic[y + top][left : left + W].reshape(-1)
            dst = out[y].reshape(-1)
            for i in range(n_row):
                dst[i] = src[i]
        return
    for y in range(H):
        sy = y + top
        inside_y = 0 <= sy < ph
        for x in range(W):
            sx = x + left
            if inside_y and 0 <= sx < pw:
                out[y, x, 0] = pic[sy, sx, 0]
                out[y, x, 1] = pic[sy, sx, 1]
                out[y, x, 2] = pic[sy, sx, 2]
            else:
                out[y, x, 0] = 0
                out[y, x, 1] = 0
                out[y, x, 2] = 0


def resize_center_crop(img: np.ndarray, size: tuple[int, int], side: int | None) -> np.ndarray:
    """torchvision's ``Resize(side)`` then ``CenterCrop(size)`` on a PIL image, for uint8
    H x W x 3 ``img``; ``side`` None means ``min(size)``. Returns a C-contiguous uint8
    ``size[0] x size[1] x 3`` array.

    An image already of ``size`` comes back as it is, whatever ``side``: the job sends
    batches of output-size images down the no-resize fast path (``augment_batch``), so a
    sample's bytes must not depend on which path it took; it also keeps every output made
    before this policy existed byte-identical. (torchvision would zoom such an image when
    ``side > min(size)``.)

    Resize: the shorter side becomes ``side``, the longer ``int(side * long / short)``
    (torchvision's truncation), in Pillow BILINEAR, which antialiases when downscaling
    (``ops.resample``, bit-identical to Pillow's: torchvision's PIL path, so the bytes are
    the reference's). Crop: ``top = int(round((h - H) / 2.0))``, ``left`` likewise (Python's
    half-to-even round). An axis where the resized image is shorter than the crop is
    zero-padded as CenterCrop pads: the image starts at ``(H - h) // 2``.
    """
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or 0 in arr.shape:
        raise ValueError(f"image must be H x W x 3 uint8, got {arr.dtype} {arr.shape}")
    th, tw = int(size[0]), int(size[1])
    if th < 1 or tw < 1:
        raise ValueError(f"size must be positive, got {tuple(size)}")
    h, w = arr.shape[:2]
    if (h, w) == (th, tw):
        return np.ascontiguousarray(arr)
    short = min(th, tw) if side is None else int(side)
    if short < 1:
        raise ValueError(f"side must be >= 1, got {side}")
    if w <= h:
        nh, nw = int(short * h / w), short
    else:
        nh, nw = short, int(short * w / h)
    if (nh, nw) != (h, w):
        arr = resize_bilinear(arr, (nh, nw))  # Pillow's BILINEAR, bit-exact, a new array
    if (nh, nw) == (th, tw):
        return arr
    out = np.zeros((th, tw, 3), dtype=np.uint8)
    src_y, dst_y, n_y = _centre_axis(nh, th)
    src_x, dst_x, n_x = _centre_axis(nw, tw)
    out[dst_y : dst_y + n_y, dst_x : dst_x + n_x] = arr[src_y : src_y + n_y, src_x : src_x + n_x]
    return out


def _centre_axis(length: int, target: int) -> tuple[int, int, int]:
    """(source start, destination start, count) of CenterCrop along one axis: crop at
    torchvision's rounded offset, or place a short axis at its floor-centred padding."""
    if length >= target:
        return int(round((length - target) / 2.0)), 0, target
    return 0, (target - length) // 2, length
