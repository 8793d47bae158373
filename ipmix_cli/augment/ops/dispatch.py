"""Which image op a recipe draw means: the op list, its order, and each op's parameter.

The kernels live beside this module in ``point`` (equalize, posterize, solarize, invert,
mirror, autocontrast), ``geometry`` (bilinear affine and rotate) and ``enhance`` (color,
contrast, brightness, sharpness); all of them are bit-identical to Pillow (verified on 13.0)
for uint8 RGB images of any H x W. This module fixes the op order and maps the recipe's
severity draw to each op's parameter.

``apply_image_op`` reproduces the reference's ``IPMix_utils.py`` mapping (``int()``
truncates toward zero, same float expression order), with one documented deviation from
the reference: shear and translate keep the input's own H x W (the reference renders into
a fixed IMAGE_SIZE square) and translate scales by the image's own width (translate_x) or
height (translate_y). No randomness here: the caller draws ``level`` and the sign.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ipmix_cli.augment.ops.enhance import brightness, color, contrast, sharpness
from ipmix_cli.augment.ops.geometry import affine, affine_into, rotate, rotate_into
from ipmix_cli.augment.ops.point import (
    apply_lut_into,
    autocontrast,
    autocontrast_lut,
    channel_histogram,
    equalize,
    equalize_lut,
    invert,
    mirror,
    mirror_into,
    posterize,
    solarize,
    value_op_into,
)

# Order matters: the default list is the first 10, ``all_ops`` uses all 15.
OP_NAMES: tuple[str, ...] = (
    "equalize",
    "posterize",
    "rotate",
    "solarize",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "mirror",
    "invert",
    "autocontrast",
    "color",
    "contrast",
    "brightness",
    "sharpness",
)
N_DEFAULT_OPS = 10
N_ALL_OPS = 15


@nb.njit(cache=True, inline="always")
def _degrees(level: float, negate: bool) -> float:
    deg = int(level * 30.0 / 10.0)
    return float(-deg if negate else deg)


@nb.njit(cache=True, inline="always")
def _posterize_bits(level: float) -> int:
    return 4 - int(level * 4.0 / 10.0)


@nb.njit(cache=True, inline="always")
def _solarize_threshold(level: float) -> int:
    return 256 - int(level * 256.0 / 10.0)


@nb.njit(cache=True, inline="always")
def _cutoff(level: float) -> float:
    return 10.0 - level * 10.0 / 10.0


@nb.njit(cache=True, inline="always")
def _affine_matrix(op: int, level: float, negate: bool, H: int, W: int) -> tuple:
    """(a, b, c, d, e, f) of shear_x (op 4), shear_y (5), translate_x (6), translate_y (7)."""
    if op == 4 or op == 5:
        s = level * 0.3 / 10.0
        if negate:
            s = -s
        if op == 4:
            return 1.0, s, 0.0, 0.0, 1.0, 0.0
        return 1.0, 0.0, 0.0, s, 1.0, 0.0
    size = W if op == 6 else H
    d = int(level * (size / 3.0) / 10.0)
    if negate:
        d = -d
    if op == 6:
        return 1.0, 0.0, float(d), 0.0, 1.0, 0.0
    return 1.0, 0.0, 0.0, 0.0, 1.0, float(d)


@nb.njit(cache=True)
def apply_image_op(op: int, img: np.ndarray, level: float, negate: bool) -> np.ndarray:
    """Apply op number ``op`` of OP_NAMES at severity ``level`` (the reference's L) to ``img``
    (uint8 H x W x 3) and return a new array. ``negate`` flips the sign of signed ops
    (rotate, shear_x/y, translate_x/y); the other ops ignore it, and the level-free ops
    (equalize, mirror, invert) ignore ``level`` too.

    Parameter mapping (as IPMix_utils.py computes it, float expressions in the same order):
    posterize bits ``4 - int(L*4/10)``; rotate ``int(L*30/10)`` degrees; solarize threshold
    ``256 - int(L*256/10)``; shear ``L*0.3/10``; translate ``int(L*(size/3)/10)`` pixels with
    size the own width / height; autocontrast cutoff ``10 - L*10/10`` percent (the reference
    goes through ``float_parameter(L, 10)``, equal to L up to an ulp); enhance factor
    ``L*1.8/10 + 0.1``.
    """
    # A no-op for C-contiguous input (the hot path); otherwise one copy. It also means the
    # kernels below only ever see the plain C-contiguous array type, so a strided or
    # read-only caller array compiles this small dispatcher again, not every kernel.
    img = np.ascontiguousarray(img)
    if op == 0:
        return equalize(img)
    if op == 1:
        return posterize(img, _posterize_bits(level))
    if op == 2:
        return rotate(img, _degrees(level, negate))
    if op == 3:
        return solarize(img, _solarize_threshold(level))
    if 4 <= op <= 7:
        a, b, c, d, e, f = _affine_matrix(op, level, negate, img.shape[0], img.shape[1])
        return affine(img, a, b, c, d, e, f)
    if op == 8:
        return mirror(img)
    if op == 9:
        return invert(img)
    if op == 10:
        return autocontrast(img, _cutoff(level))
    factor = level * 1.8 / 10.0 + 0.1
    if op == 11:
        return color(img, factor)
    if op == 12:
        return contrast(img, factor)
    if op == 13:
        return brightness(img, factor)
    if op == 14:
        return sharpness(img, factor)
    raise ValueError("apply_image_op: op index out of range")


@nb.njit(cache=True)
def apply_image_op_into(
    op: int,
    img: np.ndarray,
    level: float,
    negate: bool,
    out: np.ndarray,
    top: int,
    left: int,
    ph: int,
    pw: int,
) -> None:
    """The ``ph`` x ``pw`` box at (top, left) of ``apply_image_op(op, img, level, negate)``,
    written into that box of ``out`` (C-contiguous, ``img``'s shape); the rest of ``out`` is
    left as it was. A patch whose source is an image op of ``x`` reads only its box, about a
    tenth of the image on average at 224 px: the geometric and per-value ops compute the box
    alone (each output pixel depends on its own coordinates, or on a table from the whole
    image's histogram); the ImageEnhance ops are computed whole and the box copied."""
    img = np.ascontiguousarray(img)
    H, W = img.shape[0], img.shape[1]
    if op == 2:
        rotate_into(img, _degrees(level, negate), out, top, left, ph, pw)
    elif 4 <= op <= 7:
        a, b, c, d, e, f = _affine_matrix(op, level, negate, H, W)
        affine_into(img, a, b, c, d, e, f, out, top, left, ph, pw)
    elif op == 8:
        mirror_into(img, out, top, left, ph, pw)
    elif op == 1:
        value_op_into(img, 0, _posterize_bits(level), out, top, left, ph, pw)
    elif op == 3:
        value_op_into(img, 1, _solarize_threshold(level), out, top, left, ph, pw)
    elif op == 9:
        value_op_into(img, 2, 0, out, top, left, ph, pw)
    elif op <= 10:
        if op == 0:
            lut = equalize_lut(channel_histogram(img))
        else:
            lut = autocontrast_lut(channel_histogram(img), _cutoff(level))
        apply_lut_into(img, lut, out, top, left, ph, pw)
    else:
        whole = apply_image_op(op, img, level, negate)
        for i in range(top, top + ph):
            for j in range(left, left + pw):
                for ch in range(3):
                    out[i, j, ch] = whole[i, j, ch]
