"""Image-level operations of IPMix (AugMix's list), as numba kernels with Pillow's semantics.

STUB: only invert and mirror are implemented so far; the rest are being written.
"""

from __future__ import annotations

import numba as nb
import numpy as np

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
    (uint8 H x W x 3) and return a new array. ``negate`` flips the sign of signed ops."""
    out = np.empty_like(img)
    if op == 9:
        for i in range(img.shape[0]):
            for j in range(img.shape[1]):
                for c in range(3):
                    out[i, j, c] = 255 - img[i, j, c]
    else:
        w = img.shape[1]
        for i in range(img.shape[0]):
            for j in range(w):
                for c in range(3):
                    out[i, j, c] = img[i, w - 1 - j, c]
    return out
