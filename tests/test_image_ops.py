"""Image-level ops: parity with Pillow, and the recipe's level -> parameter mapping.

Every kernel is meant to be bit-identical to Pillow (see the module docstrings of
ipmix_cli/augment/ops_*.py for how), so each parity test pins a tolerance of 0 levels for
both the maximum and the mean absolute difference: any rounding, clamping or
edge-handling deviation fails. The geometric and enhance tests state their tolerance via
``assert_close`` so a future, deliberately approximate kernel only has to loosen the two
numbers at the top of this file, with a reason.

Images: uniform noise (every value and every neighbour difference occurs) and a
"natural" image (smooth gradients, hard edges, a flat patch, mild noise, near-constant
channels), at square, non-square and tiny sizes.
"""

from __future__ import annotations

import decimal
import math
from decimal import Decimal

import numba as nb
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from ipmix_cli.augment.ops import enhance as ops_enhance
from ipmix_cli.augment.ops import geometry as ops_geometry
from ipmix_cli.augment.ops import point as ops_point
from ipmix_cli.augment.ops.dispatch import N_ALL_OPS, N_DEFAULT_OPS, OP_NAMES, apply_image_op

# Tolerances (uint8 levels) for ops where exactness is an implementation choice rather
# than a given: the measured difference against Pillow 13.0 is 0 everywhere.
GEOMETRIC_MAX_DIFF, GEOMETRIC_MEAN_DIFF = 0, 0.0
ENHANCE_MAX_DIFF, ENHANCE_MEAN_DIFF = 0, 0.0

SIZES = [(32, 32), (17, 29), (29, 17), (224, 224)]  # (H, W)
SMALL_SIZES = [(1, 1), (2, 3), (3, 2), (5, 4)]


