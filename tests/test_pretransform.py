"""Pre-transforms (CIFAR flip + padded crop, RandomResizedCrop) and mixing-picture prep/crop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from fractals.rng import new_state
from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.augment.mixing_set import MixingSet, resized_shape
from ipmix_cli.augment.pretransform import (
    PRE_FIELDS,
    PRE_FLIP,
    PRE_LEFT,
    PRE_PLEFT,
    PRE_PTOP,
    PRE_RRC_ATTEMPTS,
    PRE_RRC_H,
    PRE_RRC_I,
    PRE_RRC_J,
    PRE_RRC_W,
    PRE_TOP,
    cifar_flip_crop,
    random_crop_picture,
    random_flip,
    random_resized_crop,
    rrc_params,
)
from ipmix_cli.sources import open_mixing_set


def np_cifar(img: np.ndarray, flip: bool, top: int, left: int, pad: int = 4) -> np.ndarray:
    """torchvision's RandomHorizontalFlip then RandomCrop(padding=pad), in numpy."""
    H, W = img.shape[:2]
    src = img[:, ::-1] if flip else img
    padded = np.pad(src, ((pad, pad), (pad, pad), (0, 0)))
    return padded[top : top + H, left : left + W]


def test_cifar_crop_matches_numpy_and_pads_with_zeros() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(1, 256, (32, 32, 3), dtype=np.uint8)  # no zeros in the picture itself
    state = new_state(1)
    saw_padding = False
    for _ in range(200):
        out = np.empty_like(img)
        rec = np.full(PRE_FIELDS, -1.0)
        cifar_flip_crop(img, state, 4, out, rec)
        flip, top, left = bool(rec[PRE_FLIP]), int(rec[PRE_TOP]), int(rec[PRE_LEFT])
        assert np.array_equal(out, np_cifar(img, flip, top, left))
        zero_rows = max(0, 4 - top) + max(0, top - 4)
        zero_cols = max(0, 4 - left) + max(0, left - 4)
        assert (out == 0).all(axis=2).sum() == 32 * 32 - (32 - zero_rows) * (32 - zero_cols)
        saw_padding |= zero_rows > 0
    assert saw_padding


def test_cifar_crop_non_square() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (20, 44, 3), dtype=np.uint8)
    out = np.empty_like(img)
    rec = np.full(PRE_FIELDS, -1.0)
    cifar_flip_crop(img, new_state(2), 3, out, rec)
    expected = np_cifar(img, bool(rec[PRE_FLIP]), int(rec[PRE_TOP]), int(rec[PRE_LEFT]), pad=3)
    assert np.array_equal(out, expected)


def test_cifar_crop_distribution() -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    out = np.empty_like(img)
    state = new_state(3)
    recs = np.full((4500, PRE_FIELDS), -1.0)
    for i in range(len(recs)):
        cifar_flip_crop(img, state, 4, out, recs[i])
    flips = recs[:, PRE_FLIP].astype(int)
    assert stats.binomtest(int(flips.sum()), len(flips), 0.5).pvalue > 1e-3
    for field in (PRE_TOP, PRE_LEFT):
        counts = np.bincount(recs[:, field].astype(int), minlength=9)
        assert len(counts) == 9  # 0..8 only
        assert stats.chisquare(counts).pvalue > 1e-3
    # top and left independent
    table = np.zeros((9, 9))
    np.add.at(table, (recs[:, PRE_TOP].astype(int), recs[:, PRE_LEFT].astype(int)), 1)
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_random_flip() -> None:
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    state = new_state(4)
    flips = 0
    for _ in range(2000):
        out = np.empty_like(img)
        rec = np.full(PRE_FIELDS, -1.0)
        random_flip(img, state, out, rec)
        expected = img[:, ::-1] if rec[PRE_FLIP] == 1 else img
        assert np.array_equal(out, expected)
        flips += int(rec[PRE_FLIP])
    assert stats.binomtest(flips, 2000, 0.5).pvalue > 1e-3


# ------------------------------------------------------------------- RandomResizedCrop
@pytest.mark.parametrize(("height", "width"), [(256, 256), (300, 400), (375, 500), (480, 270)])
def test_rrc_scale_and_ratio_ranges(height: int, width: int) -> None:
    state = new_state(5, height, width)
    area = height * width
    fallbacks = 0
    scales, ratios = [], []
    for _ in range(3000):
        i, j, h, w, attempt = rrc_params(state, height, width, 0.08, 1.0, 3 / 4, 4 / 3)
        assert i >= 0 and i + h <= height and j >= 0 and j + w <= width and h > 0 and w > 0
        if attempt == 10:
            fallbacks += 1
            continue
        # rounding h and w moves the ratio/area by at most half a pixel per side
        ratio_lo = (3 / 4) * (1 - 1 / min(h, w)) ** 2
        ratio_hi = (4 / 3) * (1 + 1 / min(h, w)) ** 2
        assert ratio_lo <= w / h <= ratio_hi
        assert 0.08 * (1 - 1 / min(h, w)) ** 2 <= h * w / area <= 1.0
        scales.append(h * w / area)
        ratios.append(w / h)
    assert fallbacks < 30  # 10 misses in a row are rare for these shapes
    # the whole scale range is used: small crops and crops near the largest box that fits
    in_ratio = width / height
    largest = min(1.0, in_ratio / (3 / 4), (4 / 3) / in_ratio)
    assert min(scales) < 0.1 and max(scales) > 0.8 * largest
    assert min(ratios) < 0.8 and max(ratios) > 1.25


