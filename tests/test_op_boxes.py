"""An image op computed over a box only (``apply_image_op_into``, which a patch whose source is
an image op of ``x`` uses) gives exactly that box of the whole op, Pillow's bytes, and leaves
everything outside the box alone. The whole op is checked against Pillow in test_image_ops."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_image_ops import natural_image

from ipmix_cli.augment.ops.dispatch import N_ALL_OPS, OP_NAMES, apply_image_op, apply_image_op_into
from ipmix_cli.augment.ops.geometry import rotate_into

SENTINEL = 77


def boxes(h: int, w: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width): the whole image, the four corner pixels, edge strips, and
    random boxes of every size."""
    fixed = [(0, 0, h, w), (0, 0, 1, 1), (h - 1, w - 1, 1, 1), (0, w - 1, 1, 1), (h - 1, 0, 1, 1)]
    fixed += [(0, 0, h, 1), (0, w - 1, h, 1), (h - 1, 0, 1, w), (0, 0, 1, w)]
    for _ in range(6):
        ph, pw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
        fixed.append((int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1)), ph, pw))
    return fixed


def check_box(whole: np.ndarray, fill, box: tuple[int, int, int, int]) -> None:
    top, left, ph, pw = box
    out = np.full(whole.shape, SENTINEL, np.uint8)
    fill(out, top, left, ph, pw)
    want = np.full(whole.shape, SENTINEL, np.uint8)
    want[top : top + ph, left : left + pw] = whole[top : top + ph, left : left + pw]
    if not np.array_equal(out, want):
        bad = np.argwhere(out != want)
        raise AssertionError(f"box {box}: {len(bad)} values differ, first at {bad[0].tolist()}")


@pytest.mark.parametrize("op", range(N_ALL_OPS), ids=OP_NAMES)
@pytest.mark.parametrize("shape", [(224, 224), (37, 50), (61, 29)])
def test_a_box_of_an_op_is_that_box_of_the_whole_op(op: int, shape: tuple[int, int]) -> None:
    h, w = shape
    img = natural_image(h, w, seed=op)
    rng = np.random.default_rng(op * 7 + h)
    for level in (0.15, 0.5, 0.99, 2.7, 9.9):  # ImageNet and CIFAR severities; 0 and 1 degrees
        for negate in (False, True):
            whole = apply_image_op(op, img, level, negate)

            def fill(out, top, left, ph, pw, level=level, negate=negate):
                apply_image_op_into(op, img, level, negate, out, top, left, ph, pw)

            for box in boxes(h, w, rng):
                check_box(whole, fill, box)


@pytest.mark.parametrize("degrees", [0.0, 90.0, 180.0, 270.0, -90.0, 450.0, 17.0, -1.0])
@pytest.mark.parametrize("shape", [(40, 40), (40, 23)])
def test_rotate_boxes_through_the_transpose_paths(degrees: float, shape: tuple[int, int]) -> None:
    """Pillow's exact transposes (90 / 270 only on square images) in box form, against Pillow
    itself."""
    h, w = shape
    img = natural_image(h, w, seed=3)
    whole = np.asarray(Image.fromarray(img).rotate(degrees, resample=Image.BILINEAR))
    rng = np.random.default_rng(int(degrees) % 360)
    for box in boxes(h, w, rng):
        check_box(whole, lambda out, *b: rotate_into(img, degrees, out, *b), box)
