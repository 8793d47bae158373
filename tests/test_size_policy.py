"""The size policy (``resize`` / ``resize_side``) and the clean export, against references
written out here from Pillow and torchvision's ``Resize(int)`` / ``CenterCrop`` rules.

Why a separate reference: the engine's crop places each axis on its own (crop or pad), while
torchvision pads the whole image first and crops after; the two must agree on every shape.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ipmix_cli.augment.config import ConfigError, IPMixConfig
from ipmix_cli.augment.engine import (
    augment_batch,
    augment_batch_traced,
    augment_image,
    augment_images,
    clean_images,
)
from ipmix_cli.augment.mixing_set import MixingSet
from ipmix_cli.augment.pretransform import resize_center_crop

DOCS = Path(__file__).resolve().parent.parent / "docs" / "ipmix.md"


# ----------------------------------------------------------------------------- references
def ref_resize(img: np.ndarray, side: int) -> np.ndarray:
    """torchvision ``Resize(side)`` on a PIL image (``_compute_resized_output_size``)."""
    h, w = img.shape[:2]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = side, int(side * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_h, new_w) == (h, w):
        return img
    return np.asarray(Image.fromarray(img).resize((new_w, new_h), Image.Resampling.BILINEAR))


def ref_center_crop(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torchvision ``CenterCrop(size)``: zero-pad what is too small, then crop at the rounded
    centre."""
    crop_h, crop_w = size
    h, w = img.shape[:2]
    if crop_w > w or crop_h > h:
        left = (crop_w - w) // 2 if crop_w > w else 0
        top = (crop_h - h) // 2 if crop_h > h else 0
        right = (crop_w - w + 1) // 2 if crop_w > w else 0
        bottom = (crop_h - h + 1) // 2 if crop_h > h else 0
        img = np.pad(img, ((top, bottom), (left, right), (0, 0)))
        h, w = img.shape[:2]
        if (h, w) == (crop_h, crop_w):
            return img
    top = int(round((h - crop_h) / 2.0))
    left = int(round((w - crop_w) / 2.0))
    return img[top : top + crop_h, left : left + crop_w]


def reference(img: np.ndarray, size: tuple[int, int], side: int | None) -> np.ndarray:
    if img.shape[:2] == tuple(size):
        return img
    return ref_center_crop(ref_resize(img, min(size) if side is None else side), size)


