"""End-to-end checks of the public engine API: closed forms, replays, seeding, JSD, config."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ipmix_cli.augment.config import ConfigError, IPMixConfig
from ipmix_cli.augment.engine import (
    augment_batch,
    augment_batch_traced,
    augment_image,
    augment_images,
    warmup,
)
from ipmix_cli.augment.mixing_set import MixingSet
from ipmix_cli.augment.ops.dispatch import apply_image_op
from ipmix_cli.augment.patch import (
    OPF_HEIGHT,
    OPF_LEFT,
    OPF_LEVEL,
    OPF_NEGATE,
    OPF_OP,
    OPF_RULE,
    OPF_SOURCE,
    OPF_TOP,
    OPF_WA,
    OPF_WB,
    OPF_WIDTH,
)
from ipmix_cli.augment.pixel_rules import OVERFLOW_WRAP
from ipmix_cli.augment.pretransform import (
    PRE_FLIP,
    PRE_LEFT,
    PRE_PICK,
    PRE_PLEFT,
    PRE_PTOP,
    PRE_RRC_H,
    PRE_RRC_I,
    PRE_RRC_J,
    PRE_RRC_W,
    PRE_TOP,
)

F = np.float32


# ----------------------------------------------------------------------------- helpers
def natural_images(n: int, H: int, W: int, seed: int) -> np.ndarray:
    """Smooth random images (blurred noise + gradients), closer to photos than white noise."""
    rng = np.random.default_rng(seed)
    small = rng.random((n, H // 4 + 2, W // 4 + 2, 3))
    big = small.repeat(4, axis=1).repeat(4, axis=2)[:, :H, :W]
    yy, xx = np.mgrid[0:H, 0:W]
    grad = (yy[None, :, :, None] / H + xx[None, :, :, None] / W) / 2
    img = 0.7 * big + 0.3 * grad * rng.random((n, 1, 1, 3))
    return (img * 255).astype(np.uint8)


def mixing_for(config: IPMixConfig, n: int = 5, seed: int = 0) -> MixingSet:
    rng = np.random.default_rng(seed)
    H, W = config.size
    pics = rng.integers(0, 256, (n, H + 7, W + 5, 3), dtype=np.uint8)
    return MixingSet.from_pictures(pics, config)


def np_convert_wrap(v: np.ndarray) -> np.ndarray:
    scaled = v.astype(np.float32) * F(255)
    ok = np.isfinite(scaled) & (np.abs(scaled) < 2.0**31)
    out = np.zeros(scaled.shape, np.uint8)
    out[ok] = (np.trunc(scaled[ok]).astype(np.int64) & 255).astype(np.uint8)
    return out


def circular_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = np.abs(x.astype(np.int64) - y.astype(np.int64))
    return np.minimum(d, 256 - d)


def np_cifar(img: np.ndarray, flip: bool, top: int, left: int, pad: int = 4) -> np.ndarray:
    H, W = img.shape[:2]
    src = img[:, ::-1] if flip else img
    return np.pad(src, ((pad, pad), (pad, pad), (0, 0)))[top : top + H, left : left + W]


# ------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("jsd", [False, True])
def test_t0_output_is_input(jsd: bool) -> None:
    config = IPMixConfig.preset("cifar", pre="none", t=0, jsd=jsd)
    images = natural_images(64, 32, 32, 1)
    out = augment_batch(images, np.arange(64), 0, mixing_for(config), config, 5)
    if jsd:
        assert out.shape == (64, 3, 32, 32, 3)
        for v in range(3):
            assert np.array_equal(out[:, v], images)
    else:
        assert np.array_equal(out, images)


def test_t0_with_cifar_pretransform_is_the_pretransformed_input() -> None:
    config = IPMixConfig.preset("cifar", t=0)
    images = natural_images(40, 32, 32, 2)
    out, tr = augment_batch_traced(images, np.arange(40), 3, mixing_for(config), config, 6)
    for n in range(40):
        rec = tr.pre[n]
        expected = np_cifar(images[n], rec[PRE_FLIP] == 1, int(rec[PRE_TOP]), int(rec[PRE_LEFT]))
        assert np.array_equal(out[n], expected)


def test_final_mix_recomputes_from_traced_chains() -> None:
    config = IPMixConfig.preset("cifar", pre="none")
    images = natural_images(200, 32, 32, 3)
    out, tr = augment_batch_traced(images, np.arange(200), 0, mixing_for(config), config, 7)
    m = tr.m[:, 0][:, None, None, None]
    w = tr.weights[:, 0]
    mix = np.einsum("nk,nkhwc->nhwc", w, tr.chains[:, 0].astype(np.float64))
    expected = np.floor((1 - m) * images + m * mix + 0.5).clip(0, 255)
    diff = np.abs(out.astype(np.float64) - expected)
    assert diff.max() <= 1  # float32 vs float64 at .5 boundaries
    assert (diff == 0).mean() > 0.999
    # the chains really vary (the check above is not vacuous)
    assert (tr.chains[:, 0] != images[:, None]).any(axis=(2, 3, 4)).mean() > 0.5


def _replay_chain(x, p, recs, n_ops):
    """Replay an image chain exactly (returns None for chains we cannot replay)."""
    c = x
    for j in range(n_ops):
        r = recs[j]
        c = apply_image_op(int(r[OPF_OP]), c, float(r[OPF_LEVEL]), bool(r[OPF_NEGATE]))
    return c


@pytest.mark.parametrize("preset", ["cifar", "imagenet"])
def test_chains_replay(preset: str) -> None:
    config = IPMixConfig.preset(preset, pre="none", size=(32, 32), all_ops=True)
    images = natural_images(300, 32, 32, 4)
    mixing = mixing_for(config)
    _, tr = augment_batch_traced(images, np.arange(300), 0, mixing, config, 8)
    checked = {"image": 0, "weighted": 0, "random": 0, "aug_source": 0}
    for n in range(300):
        x = images[n]
        pic = mixing.picture(int(tr.pre[n, PRE_PICK]))
        top, left = int(tr.pre[n, PRE_PTOP]), int(tr.pre[n, PRE_PLEFT])
        p = pic[top : top + 32, left : left + 32]
        for i in range(config.k):
            chain, nops = tr.chains[n, 0, i], tr.n_ops[n, 0, i]
            recs = tr.ops[n, 0, i]
            if nops == 0:
                assert np.array_equal(chain, x)
            elif tr.kinds[n, 0, i] == 0:
                assert np.array_equal(chain, _replay_chain(x, p, recs, nops))
                checked["image"] += 1
            elif nops == 1:
                r = recs[0]
                if r[OPF_SOURCE] == 1:
                    op, level, neg = int(r[OPF_OP]), float(r[OPF_LEVEL]), bool(r[OPF_NEGATE])
                    src = apply_image_op(op, x, level, neg)
                    checked["aug_source"] += 1
                else:
                    src = p
                bt, bl = int(r[OPF_TOP]), int(r[OPF_LEFT])
                box = (slice(bt, bt + int(r[OPF_HEIGHT])), slice(bl, bl + int(r[OPF_WIDTH])))
                outside = np.ones((32, 32), bool)
                outside[box] = False
                assert np.array_equal(chain[outside], x[outside])
                if r[OPF_RULE] <= 1:
                    a = x[box].astype(np.float32) / F(255)
                    b = src[box].astype(np.float32) / F(255)
                    wa, wb = F(r[OPF_WA]), F(r[OPF_WB])
                    if r[OPF_RULE] == 0:
                        mixed = ((wa * (a * F(2) - F(1)) + wb * (b * F(2) - F(1))) + F(1)) / F(2)
                    else:
                        with np.errstate(over="ignore"):
                            mixed = (a * F(2)) ** wa * np.maximum(b * F(2), F(1e-37)) ** wb / F(2)
                    assert circular_distance(chain[box], np_convert_wrap(mixed)).max() <= 1
                    checked["weighted"] += 1
                else:
                    assert np.all((chain[box] == x[box]) | (chain[box] == src[box]))
                    checked["random"] += 1
    assert min(checked["image"], checked["weighted"], checked["random"]) > 20, checked
    if preset == "imagenet":
        assert checked["aug_source"] > 20
    else:
        assert checked["aug_source"] == 0


# --------------------------------------------------------------------------- seeding
def test_independent_of_batch_composition_and_order() -> None:
    config = IPMixConfig.preset("cifar")
    mixing = mixing_for(config)
    images = natural_images(50, 32, 32, 5)
    sources = np.arange(100, 150)
    full = augment_batch(images, sources, 2, mixing, config, 11)
    perm = np.random.default_rng(0).permutation(50)
    shuffled = augment_batch(images[perm], sources[perm], 2, mixing, config, 11)
    assert np.array_equal(shuffled, full[perm])
    part = augment_batch(images[7:9], sources[7:9], np.array([2, 2]), mixing, config, 11)
    assert np.array_equal(part, full[7:9])
    one = augment_image(images[30], int(sources[30]), 2, mixing, config, 11)
    assert np.array_equal(one, full[30])
    # the same image under another source index is another sample
    other = augment_batch(images[:10], sources[:10] + 1000, 2, mixing, config, 11)
    assert (other != full[:10]).any(axis=(1, 2, 3)).all()


def test_determinism_and_key_sensitivity() -> None:
    config = IPMixConfig.preset("cifar", jsd=True)
    mixing = mixing_for(config)
    images = natural_images(30, 32, 32, 6)
    src = np.arange(30)
    a = augment_batch(images, src, 0, mixing, config, 3)
    b = augment_batch(images, src, 0, mixing, config, 3)
    assert np.array_equal(a, b)
    for changed in (
        augment_batch(images, src, 0, mixing, config, 4),  # seed
        augment_batch(images, src, 1, mixing, config, 3),  # copy
    ):
        assert (changed[:, 1] != a[:, 1]).any(axis=(1, 2, 3)).mean() > 0.9
    per_sample_copy = augment_batch(images, src, np.arange(30) % 2, mixing, config, 3)
    assert np.array_equal(per_sample_copy[::2], a[::2])
    copy1 = augment_batch(images, src, 1, mixing, config, 3)
    assert np.array_equal(per_sample_copy[1::2], copy1[1::2])
    # huge and negative seeds are reduced mod 2**64
    assert np.array_equal(
        augment_batch(images[:3], src[:3], 0, mixing, config, -1),
        augment_batch(images[:3], src[:3], 0, mixing, config, 2**64 - 1),
    )


def test_imagenet_path_is_per_sample() -> None:
    config = IPMixConfig.preset("imagenet", size=(32, 32))
    mixing = mixing_for(config)
    rng = np.random.default_rng(7)
    images = [
        natural_images(1, int(h), int(w), i)[0]
        for i, (h, w) in enumerate(rng.integers(40, 90, (12, 2)))
    ]
    batch = augment_images(images, np.arange(12), 0, mixing, config, 21)
    assert batch.shape == (12, 32, 32, 3)
    for i in (0, 5, 11):
        assert np.array_equal(augment_image(images[i], i, 0, mixing, config, 21), batch[i])
    rev = augment_images(images[::-1], np.arange(12)[::-1], 0, mixing, config, 21)
    assert np.array_equal(rev, batch[::-1])


@pytest.mark.parametrize("preset", ["cifar", "imagenet"])
@pytest.mark.parametrize("jsd", [False, True])
def test_results_written_into_a_given_array(preset: str, jsd: bool) -> None:
    """``out=``: the same bytes written into a slice of a larger block (a shard's rows), the
    rows around it untouched; the wrong shape, dtype or layout is refused before any work."""
    config = IPMixConfig.preset(preset, size=(32, 32), jsd=jsd)
    mixing = mixing_for(config)
    images = natural_images(9, 32 if preset == "cifar" else 44, 32 if preset == "cifar" else 52, 3)
    run = augment_batch if preset == "cifar" else augment_images
    expected = run(images, np.arange(9), 1, mixing, config, 5)
    block = np.full((13, *expected.shape[1:]), 7, np.uint8)
    got = run(images, np.arange(9), 1, mixing, config, 5, out=block[2:11])
    assert np.shares_memory(got, block) and np.array_equal(block[2:11], expected)
    assert (block[:2] == 7).all() and (block[11:] == 7).all()
    for bad in (
        np.empty((8, *expected.shape[1:]), np.uint8),  # one row short
        np.empty(expected.shape, np.int16),
        np.empty((9, *expected.shape[1:-1], 6), np.uint8)[..., ::2],  # strided
    ):
        with pytest.raises(ValueError, match="out must be a C-contiguous uint8 array"):
            run(images, np.arange(9), 1, mixing, config, 5, out=bad)


def test_traced_and_untraced_outputs_agree() -> None:
    config = IPMixConfig.preset("imagenet", size=(32, 32), jsd=True)
    mixing = mixing_for(config)
    images = natural_images(20, 48, 40, 8)
    plain = augment_batch(images, np.arange(20), 0, mixing, config, 1)
    traced, tr = augment_batch_traced(images, np.arange(20), 0, mixing, config, 1)
    assert np.array_equal(plain, traced)
    assert tr.chains.shape == (20, 2, 3, 32, 32, 3)


# ------------------------------------------------------------------------------- JSD
def test_jsd_layout_and_views() -> None:
    config = IPMixConfig.preset("cifar", jsd=True)
    single = config.replace(jsd=False)
    mixing = mixing_for(config)
    images = natural_images(60, 32, 32, 9)
    out, tr = augment_batch_traced(images, np.arange(60), 4, mixing, config, 2)
    assert out.shape == (60, 3, 32, 32, 3) and out.dtype == np.uint8
    for n in range(60):  # the clean image is exactly the pre-transformed input
        rec = tr.pre[n]
        expected = np_cifar(images[n], rec[PRE_FLIP] == 1, int(rec[PRE_TOP]), int(rec[PRE_LEFT]))
        assert np.array_equal(out[n, 0], expected)
    differ = (out[:, 1] != out[:, 2]).any(axis=(1, 2, 3))
    assert differ.mean() > 0.9  # independent views (a few may both be near-identity)
    assert not np.array_equal(tr.m[:, 0], tr.m[:, 1])
    # both views share the pre-transform and the mixing picture; view 1 is the non-JSD output
    assert np.array_equal(augment_batch(images, np.arange(60), 4, mixing, single, 2), out[:, 1])


# -------------------------------------------------------------------------- shapes
def test_non_square_images() -> None:
    config = IPMixConfig.preset("cifar", size=(24, 40), patch_sizes=(4, 8, 16, 32, 64))
    mixing = mixing_for(config)
    assert mixing.shapes.min(axis=0).tolist() >= [24, 40]
    images = natural_images(100, 24, 40, 10)
    out, tr = augment_batch_traced(images, np.arange(100), 0, mixing, config, 3)
    assert out.shape == (100, 24, 40, 3)
    pr = tr.op_records(kind=1)
    assert np.all(pr[:, OPF_LEFT] + pr[:, OPF_WIDTH] <= 40)
    assert np.all(pr[:, OPF_TOP] + pr[:, OPF_HEIGHT] <= 24)
    # size 64 clamps per axis: a "square" patch becomes 24 x 40
    assert pr[:, OPF_HEIGHT].max() == 24 and pr[:, OPF_WIDTH].max() == 40


def test_imagenet_full_size_against_pillow_and_the_traced_mix() -> None:
    """The ImageNet preset at its real size: the clean image is RandomResizedCrop + flip as
    Pillow computes it from the traced box, and each view is the traced mix of its chains."""
    config = IPMixConfig.preset("imagenet", jsd=True)
    mixing = mixing_for(config, n=2)
    assert mixing.short_side == 256
    images = [natural_images(1, 300, 400, 11)[0], natural_images(1, 256, 256, 12)[0]]
    out = augment_images(images, [0, 1], 0, mixing, config, 0)
    traced, tr = augment_batch_traced(images, [0, 1], 0, mixing, config, 0)
    assert out.shape == (2, 3, 224, 224, 3) and np.array_equal(out, traced)
    for n, image in enumerate(images):
        i, j, h, w = (int(tr.pre[n, f]) for f in (PRE_RRC_I, PRE_RRC_J, PRE_RRC_H, PRE_RRC_W))
        assert i >= 0 and i + h <= image.shape[0] and j >= 0 and j + w <= image.shape[1]
        crop = Image.fromarray(image[i : i + h, j : j + w])
        clean = np.asarray(crop.resize((224, 224), Image.Resampling.BILINEAR))
        if tr.pre[n, PRE_FLIP] == 1:
            clean = clean[:, ::-1]
        assert np.array_equal(out[n, 0], clean)
        for v in (0, 1):
            mix = np.einsum("k,khwc->hwc", tr.weights[n, v], tr.chains[n, v].astype(np.float64))
            m = tr.m[n, v]
            expected = np.floor((1 - m) * clean + m * mix + 0.5).clip(0, 255)
            diff = np.abs(out[n, 1 + v].astype(np.float64) - expected)
            assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    assert not np.array_equal(out[:, 1], out[:, 2])  # two independent views


def test_input_validation() -> None:
    config = IPMixConfig.preset("cifar")
    mixing = mixing_for(config)
    with pytest.raises(ValueError, match="config.size"):
        augment_batch(np.zeros((2, 28, 28, 3), np.uint8), np.arange(2), 0, mixing, config, 0)
    with pytest.raises(ValueError, match="source indices"):
        augment_batch(np.zeros((2, 32, 32, 3), np.uint8), np.arange(3), 0, mixing, config, 0)
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(np.zeros((2, 32, 32, 3), np.float32), np.arange(2), 0, mixing, config, 0)
    with pytest.raises(ConfigError, match="mixing set"):
        augment_batch(
            np.zeros((2, 32, 32, 3), np.uint8),
            np.arange(2),
            0,
            mixing,
            config.replace(size=(16, 16)),
            0,
        )
    empty = augment_batch(np.zeros((0, 32, 32, 3), np.uint8), np.arange(0), 0, mixing, config, 0)
    assert empty.shape == (0, 32, 32, 3)


def _compiled_signatures() -> dict[str, int]:
    """How many signatures every numba dispatcher of the engine has compiled so far."""
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import ipmix_cli.augment

    counts = {}
    for info in pkgutil.walk_packages(ipmix_cli.augment.__path__, "ipmix_cli.augment."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, CPUDispatcher) and value.__module__ == module.__name__:
                counts[f"{module.__name__}.{name}"] = len(value.signatures)
    return counts


@pytest.mark.parametrize("jsd", [False, True])
def test_warmup_compiles_everything_a_real_batch_needs(jsd: bool) -> None:
    """After ``warmup`` a real batch, of either preset and at its real size, compiles nothing
    more: the job relies on that to keep numba's first dispatch out of its workers."""
    for preset in ("cifar", "imagenet"):
        warmup(IPMixConfig.preset(preset, jsd=jsd, all_ops=True))
    before = _compiled_signatures()
    # the census sees the entry kernels (callees are compiled into them, not on their own)
    assert before["ipmix_cli.augment.recipe.ipmix_batch"] >= 1
    assert before["ipmix_cli.augment.pretransform.rrc_params"] >= 1
    cifar = IPMixConfig.preset("cifar", jsd=jsd, all_ops=True)
    augment_batch(natural_images(8, 32, 32, 1), np.arange(8), 1, mixing_for(cifar), cifar, 3)
    imagenet = IPMixConfig.preset("imagenet", jsd=jsd, all_ops=True, size=(64, 64))
    images = [natural_images(1, 80, 96, 2)[0], natural_images(1, 70, 70, 3)[0]]
    augment_images(images, [0, 1], 2, mixing_for(imagenet), imagenet, 4)
    after = _compiled_signatures()
    assert {name: n for name, n in after.items() if n != before.get(name)} == {}


# ---------------------------------------------------------------------------- config
def test_presets() -> None:
    c = IPMixConfig.preset("cifar")
    assert (c.k, c.t, c.beta, c.severity, c.all_ops) == (3, 3, 3.0, 3.0, False)
    assert c.patch_sizes == (4, 8, 16, 32) and c.patch_source == "mixing"
    assert (c.pre, c.size, c.patch_overflow, c.jsd) == ("cifar", (32, 32), "wrap", False)
    i = IPMixConfig.preset("imagenet", jsd=True)
    assert (i.k, i.t, i.beta, i.severity) == (3, 3, 4.0, 1.0)
    assert i.patch_sizes == (4, 8, 16, 32, 64, 224) and i.patch_source == "mixed"
    assert (i.pre, i.size, i.jsd) == ("imagenet", (224, 224), True)


def test_config_round_trip() -> None:
    for config in (
        IPMixConfig.preset("cifar"),
        IPMixConfig.preset("imagenet", all_ops=True, patch_overflow="clip", size=(160, 192)),
        IPMixConfig(k=2, t=0, beta=0.5, mixing_short_side=50, crop_padding=0),
    ):
        d = config.to_dict()
        assert IPMixConfig.from_dict(json.loads(json.dumps(d))) == config
        assert IPMixConfig.from_dict(d).to_dict() == d


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"k": 0}, "k must be in"),
        ({"t": -1}, "t must be in"),
        ({"t": 2.5}, "t must be an integer"),
        ({"beta": 0}, "beta must be"),
        ({"beta": float("nan")}, "beta must be"),
        ({"severity": 0.05}, "severity must be >= 0.1"),
        ({"all_ops": "yes"}, "all_ops must be true or false"),
        ({"patch_sizes": ()}, "patch_sizes must not be empty"),
        ({"patch_sizes": (4, 1)}, "patch_sizes entry must be in"),
        ({"patch_sizes": "4,8"}, "patch_sizes must be a list"),
        ({"patch_source": "p"}, "patch_source must be one of"),
        ({"patch_overflow": "saturate"}, "patch_overflow must be one of"),
        ({"pre": "random"}, "pre must be one of"),
        ({"size": (32,)}, "size must be"),
        ({"size": (0, 32)}, "size must be in"),
        ({"colour": 1}, "unknown IPMix option"),
    ],
)
def test_config_validation(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        IPMixConfig.preset("cifar", **changes)
    with pytest.raises(ValueError, match=message):  # ConfigError is a ValueError too
        IPMixConfig.from_dict({**IPMixConfig.preset("cifar").to_dict(), **changes})


def test_config_misc() -> None:
    assert IPMixConfig.preset("cifar", size=48).size == (48, 48)
    assert IPMixConfig.preset("cifar", patch_sizes=[4, 8]).patch_sizes == (4, 8)
    with pytest.raises(ConfigError, match="unknown preset"):
        IPMixConfig.preset("svhn")
    with pytest.raises(ConfigError, match="mapping"):
        IPMixConfig.from_dict([("k", 3)])  # type: ignore[arg-type]
    assert IPMixConfig.preset("cifar").n_views == 1
    assert IPMixConfig.preset("cifar", jsd=True).n_views == 3
    assert OVERFLOW_WRAP == 0


def test_config_and_mixing_set_pickle_for_workers() -> None:
    import pickle

    config = IPMixConfig.preset("imagenet", size=(32, 32), jsd=True)
    mixing = mixing_for(config)
    config2 = pickle.loads(pickle.dumps(config))
    mixing2 = pickle.loads(pickle.dumps(mixing))
    assert config2 == config
    images = natural_images(4, 40, 48, 13)
    a = augment_batch(images, np.arange(4), 0, mixing, config, 9)
    b = augment_batch(images, np.arange(4), 0, mixing2, config2, 9)
    assert np.array_equal(a, b)
