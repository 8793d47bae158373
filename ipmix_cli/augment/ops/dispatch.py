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
from ipmix_cli.augment.ops.geometry import affine, rotate
from ipmix_cli.augment.ops.point import autocontrast, equalize, invert, mirror, posterize, solarize

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
        return posterize(img, 4 - int(level * 4.0 / 10.0))
    if op == 2:
        deg = int(level * 30.0 / 10.0)
        if negate:
            deg = -deg
        return rotate(img, float(deg))
    if op == 3:
        return solarize(img, 256 - int(level * 256.0 / 10.0))
    if op == 4 or op == 5:
        s = level * 0.3 / 10.0
        if negate:
            s = -s
        if op == 4:
            return affine(img, 1.0, s, 0.0, 0.0, 1.0, 0.0)
        return affine(img, 1.0, 0.0, 0.0, s, 1.0, 0.0)
    if op == 6 or op == 7:
        size = img.shape[1] if op == 6 else img.shape[0]
        d = int(level * (size / 3.0) / 10.0)
        if negate:
            d = -d
        if op == 6:
            return affine(img, 1.0, 0.0, float(d), 0.0, 1.0, 0.0)
        return affine(img, 1.0, 0.0, 0.0, 0.0, 1.0, float(d))
    if op == 8:
        return mirror(img)
    if op == 9:
        return invert(img)
    if op == 10:
        return autocontrast(img, 10.0 - level * 10.0 / 10.0)
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