def picture(h: int, w: int, salt: int) -> np.ndarray:
    """Integer gradients and stripes: edges for the resampler, smooth areas for the crop."""
    y, x, c = np.mgrid[0:h, 0:w, 0:3]
    value = (x * (3 + salt % 5) + y * (7 + salt % 3) + c * 85 + salt * 29) % 256
    value = np.where(((x // 5 + y // 7 + salt) % 4) == 0, 255 - value, value)
    return value.astype(np.uint8)


MIXED = [(48, 64), (80, 40), (20, 20), (32, 32), (41, 57), (33, 32), (17, 50)]


def mixed_images() -> list[np.ndarray]:
    return [picture(h, w, i) for i, (h, w) in enumerate(MIXED)]


def mixing_for(config: IPMixConfig) -> MixingSet:
    rng = np.random.default_rng(0)
    H, W = config.size
    return MixingSet.from_pictures(rng.integers(0, 256, (4, H + 7, W + 5, 3), np.uint8), config)


# ----------------------------------------------------------------------- resize_center_crop
@pytest.mark.parametrize("shape", [*MIXED, (100, 31), (31, 100), (5, 7)])
@pytest.mark.parametrize(
    ("size", "side"), [((32, 32), None), ((32, 32), 40), ((24, 40), None), ((24, 40), 44)]
)
def test_resize_center_crop_matches_torchvision_rules(
    shape: tuple[int, int], size: tuple[int, int], side: int | None
) -> None:
    img = picture(*shape, salt=sum(shape))
    out = resize_center_crop(img, size, side)
    assert out.dtype == np.uint8 and out.shape == (*size, 3) and out.flags.c_contiguous
    assert np.array_equal(out, reference(img, size, side))


def test_an_image_of_the_output_size_is_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Pillow call, whatever the side: the fast path (augment_batch) never resizes, so the
    mixed-size path must not either for these images."""

    def no_pillow(*args: object, **kwargs: object) -> None:
        raise AssertionError("Pillow was called for an image of the output size")

    monkeypatch.setattr(Image, "fromarray", no_pillow)
    img = picture(32, 40, 3)
    for side in (None, 32, 64):
        assert np.array_equal(resize_center_crop(img, (32, 40), side), img)
    strided = picture(32, 80, 4)[:, ::2]  # a view: comes back C-contiguous, same pixels
    out = resize_center_crop(strided, (32, 40), None)
    assert out.flags.c_contiguous and np.array_equal(out, strided)


@pytest.mark.parametrize(("excess", "offset"), [(1, 0), (2, 1), (3, 2), (4, 2), (5, 2), (6, 3)])
def test_centre_offset_rounds_half_to_even(excess: int, offset: int) -> None:
    """torchvision's ``int(round(excess / 2.0))``: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2 (the shorter
    side is already 32, so no resize happens and the offset shows directly)."""
    y, x = np.mgrid[0 : 32 + excess, 0 : 32 + excess]
    wide = np.stack([np.zeros_like(x), x, x], axis=2)[:32].astype(np.uint8)  # 32 x (32 + e)
    assert resize_center_crop(wide, (32, 32), None)[0, 0, 1] == offset
    tall = np.stack([y, y, y], axis=2)[:, :32].astype(np.uint8)  # (32 + e) x 32
    assert resize_center_crop(tall, (32, 32), None)[0, 0, 0] == offset


def test_side_smaller_than_the_crop_pads_like_centercrop() -> None:
    img = picture(48, 64, 1)
    out = resize_center_crop(img, (32, 32), 25)  # resized to 25 x 33: 3 rows above, 4 below
    assert np.array_equal(out, reference(img, (32, 32), 25))
    assert not out[:3].any() and not out[-4:].any() and out[3:-4].any()
    # a non-square output with the default side: a square input comes out 24 x 24 in 24 x 40
    out = resize_center_crop(picture(48, 48, 2), (24, 40), None)
    assert not out[:, :8].any() and not out[:, -8:].any() and out[:, 8:-8].any()


def test_side_larger_than_the_size_is_the_imagenet_validation_transform() -> None:
    """Resize(256) + CenterCrop(224), the usual ImageNet evaluation transform."""
    img = picture(300, 400, 5)
    out = resize_center_crop(img, (224, 224), 256)
    resized = np.asarray(Image.fromarray(img).resize((341, 256), Image.Resampling.BILINEAR))
    assert np.array_equal(out, resized[16:240, 58:282])  # (256-224)/2, round(117/2 = 58.5)
    config = IPMixConfig.preset("imagenet", resize_side=256)
    assert np.array_equal(clean_images([img], config)[0], out)


def test_resize_center_crop_refuses_bad_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        resize_center_crop(np.zeros((40, 40, 3), np.float32), (32, 32), None)
    with pytest.raises(ValueError, match="H x W x 3"):
        resize_center_crop(np.zeros((40, 40), np.uint8), (32, 32), None)
    with pytest.raises(ValueError, match="H x W x 3"):
        resize_center_crop(np.zeros((0, 40, 3), np.uint8), (32, 32), None)


# -------------------------------------------------------------------------------- engine
@pytest.mark.parametrize("pre", ["cifar", "none"])
@pytest.mark.parametrize("side", [None, 40])
def test_mixed_sizes_equal_the_batch_of_resized_images(pre: str, side: int | None) -> None:
    """The resize runs before the preset's own transforms and changes nothing else."""
    config = IPMixConfig.preset("cifar", pre=pre, resize_side=side, jsd=True)
    mixing = mixing_for(config)
    images = mixed_images()
    sources = np.arange(len(images)) * 3 + 1
    out = augment_images(images, sources, 2, mixing, config, 11)
    prepared = np.stack([reference(img, (32, 32), side) for img in images])
    assert np.array_equal(out, augment_batch(prepared, sources, 2, mixing, config, 11))
    if pre == "none":
        assert np.array_equal(out[:, 0], prepared)  # the clean view is the resized image
    one = augment_image(images[1], int(sources[1]), 2, mixing, config, 11)
    assert np.array_equal(one, out[1])
    traced, _ = augment_batch_traced(images, sources, 2, mixing, config, 11)
    assert np.array_equal(traced, out)


def test_mixed_sizes_are_deterministic_and_clean_images_draw_nothing() -> None:
    config = IPMixConfig.preset("cifar")
    mixing = mixing_for(config)
    images = mixed_images()
    a = augment_images(images, np.arange(len(images)), 0, mixing, config, 5)
    b = augment_images([img.copy() for img in images], np.arange(7), 0, mixing, config, 5)
    assert a.tobytes() == b.tobytes()
    clean = clean_images(images, config)
    assert clean.shape == (7, 32, 32, 3) and clean.dtype == np.uint8
    assert clean.tobytes() == clean_images(images, config).tobytes()
    assert np.array_equal(clean, np.stack([reference(img, (32, 32), None) for img in images]))
    assert clean_images([], config).shape == (0, 32, 32, 3)
    batch = np.stack([picture(32, 32, i) for i in range(3)])
    assert np.array_equal(clean_images(batch, config.replace(jsd=True)), batch)


def test_imagenet_ignores_resize() -> None:
    center = IPMixConfig.preset("imagenet", size=(32, 32))
    exact = center.replace(resize="exact", resize_side=48)
    mixing = mixing_for(center)
    images = mixed_images()
    a = augment_images(images, np.arange(7), 1, mixing, center, 3)
    assert np.array_equal(a, augment_images(images, np.arange(7), 1, mixing, exact, 3))
    # the clean export resizes whatever ``pre`` and ``resize``: RandomResizedCrop is for training
    expected = np.stack([reference(img, (32, 32), 48) for img in images])
    assert np.array_equal(clean_images(images, exact), expected)


def test_exact_refuses_other_sizes_and_keeps_the_output_size() -> None:
    config = IPMixConfig.preset("cifar", resize="exact")
    mixing = mixing_for(config)
    same = [picture(32, 32, i) for i in range(3)]
    out = augment_images(same, np.arange(3), 0, mixing, config, 1)
    assert np.array_equal(out, augment_batch(np.stack(same), np.arange(3), 0, mixing, config, 1))
    # the default policy gives these images the same bytes: an output-size image is untouched
    center = config.replace(resize="center", resize_side=64)
    assert np.array_equal(out, augment_images(same, np.arange(3), 0, mixing, center, 1))
    with pytest.raises(ValueError, match=r"image 1 is 40x48 .*resize='exact'"):
        augment_images([same[0], picture(40, 48, 1)], [0, 1], 0, mixing, config, 1)
    # the clean export is Resize + CenterCrop whatever the policy
    for pre in ("cifar", "none"):
        clean = clean_images([picture(40, 48, 1)], config.replace(pre=pre))
        assert np.array_equal(clean[0], reference(picture(40, 48, 1), (32, 32), None))


def test_augment_batch_stays_the_path_without_resize() -> None:
    config = IPMixConfig.preset("cifar")
    mixing = mixing_for(config)
    with pytest.raises(ValueError, match="augment_images resizes"):
        augment_batch(np.zeros((2, 40, 40, 3), np.uint8), np.arange(2), 0, mixing, config, 0)


# -------------------------------------------------------------------------------- config
def test_config_fields_defaults_and_round_trip() -> None:
    for name in ("cifar", "imagenet"):
        preset = IPMixConfig.preset(name)
        assert (preset.resize, preset.resize_side) == ("center", None)
        assert preset.accepts_any_size
    assert (IPMixConfig().resize, IPMixConfig().resize_side) == ("center", None)
    assert not IPMixConfig.preset("cifar", resize="exact").accepts_any_size
    assert not IPMixConfig.preset("cifar", pre="none", resize="exact").accepts_any_size
    assert IPMixConfig.preset("imagenet", resize="exact").accepts_any_size
    for config in (
        IPMixConfig.preset("cifar", resize="exact"),
        IPMixConfig.preset("imagenet", resize_side=256),
        IPMixConfig.preset("cifar", pre="none", resize_side=np.int64(36)),
    ):
        d = config.to_dict()
        assert {"resize", "resize_side"} <= set(d)
        assert IPMixConfig.from_dict(json.loads(json.dumps(d))) == config
        assert IPMixConfig.from_dict(d).to_dict() == d
    assert type(IPMixConfig.preset("cifar", resize_side=np.int64(36)).resize_side) is int


def test_configs_saved_before_the_fields_load_with_the_defaults() -> None:
    old = IPMixConfig.preset("cifar").to_dict()
    del old["resize"], old["resize_side"]
    config = IPMixConfig.from_dict(old)
    assert config == IPMixConfig.preset("cifar") and config.preset_name == "cifar"
    assert IPMixConfig.preset("cifar", resize="exact").preset_name is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"resize": "crop"}, "resize must be one of center, exact"),
        ({"resize": None}, "resize must be one of"),
        ({"resize_side": 0}, "resize_side must be in"),
        ({"resize_side": 2.5}, "resize_side must be an integer"),
        ({"resize_side": True}, "resize_side must be an integer"),
        ({"resize_side": "36"}, "resize_side must be an integer"),
    ],
)
def test_config_validation_names_the_field(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        IPMixConfig.preset("cifar", **changes)
    assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match=message):
        IPMixConfig.from_dict({**IPMixConfig.preset("cifar").to_dict(), **changes})