def natural_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Gradients + edges + a flat patch + noise; blue nearly constant (3 levels)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 30 + 200 * x / max(w - 1, 1)
    g = 220 - 180 * y / max(h - 1, 1)
    b = np.full((h, w), 120.0)
    img = np.stack([r, g, b], -1)
    img[h // 4 : h // 2 + 1, w // 3 : 2 * w // 3 + 1] = (250, 20, 121)  # hard-edged block
    img[:, : max(w // 8, 1)] = (64, 64, 122)  # flat band
    img[..., :2] += rng.normal(0, 5, (h, w, 2))
    img[..., 2] += rng.integers(-1, 2, (h, w))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def noise_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def images(sizes: list[tuple[int, int]]) -> list[tuple[str, np.ndarray]]:
    out = []
    for h, w in sizes:
        out.append((f"noise{h}x{w}", noise_image(h, w, seed=h * 1000 + w)))
        out.append((f"natural{h}x{w}", natural_image(h, w, seed=h + w)))
    return out


IMAGES = images(SIZES)
ALL_IMAGES = IMAGES + images(SMALL_SIZES)
IMAGE_IDS = [name for name, _ in IMAGES]
ALL_IMAGE_IDS = [name for name, _ in ALL_IMAGES]


def pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img, "RGB")


def assert_exact(got: np.ndarray, want: Image.Image | np.ndarray) -> None:
    want = np.asarray(want)
    assert got.dtype == np.uint8 and got.shape == want.shape
    if not np.array_equal(got, want):
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        where = np.argwhere(diff)[:5].tolist()
        raise AssertionError(f"{int((diff > 0).sum())} values differ, max {diff.max()}, at {where}")


def assert_close(got: np.ndarray, want: Image.Image, max_diff: int, mean_diff: float) -> None:
    want = np.asarray(want)
    assert got.dtype == np.uint8 and got.shape == want.shape
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= max_diff, f"max |diff| {diff.max()} > {max_diff}"
    assert diff.mean() <= mean_diff, f"mean |diff| {diff.mean()} > {mean_diff}"


# --------------------------------------------------------------------------- point ops


@pytest.mark.parametrize(("name", "img"), ALL_IMAGES, ids=ALL_IMAGE_IDS)
def test_level_free_point_ops_match_pillow(name: str, img: np.ndarray) -> None:
    assert_exact(ops_point.equalize(img), ImageOps.equalize(pil(img)))
    assert_exact(ops_point.invert(img), ImageOps.invert(pil(img)))
    assert_exact(ops_point.mirror(img), ImageOps.mirror(pil(img)))


@pytest.mark.parametrize(("name", "img"), IMAGES, ids=IMAGE_IDS)
def test_posterize_and_solarize_match_pillow(name: str, img: np.ndarray) -> None:
    for bits in range(1, 9):
        assert_exact(ops_point.posterize(img, bits), ImageOps.posterize(pil(img), bits))
    for threshold in (0, 1, 26, 128, 200, 255, 256):
        assert_exact(ops_point.solarize(img, threshold), ImageOps.solarize(pil(img), threshold))


AUTOCONTRAST_CUTOFFS = [0, 0.0, 0.5, 1, 2.5, 4.999, 7.3, 9.9, 10.0, 1e-9, 33.3, 49.9]


@pytest.mark.parametrize(("name", "img"), ALL_IMAGES, ids=ALL_IMAGE_IDS)
def test_autocontrast_matches_pillow(name: str, img: np.ndarray) -> None:
    for cutoff in AUTOCONTRAST_CUTOFFS:
        got = ops_point.autocontrast(img, float(cutoff))
        assert_exact(got, ImageOps.autocontrast(pil(img), cutoff))


def test_autocontrast_near_constant_and_sparse_channels() -> None:
    rng = np.random.default_rng(7)
    cases = [
        np.full((9, 13, 3), 77, np.uint8),  # constant: identity LUT
        rng.integers(100, 102, (16, 21, 3), dtype=np.uint8),  # two levels per channel
        rng.integers(0, 3, (16, 21, 3), dtype=np.uint8) * 127,  # three spread levels
    ]
    spike = np.full((20, 20, 3), 50, np.uint8)
    spike[0, 0] = (0, 255, 49)  # single outliers the cut must swallow
    spike[-1, -1] = (255, 0, 51)
    cases.append(spike)
    for img in cases:
        for cutoff in AUTOCONTRAST_CUTOFFS:
            assert_exact(
                ops_point.autocontrast(img, float(cutoff)), ImageOps.autocontrast(pil(img), cutoff)
            )


def test_equalize_clips_pillows_256_lut_entry() -> None:
    # Pillow's LUT exceeds 255 at the top occupied bin for such histograms; the C side
    # clips it to 255. This histogram does that (checked in Python below).
    h = np.zeros(256, np.int64)
    h[[130, 192, 243]] = [2469, 2845, 748]
    step = (h.sum() - 748) // 255
    assert (step // 2 + 2469 + 2845) // step > 255
    channel = np.repeat(np.arange(256), h).astype(np.uint8)
    img = np.stack([channel, channel[::-1], channel], -1)[None]
    assert_exact(ops_point.equalize(img), ImageOps.equalize(pil(img)))


def test_python_float_floordiv() -> None:
    # autocontrast's cut is int(n * cutoff // 100) with Python's float //, which is not
    # floor(a / b) when a / b rounds up onto an integer.
    rng = np.random.default_rng(3)
    values = list(rng.uniform(0, 1e7, 2000)) + [100 * k * (1 - 2**-52) for k in range(1, 500)]
    values += [0.0, 99.99999999999999, 100.0, 1e-300, 5e6]
    for v in values:
        assert ops_point._py_float_floordiv(float(v), 100.0) == float(v) // 100


# ------------------------------------------------------------------------- geometric ops

ROTATE_DEGREES = [*range(-30, 31, 1), 90, -90, 180, 270, 360, 45.5, -12.25, 0.001, 359.9]
AFFINE_MATRICES = (
    [(1, s, 0, 0, 1, 0) for s in (0.003, -0.0045, 0.09, -0.09, 0.17, 0.3, -0.3)]  # shear_x
    + [(1, 0, 0, s, 1, 0) for s in (0.003, -0.0045, 0.09, -0.09, 0.17, 0.3, -0.3)]  # shear_y
    + [(1, 0, t, 0, 1, 0) for t in (-74, -10, -1, 0, 1, 3, 7, 40)]  # translate_x
    + [(1, 0, 0, 0, 1, t) for t in (-74, -7, -1, 1, 2, 9)]  # translate_y
    + [
        (1, 0, 0.5, 0, 1, -0.25),  # sub-pixel translation
        (0.9, 0.2, 1.5, -0.1, 1.1, -2.25),  # general
        (2, 0, 0, 0, 0.5, 0),  # scaling
        (-1, 0, 31, 0, 1, 0),  # reflection
        (1, 0.06, 3, 0, 1, 2),  # shear + integral translation (x-only weights)
        (1, 0, 2, -0.06, 1, 0.5),  # shear + fractional translation
    ]
)


@pytest.mark.parametrize(("name", "img"), ALL_IMAGES, ids=ALL_IMAGE_IDS)
def test_rotate_matches_pillow(name: str, img: np.ndarray) -> None:
    """Exact, including the samples that land on pixel centres (where a 1e-16 coordinate
    error flips a truncation) and Pillow's transpose fast paths."""
    for deg in ROTATE_DEGREES:
        want = pil(img).rotate(deg, resample=Image.BILINEAR)
        got = ops_geometry.rotate(img, float(deg))
        assert_close(got, want, GEOMETRIC_MAX_DIFF, GEOMETRIC_MEAN_DIFF)


@pytest.mark.parametrize(("name", "img"), ALL_IMAGES, ids=ALL_IMAGE_IDS)
def test_affine_matches_pillow(name: str, img: np.ndarray) -> None:
    h, w = img.shape[:2]
    for m in AFFINE_MATRICES:
        want = pil(img).transform((w, h), Image.AFFINE, m, resample=Image.BILINEAR)
        got = ops_geometry.affine(img, *(float(v) for v in m))
        assert_close(got, want, GEOMETRIC_MAX_DIFF, GEOMETRIC_MEAN_DIFF)


def test_translate_direction() -> None:
    # Output->input mapping: d = 2 moves the content two pixels toward smaller x.
    img = natural_image(8, 10)
    out = ops_geometry.affine(img, 1.0, 0.0, 2.0, 0.0, 1.0, 0.0)
    assert np.array_equal(out[:, :-2], img[:, 2:])
    assert not out[:, -2:].any()


def test_round15_is_pythons_round() -> None:
    # Image.rotate rounds cos/sin to 15 decimals with Python's correctly rounded round();
    # the naive rint(x * 1e15) / 1e15 differs for a few percent of inputs.
    rng = np.random.default_rng(11)
    xs = [float(v) for v in rng.uniform(-1, 1, 20000)]
    xs += [math.cos(-math.radians(d % 360.0)) for d in np.arange(-720.0, 720.0, 0.25)]
    xs += [math.sin(-math.radians(d % 360.0)) for d in np.arange(-720.0, 720.0, 0.25)]
    xs += [0.0, -0.0, 1.0, -1.0, 5e-16, -5e-16, 1.5e-15, 2.5e-15]
    bad = [x for x in xs if ops_geometry._round15(x) != round(x, 15)]
    assert not bad, bad[:5]


def _exact_sin_cos(x: float) -> tuple[Decimal, Decimal]:
    """sin and cos of the exact binary value of ``x`` (|x| <= 2 pi) to 60 digits: Taylor
    series in ``decimal`` at 70 digits, pure arithmetic, every operation in that context."""
    ctx = decimal.Context(prec=70)
    r = Decimal(x)
    r2 = ctx.multiply(r, r)
    eps = Decimal(10) ** -65
    s, term, n = r, r, 1
    while ctx.abs(term) > eps:
        term = ctx.divide(ctx.multiply(ctx.minus(term), r2), (n + 1) * (n + 2))
        s, n = ctx.add(s, term), n + 2
    c, term, n = Decimal(1), Decimal(1), 0
    while ctx.abs(term) > eps:
        term = ctx.divide(ctx.multiply(ctx.minus(term), r2), (n + 1) * (n + 2))
        c, n = ctx.add(c, term), n + 2
    return s, c


def _midpoint_margin_ulps(v: Decimal) -> float:
    """Distance of ``v`` from the nearest 15-decimal rounding midpoint ``(k + 1/2) 1e-15``, in
    ulps of ``v``: a libm result within that many ulps of ``v`` rounds to 15 decimals as ``v``
    does."""
    ctx = decimal.Context(prec=70)
    scaled = ctx.multiply(ctx.abs(v), Decimal(10) ** 15)
    frac = ctx.subtract(scaled, scaled.to_integral_value(rounding=decimal.ROUND_FLOOR))
    distance = ctx.multiply(ctx.abs(ctx.subtract(frac, Decimal("0.5"))), Decimal(10) ** -15)
    return float(ctx.divide(distance, Decimal(math.ulp(float(v)))))


def test_rotate_matrix_is_correctly_rounded_at_every_integer_angle() -> None:
    """The recipe rotates by integer degrees (``int(L * 30 / 10)``, any sign, any multiple of
    360 for large severities). For every one of the 360 angles the matrix entries are
    ``round(x, 15)`` of the correctly rounded cosine and sine, from exact decimal values: the
    same on every CPU, and Pillow's wherever its libm rounds correctly.

    Why not libm with the 15-decimal rounding absorbing its error: the margins say no. The
    exact cosine or sine lies within one ulp of a rounding midpoint for 95 of the 360 angles
    (111 of the 720 values; 342 degrees: 0.002 ulp), so a libm result one ulp off would flip
    the rounded entry."""
    margins = []
    for d in range(360):
        rad = -(float(d) * (math.pi / 180.0))  # rotate_matrix's angle, operation by operation
        s, c = _exact_sin_cos(rad)
        cs, sn, msn = round(float(c), 15), round(float(s), 15), round(-float(s), 15)
        a, b, _, dd, e, _ = ops_geometry.rotate_matrix(31, 17, float(d))
        for got, want in ((a, cs), (b, sn), (dd, msn), (e, cs)):
            assert got == want and math.copysign(1, got) == math.copysign(1, want), d
        for v, rounded in ((c, cs), (s, sn)):
            margin = _midpoint_margin_ulps(v)
            margins.append((margin, d))
            if margin > 1.0:  # any libm within an ulp rounds as the exact value does
                libm = math.cos(rad) if v is c else math.sin(rad)
                assert round(libm, 15) == rounded, d
    for d in range(-30, 31):  # the presets' angles, through the modulo
        assert ops_geometry.rotate_matrix(32, 32, float(d)) == ops_geometry.rotate_matrix(
            32, 32, float(d % 360)
        )
    smallest, at = min(margins)
    print(f"smallest 15-decimal rounding margin: {smallest:.4f} ulp at {at} degrees")
    assert smallest < 0.01 and at == 342  # why rotate_matrix does not take libm's cos


# ------------------------------------------------------------------------- enhance ops

ENHANCERS = {
    "color": (ops_enhance.color, ImageEnhance.Color),
    "contrast": (ops_enhance.contrast, ImageEnhance.Contrast),
    "brightness": (ops_enhance.brightness, ImageEnhance.Brightness),
    "sharpness": (ops_enhance.sharpness, ImageEnhance.Sharpness),
}
# Interpolation (0..1, the CIFAR/ImageNet presets' range 0.118..0.64 included) and
# extrapolation (> 1, severity up to 10 reaches 1.9; < 0), plus the shortcut values.
ENHANCE_FACTORS = [0.0, 0.1, 0.118, 0.25, 0.37, 0.5, 0.64, 0.999, 1.0, 1.09, 1.5, 1.9, 3.0, -0.4]


@pytest.mark.parametrize("op", list(ENHANCERS))
@pytest.mark.parametrize(("name", "img"), ALL_IMAGES, ids=ALL_IMAGE_IDS)
def test_enhance_matches_pillow(op: str, name: str, img: np.ndarray) -> None:
    ours, theirs = ENHANCERS[op]
    for factor in ENHANCE_FACTORS:
        want = theirs(pil(img)).enhance(factor)
        assert_close(ours(img, factor), want, ENHANCE_MAX_DIFF, ENHANCE_MEAN_DIFF)


@nb.njit(cache=True)
def _blend_table(factor: float) -> np.ndarray:
    # out[d, v] = the kernels' blend of degenerate level d and image level v.
    alpha = np.float32(factor)
    out = np.empty((256, 256), np.uint8)
    for d in range(256):
        for v in range(256):
            out[d, v] = ops_enhance._blend1(np.float32(d), np.float32(v), alpha)
    return out


def test_blend_arithmetic_matches_pillow_on_every_level_pair() -> None:
    """All 65536 (degenerate, image) level pairs against Image.blend: float32 factor,
    float32 arithmetic, truncation and clipping (a float64 blend differs on ~1 pair in
    100k, too rarely for the image tests above to be sure to notice)."""
    levels = np.arange(256, dtype=np.uint8)
    deg = Image.fromarray(np.repeat(levels[:, None], 256, 1), "L")
    val = Image.fromarray(np.repeat(levels[None, :], 256, 0), "L")
    factors = ENHANCE_FACTORS + [float(f) for f in np.random.default_rng(5).uniform(0.1, 1.9, 150)]
    for factor in factors:
        assert_exact(_blend_table(factor), Image.blend(deg, val, factor))


# -------------------------------------------------------------- apply_image_op mapping


def reference_op(name: str, img: Image.Image, level: float, negate: bool) -> Image.Image:
    """What the reference's IPMix_utils.py does for a drawn level and sign, with our one
    documented deviation: shear/translate keep the image's own size, and translate uses
    the image's own width (x) / height (y) in place of IMAGE_SIZE."""
    w, h = img.size

    def int_parameter(lvl: float, maxval: float) -> int:
        return int(lvl * maxval / 10)

    def float_parameter(lvl: float, maxval: float) -> float:
        return float(lvl) * maxval / 10.0

    if name == "equalize":
        return ImageOps.equalize(img)
    if name == "posterize":
        return ImageOps.posterize(img, 4 - int_parameter(level, 4))
    if name == "rotate":
        degrees = int_parameter(level, 30)
        return img.rotate(-degrees if negate else degrees, resample=Image.BILINEAR)
    if name == "solarize":
        return ImageOps.solarize(img, 256 - int_parameter(level, 256))
    if name in ("shear_x", "shear_y"):
        s = float_parameter(level, 0.3)
        s = -s if negate else s
        m = (1, s, 0, 0, 1, 0) if name == "shear_x" else (1, 0, 0, s, 1, 0)
        return img.transform((w, h), Image.AFFINE, m, resample=Image.BILINEAR)
    if name in ("translate_x", "translate_y"):
        d = int_parameter(level, (w if name == "translate_x" else h) / 3)
        d = -d if negate else d
        m = (1, 0, d, 0, 1, 0) if name == "translate_x" else (1, 0, 0, 0, 1, d)
        return img.transform((w, h), Image.AFFINE, m, resample=Image.BILINEAR)
    if name == "mirror":
        return ImageOps.mirror(img)
    if name == "invert":
        return ImageOps.invert(img)
    if name == "autocontrast":
        return ImageOps.autocontrast(img, 10 - float_parameter(level, 10))
    factor = float_parameter(level, 1.8) + 0.1
    enhancer = {
        "color": ImageEnhance.Color,
        "contrast": ImageEnhance.Contrast,
        "brightness": ImageEnhance.Brightness,
        "sharpness": ImageEnhance.Sharpness,
    }[name]
    return enhancer(img).enhance(factor)


def test_op_table() -> None:
    assert len(OP_NAMES) == N_ALL_OPS == 15 and N_DEFAULT_OPS == 10
    assert OP_NAMES[:N_DEFAULT_OPS] == (
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
    )


# Levels: the CIFAR (severity 3) and ImageNet (severity 1) ranges, both ends, values that
# sit on int() boundaries (3.3333 -> 10 degrees, 2.5 -> 1 posterize bit), and up to 9.99.
LEVELS = [0.1, 0.15, 0.3333, 0.5, 0.99, 1.0, 1.7, 2.5, 2.9999, 3.0, 3.3333334, 6.1, 9.99]


@pytest.mark.parametrize("op", range(N_ALL_OPS), ids=list(OP_NAMES))
def test_apply_image_op_matches_reference_mapping(op: int) -> None:
    name = OP_NAMES[op]
    rng = np.random.default_rng(op)
    cases = [natural_image(32, 32), noise_image(17, 29), natural_image(40, 24)]
    for img in cases:
        before = img.copy()
        for level in LEVELS + list(rng.uniform(0.1, 3.0, 4)):
            for negate in (False, True):
                want = reference_op(name, pil(img), float(level), negate)
                got = apply_image_op(op, img, float(level), negate)
                assert_exact(got, want)
        assert np.array_equal(img, before), "input must not be modified"


def test_apply_image_op_224() -> None:
    img = natural_image(224, 224)
    for op, name in enumerate(OP_NAMES):
        for level, negate in ((0.7, False), (2.4, True)):
            want = reference_op(name, pil(img), level, negate)
            assert_exact(apply_image_op(op, img, level, negate), want)


def test_apply_image_op_strided_read_only_input() -> None:
    # Callers may hand over np.asarray(PIL image) (read-only) or a strided view; one
    # array that is both keeps this to a single extra compilation.
    base = natural_image(30, 44)
    base.flags.writeable = False
    view = base[::2, 1::3]
    assert not view.flags.c_contiguous and not view.flags.writeable
    for op, name in enumerate(OP_NAMES):
        want = reference_op(name, pil(np.ascontiguousarray(view)), 2.2, True)
        assert_exact(apply_image_op(op, view, 2.2, True), want)


def test_apply_image_op_rejects_unknown_op() -> None:
    with pytest.raises(ValueError):
        apply_image_op(N_ALL_OPS, natural_image(8, 8), 1.0, False)