def test_rrc_fallback_is_torchvision_centre_crop() -> None:
    # 10 x 1000: no box of the ratio range fits, every attempt misses.
    i, j, h, w, attempt = rrc_params(new_state(6), 10, 1000, 0.08, 1.0, 3 / 4, 4 / 3)
    assert attempt == 10
    assert (h, w) == (10, round(10 * 4 / 3)) and (i, j) == (0, (1000 - 13) // 2)
    i, j, h, w, attempt = rrc_params(new_state(6), 1000, 10, 0.08, 1.0, 3 / 4, 4 / 3)
    assert attempt == 10
    assert (h, w) == (round(10 / (3 / 4)), 10) and (i, j) == ((1000 - 13) // 2, 0)


def test_rrc_crop_then_pillow_bilinear() -> None:
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (300, 380, 3), dtype=np.uint8)
    for seed in range(5):
        rec = np.full(PRE_FIELDS, -1.0)
        out = random_resized_crop(img, new_state(8, seed), (224, 224), rec)
        i, j = int(rec[PRE_RRC_I]), int(rec[PRE_RRC_J])
        h, w = int(rec[PRE_RRC_H]), int(rec[PRE_RRC_W])
        assert rec[PRE_RRC_ATTEMPTS] >= 0
        expected = np.asarray(
            Image.fromarray(img)
            .crop((j, i, j + w, i + h))
            .resize((224, 224), Image.Resampling.BILINEAR)
        )
        assert out.shape == (224, 224, 3) and np.array_equal(out, expected)
        # replaying the same stream draws the same box
        again = rrc_params(new_state(8, seed), 300, 380, 0.08, 1.0, 3 / 4, 4 / 3)
        assert again[:4] == (i, j, h, w)


def test_rrc_non_square_output() -> None:
    img = np.random.default_rng(9).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    out = random_resized_crop(img, new_state(10), (24, 40))
    assert out.shape == (24, 40, 3)


# --------------------------------------------------------------------- mixing pictures
def test_mixing_set_resize_matches_torchvision_resize() -> None:
    rng = np.random.default_rng(11)
    pics = [
        rng.integers(0, 256, (64, 48, 3), dtype=np.uint8),
        rng.integers(0, 256, (100, 100, 3), dtype=np.uint8),
        rng.integers(0, 256, (40, 90, 3), dtype=np.uint8),
    ]
    ms = MixingSet.from_pictures(pics, IPMixConfig.preset("cifar"))
    assert ms.short_side == 36 and ms.size == (32, 32)
    # torchvision Resize(36): shorter side 36, longer int(36 * long / short)
    assert ms.shapes.tolist() == [[48, 36], [36, 36], [36, 81]]
    for i, p in enumerate(pics):
        h, w = ms.shapes[i]
        expected = np.asarray(Image.fromarray(p).resize((w, h), Image.Resampling.BILINEAR))
        assert np.array_equal(ms.picture(i), expected)
    assert ms.pictures.shape == (3, 48, 81, 3)
    assert np.all(ms.pictures[1, 36:] == 0)


def test_mixing_short_side_rule() -> None:
    assert IPMixConfig.preset("cifar").mixing_side == 36
    assert IPMixConfig.preset("imagenet").mixing_side == 256
    assert IPMixConfig.preset("cifar", mixing_short_side=40).mixing_side == 40
    assert resized_shape(300, 300, 256, (224, 224)) == (256, 256)
    # a non-square output is covered even when the shorter-side rule alone would not
    h, w = resized_shape(50, 50, 36, (32, 64))
    assert h >= 32 and w >= 64 and h == w


def test_random_crop_picture_window_and_padding() -> None:
    rng = np.random.default_rng(12)
    pic = np.zeros((40, 50, 3), np.uint8)
    pic[:36, :45] = rng.integers(1, 256, (36, 45, 3), dtype=np.uint8)
    state = new_state(13)
    tops, lefts = [], []
    for _ in range(2000):
        out = np.empty((32, 32, 3), np.uint8)
        rec = np.full(PRE_FIELDS, -1.0)
        random_crop_picture(pic, 36, 45, state, out, rec)
        top, left = int(rec[PRE_PTOP]), int(rec[PRE_PLEFT])
        assert np.array_equal(out, pic[top : top + 32, left : left + 32])
        tops.append(top)
        lefts.append(left)
    assert stats.chisquare(np.bincount(tops, minlength=5)).pvalue > 1e-3
    assert max(tops) == 4 and max(lefts) == 13 and min(tops) == 0 and min(lefts) == 0
    # a picture smaller than the output is placed at a random offset, zeros around it
    small = rng.integers(1, 256, (20, 40, 3), dtype=np.uint8)
    out = np.empty((32, 32, 3), np.uint8)
    rec = np.full(PRE_FIELDS, -1.0)
    random_crop_picture(small, 20, 40, state, out, rec)
    top, left = int(rec[PRE_PTOP]), int(rec[PRE_PLEFT])
    assert -12 <= top <= 0 and 0 <= left <= 8
    assert np.array_equal(out[-top : -top + 20], small[:, left : left + 32])
    assert np.all(np.delete(out, np.s_[-top : -top + 20], axis=0) == 0)


def test_mixing_set_from_a_folder(tmp_path) -> None:
    rng = np.random.default_rng(14)
    for name in ("b.png", "a.png"):
        Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(tmp_path / name)
    ms = MixingSet.from_pictures(open_mixing_set(tmp_path), (32, 32))
    assert len(ms) == 2 and ms.shapes.tolist() == [[36, 43], [36, 43]]
    first = np.asarray(Image.open(tmp_path / "a.png").resize((43, 36), Image.Resampling.BILINEAR))
    assert np.array_equal(ms.picture(0), first)  # sorted by path
    assert not math.isnan(float(ms.pictures.mean()))
