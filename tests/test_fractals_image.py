"""The public API: determinism, batching, records, options, the fill filter and the guard."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fractals import (
    FractalOptions,
    ifs,
    image,
    make_image,
    make_images,
    render,
    render_record,
    rng,
    warmup,
)

SMALL = FractalOptions(size=32, points=3000)


def test_options_round_trip_and_validation() -> None:
    opts = FractalOptions(size=64, background="black", instances=3, min_fill=0.1, blur=True)
    d = opts.to_dict()
    assert FractalOptions(**json.loads(json.dumps(d))) == opts
    assert FractalOptions().min_fill == pytest.approx(0.05)
    numpy_typed = FractalOptions(size=np.int64(64), points=np.int32(100), min_fill=np.float32(0.25))
    assert type(numpy_typed.size) is int and type(numpy_typed.min_fill) is float
    json.dumps(numpy_typed.to_dict())
    for bad in (
        dict(size=4),
        dict(points=0),
        dict(background="noise"),
        dict(fractals_per_image=0),
        dict(instances=0),
        dict(min_fill=1.5),
        dict(size=64.5),
        dict(patch="yes"),
        dict(instances=True),
    ):
        with pytest.raises(ValueError):
            FractalOptions(**bad)


def test_warmup_runs() -> None:
    warmup()


def test_stream_key_nb_matches_python() -> None:
    for seed, keys in ((0, (0, 0, 0)), (2**64 - 1, (5, 17, 1 << 40)), (123, (9, 1, 0))):
        assert int(rng.stream_key_nb(np.uint64(seed), *keys)) == rng.stream_key(seed, *keys)


def test_shape_dtype_and_determinism() -> None:
    img, rec = make_image(5, 3, SMALL)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    img2, rec2 = make_image(5, 3, SMALL)
    assert np.array_equal(img, img2)
    assert rec == rec2
    other, _ = make_image(5, 4, SMALL)
    assert not np.array_equal(img, other)
    other_seed, _ = make_image(6, 3, SMALL)
    assert not np.array_equal(img, other_seed)
    json.dumps(rec)  # serialisable


@pytest.mark.parametrize(
    "opts",
    [
        SMALL,
        FractalOptions(size=40, points=2000, background="black", patch=False, flips=False),
        FractalOptions(size=48, points=2500, fractals_per_image=3, instances=2, blur=True),
        FractalOptions(size=33, points=2001, instances=3),
    ],
)
def test_make_images_equals_make_image(opts: FractalOptions) -> None:
    indices = [7, 0, 1, 2, 8, 3]
    batch, records = make_images(11, indices, opts)
    assert batch.shape == (len(indices), opts.size, opts.size, 3) and batch.dtype == np.uint8
    image._base_cache.clear()  # the per-index path must not depend on what the batch cached
    for k, index in enumerate(indices):
        img, rec = make_image(11, index, opts)
        assert np.array_equal(batch[k], img), index
        assert records[k] == rec


@pytest.mark.parametrize(
    "opts",
    [
        SMALL,
        FractalOptions(size=40, points=2000, background="black", patch=False),
        FractalOptions(size=48, points=2500, fractals_per_image=2, instances=2, blur=True),
    ],
)
def test_render_record_round_trip(opts: FractalOptions) -> None:
    for index in range(4):
        img, rec = make_image(21, index, opts)
        again = render_record(json.loads(json.dumps(rec)))
        assert np.array_equal(again, img)


def test_render_record_at_other_size_is_the_same_picture() -> None:
    opts = FractalOptions(size=64, points=20_000, patch=False)
    img, rec = make_image(3, 1, opts)
    big = render_record(rec, size=128, points=80_000)
    assert big.shape == (128, 128, 3)
    # downsample 2x2 -> close to the original (same systems, keys, colours, background)
    small = big.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    assert np.abs(small - img).mean() < 25
    unrelated, _ = make_image(3, 2, opts)
    assert np.abs(small - img).mean() < np.abs(small - unrelated.astype(float)).mean()
    # at another size the fractal's outline still matches: compare lit masks on black
    black = FractalOptions(size=64, points=20_000, background="black", patch=False)
    img, rec = make_image(3, 1, black)
    big = render_record(rec, size=128, points=80_000)
    lit_small = img.any(axis=2)
    lit_big = big.any(axis=2).reshape(64, 2, 64, 2).any(axis=(1, 3))
    assert (lit_small & lit_big).sum() / lit_small.sum() > 0.8


def test_record_contents() -> None:
    _, rec = make_image(2, 0, FractalOptions(size=32, points=2000, fractals_per_image=2))
    assert rec["format"] == image.RECORD_FORMAT
    assert len(rec["layers"]) == 2
    for layer in rec["layers"]:
        system = np.array(layer["system"])
        assert system.ndim == 3 and system.shape[1:] == (2, 3)
        np.testing.assert_allclose(layer["probabilities"], ifs.map_probabilities(system))
        for key in ("system_key", "render_key"):
            assert len(layer[key]) == 16 and int(layer[key], 16) >= 0
        assert len(layer["box"]) == 3 and 0.3 <= layer["box"][2] <= 0.7
        assert 0 < layer["fill"] <= 1
    assert rec["attempts"] >= 2
    # the system key is the documented stream
    layer = rec["layers"][0]
    assert int(layer["system_key"], 16) == rng.stream_key(
        2, 0, image.TAG_BASE, layer["base_attempt"]
    )


def test_instances_share_a_jittered_base_system() -> None:
    opts = FractalOptions(size=32, points=2000, instances=4)
    _, records = make_images(8, range(8), opts)
    for group in (0, 1):
        recs = records[4 * group : 4 * group + 4]
        keys = {r["layers"][0]["system_key"] for r in recs}
        assert len(keys) == 1  # one base system per group
        base = np.array(recs[0]["layers"][0]["system"])
        assert recs[0]["layers"][0]["jitter"] is None
        for r in recs[1:]:
            layer = r["layers"][0]
            system = np.array(layer["system"])
            if layer["jitter"] is None:  # fell back to the base
                np.testing.assert_array_equal(system, base)
                continue
            k, scale = layer["jitter"]["map"], layer["jitter"]["scale"]
            np.testing.assert_allclose(system[k], base[k] * scale)
            assert np.linalg.svd(system[:, :, :2], compute_uv=False).max() <= 1.0
    assert records[0]["layers"][0]["system_key"] != records[4]["layers"][0]["system_key"]


def test_degenerate_system_is_rejected_by_the_filter() -> None:
    # two nearly point-like maps: the attractor is a few specks
    specks = np.array(
        [[[0.02, 0.0, -0.5], [0.0, 0.01, 0.4]], [[0.01, 0.0, 0.6], [0.0, 0.02, -0.3]]]
    )
    _, fill = render.render_graded(specks, 1, 256, 100_000, patch=False)
    assert fill < 0.01
    assert not image._accept(fill, FractalOptions().min_fill)
    assert not image._accept(0.0, 0.0)  # an empty render never passes, even with no filter
    good = ifs.sample_system_from_key(rng.stream_key(0, 0, image.TAG_BASE, 0))
    _, fill = render.render_graded(good, 1, 64, 10_000)
    assert image._accept(fill, 0.0)


def test_min_fill_filter_resamples() -> None:
    opts = FractalOptions(size=64, points=4000, min_fill=0.3)
    _, records = make_images(1, range(40), opts)
    fills = [r["fill"] for r in records]
    assert min(fills) >= 0.3
    assert max(r["attempts"] for r in records) > 1  # some systems were rejected
    loose = FractalOptions(size=64, points=4000, min_fill=0.0)
    _, loose_records = make_images(1, range(40), loose)
    assert all(r["attempts"] == 1 for r in loose_records)
    assert min(r["fill"] for r in loose_records) < 0.3


def test_impossible_min_fill_terminates_with_the_fullest() -> None:
    opts = FractalOptions(size=16, points=30, min_fill=1.0)
    _, rec = make_image(0, 0, opts)
    assert rec["attempts"] == image.MAX_ATTEMPTS
    assert 0 < rec["fill"] < 1


def test_guard_rejects_uniform_images() -> None:
    flat = np.full((32, 32, 3), 120, dtype=np.uint8)
    assert not image.image_ok(flat, 500)
    noisy = np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.uint8)
    assert image.image_ok(noisy, 500)
    assert not image.image_ok(noisy, 0)  # no fractal pixels: rejected


@pytest.mark.parametrize("bg", ["plasma", "black"])
def test_never_blank_or_uniform(bg: str) -> None:
    opts = FractalOptions(size=24, points=1500, background=bg, min_fill=0.0)
    batch, records = make_images(99, range(200), opts)
    std = batch.reshape(len(batch), -1, 3).std(axis=1).max(axis=1)
    assert std.min() >= image.GUARD_MIN_STD - 0.5
    assert all(r["guard_passed"] for r in records)
    if bg == "black":
        assert (batch.any(axis=3).mean(axis=(1, 2)) > 0.01).all()


def test_blur_changes_only_blurred_images() -> None:
    sharp = FractalOptions(size=32, points=2000)
    soft = FractalOptions(size=32, points=2000, blur=True)
    blurred = 0
    for index in range(12):
        a, _ = make_image(4, index, sharp)
        b, rec = make_image(4, index, soft)
        if rec["blur_sigma"] > 0:
            blurred += 1
            assert 0.5 <= rec["blur_sigma"] <= 1.0
            assert not np.array_equal(a, b)
            # blur lowers local contrast
            assert (
                np.abs(np.diff(b.astype(int), axis=1)).mean()
                < np.abs(np.diff(a.astype(int), axis=1)).mean()
            )
        else:
            assert np.array_equal(a, b)
    assert 0 < blurred < 12