# ---------------------------------------------------------------------------------- docs
@pytest.mark.parametrize(
    "preset",
    ['IPMixConfig.preset("cifar", pre="none")', 'IPMixConfig.preset("imagenet", size=64)', None],
)
def test_the_docs_python_example_runs_on_mixed_sizes(
    preset: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/ipmix.md's example, as written (and with the other pre-transforms)."""
    code = re.search(r"## Python API\n\n```python\n(.*?)```", DOCS.read_text(), re.S)
    assert code is not None
    source = code.group(1)
    if preset is not None:
        assert 'IPMixConfig.preset("cifar")' in source
        source = source.replace('IPMixConfig.preset("cifar")', preset)
    (tmp_path / "bank").mkdir()
    for i in range(3):
        Image.fromarray(picture(70 + 5 * i, 80, 40 + i)).save(tmp_path / "bank" / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(source, str(DOCS), "exec"), namespace)
    config = namespace["config"]
    assert isinstance(config, IPMixConfig)
    many = namespace["many"]
    assert isinstance(many, np.ndarray) and many.shape[1:] == (*config.size, 3)


@pytest.mark.parametrize("size", [100, (100, 120), (120, 100)])
def test_a_resize_side_below_the_crop_is_refused(size) -> None:
    """Shrinking below the output's shorter side would pad every image with black (70 % of an
    export's pixels were zeros, exit 0): refused, naming both numbers; the shorter side itself
    is fine."""
    shorter = min(size) if isinstance(size, tuple) else size
    with pytest.raises(ConfigError, match=f"resize_side {shorter - 1} .* shorter side {shorter}"):
        IPMixConfig.preset("cifar", size=size, resize_side=shorter - 1)
    assert IPMixConfig.preset("cifar", size=size, resize_side=shorter).resize_side == shorter


@pytest.mark.parametrize("codec", ["jpeg", "png"])
def test_a_coded_export_is_an_input(tmp_path: Path, codec: str) -> None:
    """An ``export --codec jpeg|png`` output (rows encoded in its shards, no image datasets in
    its entry) as augment's --input: the same rows as augmenting the decoded arrays, which
    ShardReader gives (formerly refused: 'HDF5 file needs datasets images')."""
    from click.testing import CliRunner

    from ipmix_cli.cli import main
    from ipmix_cli.readers import ShardReader

    rng = np.random.default_rng(3)
    data = tmp_path / "in.npz"
    np.savez(data, images=rng.integers(0, 256, (30, 40, 36, 3), dtype=np.uint8),
             labels=np.arange(30) % 3)  # fmt: skip
    bank = tmp_path / "bank"
    bank.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(bank / f"{i}.png")

    def cli(*args: object) -> None:
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output

    exported = tmp_path / "val.h5"
    cli("export", "--input", data, "--out", exported, "--size", "32", "--codec", codec,
        "--shard-size", "8", "--quiet")  # fmt: skip
    decoded = ShardReader(exported).read(np.arange(30))
    plain = tmp_path / "plain.npz"
    np.savez(plain, images=decoded["images"], labels=decoded["labels"])
    common = ["--mixing-set", bank, "--preset", "cifar", "--jobs", "1", "--copies", "2", "--quiet"]
    cli("augment", "--input", exported, "--out", tmp_path / "a.h5", *common)
    cli("augment", "--input", plain, "--out", tmp_path / "b.h5", *common)
    a = ShardReader(tmp_path / "a.h5").read(np.arange(60))
    b = ShardReader(tmp_path / "b.h5").read(np.arange(60))
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
