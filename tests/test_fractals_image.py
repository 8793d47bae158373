"""The public API: determinism, batching, records, options, errors, the fill filter, the
guard, the warm-up and what importing the package may do."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fractals
from fractals import (
    FractalError,
    FractalOptions,
    ifs,
    image,
    make_image,
    make_images,
    pipeline,
    record,
    render,
    render_record,
    rng,
    warmup,
)
from fractals.numba_cache import drop_stale_caches

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
        dict(size=None),
        dict(size="64"),
        dict(size=math.inf),
        dict(points=10**15),
        dict(min_fill="0.5"),
        dict(min_fill=None),
        dict(min_fill=math.nan),
        dict(min_fill=True),
        dict(background=None),
        dict(background=["plasma"]),
        dict(flips=np.array([True, False])),
    ):
        with pytest.raises(FractalError) as info:
            FractalOptions(**bad)
        assert isinstance(info.value, ValueError)  # callers catching ValueError keep working
        assert "\n" not in str(info.value)


# Run in a fresh interpreter: in this one, earlier tests have compiled whatever they called, so
# a signature missing from warmup() would go unnoticed here.
_SIGNATURE_PROBE = textwrap.dedent(
    """
    import json, sys
    from numba.core.registry import CPUDispatcher
    from fractals import FractalOptions, make_image, make_images, render_record, warmup

    def signatures():
        found = {}
        for name, module in list(sys.modules.items()):
            if name == "fractals" or name.startswith("fractals."):
                for obj in vars(module).values():
                    if isinstance(obj, CPUDispatcher):
                        func = obj.py_func
                        key = func.__module__ + "." + func.__qualname__
                        found[key] = sorted(str(sig) for sig in obj.signatures)
        return found

    warmup()
    before = signatures()
    for opts in (
        FractalOptions(size=32, points=2000),
        FractalOptions(size=33, points=1500, background="black", patch=False, flips=False),
        FractalOptions(size=40, points=2000, fractals_per_image=3, instances=3, blur=True),
        FractalOptions(size=24, points=800, instances=2, min_fill=0.4),
        FractalOptions(size=16, points=30, min_fill=1.0),
        FractalOptions(size=300, points=5000),
    ):
        batch, records = make_images(7, range(5), opts)
        make_image(7, 9, opts)
        for rec in records[:2]:
            render_record(json.loads(json.dumps(rec)))
            render_record(rec, size=opts.size * 2 + 1, points=opts.points * 3)
    json.dump({"before": before, "after": signatures()}, sys.stdout)
    """
)


def test_warmup_compiles_every_signature_later_calls_use() -> None:
    warmup()  # compiles into numba's cache here, so the fresh interpreter below only loads
    done = subprocess.run(
        [sys.executable, "-c", _SIGNATURE_PROBE],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    before, after = result["before"], result["after"]
    for kernel in (
        "fractals.pipeline._generate",
        "fractals.pipeline._compose",
        "fractals.pipeline._box",
        "fractals.render.render_layer",
    ):
        assert before.get(kernel), f"warmup() left {kernel} uncompiled"
    new = {
        name: sorted(set(sigs) - set(before.get(name, [])))
        for name, sigs in after.items()
        if set(sigs) - set(before.get(name, []))
    }
    assert not new, f"compiled after warmup(): {new}"


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
    assert rec["format"] == record.RECORD_FORMAT
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
        2, 0, pipeline.TAG_BASE, layer["base_attempt"]
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
    assert not pipeline._accept(fill, FractalOptions().min_fill)
    assert not pipeline._accept(0.0, 0.0)  # an empty render never passes, even with no filter
    good = ifs.sample_system_from_key(rng.stream_key(0, 0, pipeline.TAG_BASE, 0))
    _, fill = render.render_graded(good, 1, 64, 10_000)
    assert pipeline._accept(fill, 0.0)


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


def _base_fills(seed: int, group: int, opts: FractalOptions) -> tuple[list, list, np.ndarray]:
    """Independently of the pipeline: every base attempt's stream key, system and fill rate
    for fractal 0 of ``group``, from the documented streams and the public building blocks."""
    size = opts.size
    counts = np.zeros((size + 2) ** 2, dtype=np.int32)
    graded = np.zeros(size * size, dtype=np.int32)
    keys, systems, fills = [], [], []
    for attempt in range(pipeline.MAX_ATTEMPTS):
        key = rng.stream_key(seed, group, pipeline.TAG_BASE, attempt)
        state = np.array([key], dtype=np.uint64)
        system = ifs.sample_system(state)  # leaves the render key in state
        _, fill, _, _ = render.render_layer(
            system, state[0], size, opts.points, opts.patch, opts.flips, counts, graded
        )
        keys.append(key)
        systems.append(system)
        fills.append(fill)
    return keys, systems, np.array(fills)


# (0, 0): three attempts tie for the fullest (7, 47 and 48), so keeping the last of the tied, or
# the last attempt, is caught as well as keeping any other one
@pytest.mark.parametrize(("seed", "index"), [(0, 0), (0, 1), (0, 2), (1, 0)])
def test_impossible_min_fill_terminates_with_the_fullest(seed: int, index: int) -> None:
    opts = FractalOptions(size=16, points=30, min_fill=1.0)
    _, rec = make_image(seed, index, opts)
    assert rec["rescue"] == 0  # the base systems below are this image's
    keys, systems, fills = _base_fills(seed, index, opts)
    best = int(np.argmax(fills))  # the first of the fullest
    assert fills.max() < opts.min_fill  # no attempt passes: the fallback is what is tested
    layer = rec["layers"][0]
    assert rec["attempts"] == layer["base_tried"] == pipeline.MAX_ATTEMPTS
    assert layer["base_attempt"] == best, (
        layer["base_attempt"],
        np.flatnonzero(fills == fills.max()),
    )
    assert layer["system_key"] == f"{keys[best]:016x}"
    np.testing.assert_array_equal(np.array(layer["system"]), systems[best])
    assert layer["fill"] == rec["fill"] == fills.max() > 0


def test_guard_rejects_uniform_images() -> None:
    flat = np.full((32, 32, 3), 120, dtype=np.uint8)
    assert not pipeline.image_ok(flat, 500)
    noisy = np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.uint8)
    assert pipeline.image_ok(noisy, 500)
    assert not pipeline.image_ok(noisy, 0)  # no fractal pixels: rejected


@pytest.mark.parametrize("bg", ["plasma", "black"])
def test_never_blank_or_uniform(bg: str) -> None:
    opts = FractalOptions(size=24, points=1500, background=bg, min_fill=0.0)
    batch, records = make_images(99, range(200), opts)
    std = batch.reshape(len(batch), -1, 3).std(axis=1).max(axis=1)
    assert std.min() >= pipeline.GUARD_MIN_STD - 0.5
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


# ---------------------------------------------------------------------------------------------
# the numba cache: nothing on disk at import; stale caches found in subfolders too


def test_import_leaves_the_disk_alone(tmp_path: Path) -> None:
    # a copy whose caches carry no stamp: the old import-time check deleted them as stale
    package = tmp_path / "fractals"
    shutil.copytree(
        Path(fractals.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    cache = package / "__pycache__"
    cache.mkdir()
    planted = [
        cache / "render.render_layer-1.py311.nbi",
        cache / "render.render_layer-1.py311.1.nbc",
    ]
    for path in planted:
        path.write_bytes(b"not a real cache")
    script = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import fractals; "
        f"assert fractals.__file__.startswith({str(tmp_path)!r}), fractals.__file__"
    )
    done = subprocess.run(
        [sys.executable, "-B", "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(path.read_bytes() == b"not a real cache" for path in planted)
    assert not list(cache.glob("kernel-sources.*"))


def test_drop_stale_caches_covers_subfolders(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.delenv("NUMBA_DISABLE_JIT", raising=False)
    package = tmp_path / "pkg"
    (package / "sub" / "__pycache__").mkdir(parents=True)
    (package / "__pycache__").mkdir()
    (package / "top.py").write_text("x = 1\n")
    (package / "sub" / "deep.py").write_text("y = 1\n")

    def plant() -> list[Path]:
        planted = [
            package / "__pycache__" / "top.f-1.nbi",
            package / "sub" / "__pycache__" / "d.nbc",
        ]
        for path in planted:
            path.write_bytes(b"cache")
        return planted

    planted = plant()
    assert drop_stale_caches(package) is True  # no stamp yet
    assert not any(path.exists() for path in planted)
    planted = plant()
    assert drop_stale_caches(package) is False  # nothing changed
    assert all(path.exists() for path in planted)
    (package / "sub" / "deep.py").write_text("y = 2\n")  # an edit in a subfolder
    assert drop_stale_caches(package) is True
    assert not any(path.exists() for path in planted)
    planted = plant()
    (package / "sub" / "deep.py").rename(package / "deep.py")  # same bytes, moved
    assert drop_stale_caches(package) is True
    assert not any(path.exists() for path in planted)
