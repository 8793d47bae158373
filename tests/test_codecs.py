"""Per-row image codecs in shards (raw, jpeg, png): real HDF5 files written and read back.

What is pinned here: PNG rows are lossless; JPEG rows decode to exactly what an independent
Pillow encode + decode of the same image gives; JPEG bytes do not depend on libjpeg-turbo's
SIMD code (our cross-CPU check); the checksum covers the stored bytes and ``verify`` catches a
damaged row; the decode recipe in docs/format.md runs as printed; threads change nothing.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from ipmix_cli.errors import ConfigError, ShardError
from ipmix_cli.readers.numpy_reader import ShardReader
from ipmix_cli.shards import (
    compute_checksum,
    inspect,
    read_manifest,
    read_shard_info,
    shard_checksum,
    shard_path,
    verify,
    write_entry,
    write_shard,
    write_shard_pending,
)
from ipmix_cli.shards.codec import (
    check_codec,
    check_quality,
    decode_into,
    decode_one,
    encode_images,
)

ROOT = Path(__file__).resolve().parent.parent
SIZE = 64  # small images keep the file fast; the size test uses 224 px
COUNTS = (40, 24)  # two shards


def photo_like(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus mild noise: compresses like a photograph, unlike noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        phase = rng.uniform(0, 2 * np.pi, 3)
        planes = [
            127 + 100 * np.sin(2 * x * (1 + c) + 3 * y + phase[c]) * np.cos(y * (2 + c) - phase[c])
            for c in range(3)
        ]
        image = np.stack(planes, -1) + rng.normal(0, 4, (size, size, 3))
        out[i] = np.clip(image, 0, 255).astype(np.uint8)
    return out


def _arrays(n: int, seed: int, jsd: bool = False) -> dict[str, np.ndarray]:
    out = {
        "images": photo_like(n, seed=seed),
        "labels": np.arange(n) % 3,
        "source_index": np.arange(n),
        "copy_index": np.full(n, seed),
    }
    if jsd:
        out["clean"] = photo_like(n, seed=seed + 100)
        out["images2"] = photo_like(n, seed=seed + 200)
    return out


def build(entry: Path, codec: str, quality: int = 90, jsd: bool = False) -> dict[str, np.ndarray]:
    """An output of two shards (one copy of ``sum(COUNTS)`` sources) written with ``codec``;
    returns the arrays that went in, joined in row order."""
    parts = [_arrays(n, seed=k, jsd=jsd) for k, n in enumerate(COUNTS)]
    infos = [
        write_shard(shard_path(entry, k), a, codec=codec, quality=quality)
        for k, a in enumerate(parts)
    ]
    about = {"copies": 1, "num_sources": sum(COUNTS), "codec": codec, "quality": quality}
    write_entry(entry, infos, about, class_names=["a", "b", "c"])
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def jpeg_reference(image: np.ndarray, quality: int) -> np.ndarray:
    """What Pillow gives for a JPEG round trip of ``image`` at its defaults (4:2:0)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("codecs")
    made = {}
    for codec in ("png", "jpeg"):
        entry = root / codec / "out.h5"
        made[codec] = (entry, build(entry, codec))
    return made


SHUFFLED = np.random.default_rng(5).permutation(sum(COUNTS))


def test_png_round_trip_through_the_reader_is_lossless(outputs: dict) -> None:
    entry, joined = outputs["png"]
    with ShardReader(entry) as reader:
        assert reader.codec == "png"
        batch = reader.read(SHUFFLED)
        np.testing.assert_array_equal(batch["images"], joined["images"][SHUFFLED])
        np.testing.assert_array_equal(batch["labels"], joined["labels"][SHUFFLED])
        rows = [3, 3, 50, 2, 63, 0]  # repeats and both shards
        np.testing.assert_array_equal(reader.read(rows)["images"], joined["images"][rows])
        image, label = reader[45]
        np.testing.assert_array_equal(image, joined["images"][45])
        floats = ShardReader(entry, dtype=np.float32, channels_first=True).read([7])["images"]
        np.testing.assert_allclose(floats[0], joined["images"][7].transpose(2, 0, 1) / 255.0)


def test_jpeg_round_trip_matches_an_independent_pillow_round_trip(outputs: dict) -> None:
    entry, joined = outputs["jpeg"]
    with ShardReader(entry) as reader:
        got = reader.read(SHUFFLED)["images"]
    want = np.stack([jpeg_reference(joined["images"][r], 90) for r in SHUFFLED])
    np.testing.assert_array_equal(got, want)
    quality = psnr(got, joined["images"][SHUFFLED])
    assert 33 < quality < 60, quality  # lossy, but close


def test_coded_shard_and_entry_layout(outputs: dict) -> None:
    entry, _ = outputs["jpeg"]
    shard = shard_path(entry, 0)
    with h5py.File(shard, "r") as f:
        images = f["images"]
        assert images.shape == (COUNTS[0],)
        assert h5py.check_vlen_dtype(images.dtype) == np.uint8
        assert images.attrs["codec"] == "jpeg" and images.attrs["quality"] == 90
        assert images.attrs["image_shape"].tolist() == [SIZE, SIZE, 3]
        assert images.compression is None and images.chunks == (COUNTS[0],)  # min(64, n)
        assert "checksum_method" in f.attrs and "codec" not in f.attrs
    info = read_shard_info(shard)
    assert (info.codec, info.quality, info.image_shape) == ("jpeg", 90, (SIZE, SIZE))
    with h5py.File(entry, "r") as f:
        assert "images" not in f and "labels" in f and f["labels"].is_virtual
        assert f.attrs["codec"] == "jpeg" and f.attrs["quality"] == 90
        np.testing.assert_array_equal(
            f["labels"][()], np.concatenate([np.arange(n) % 3 for n in COUNTS])
        )
    manifest = read_manifest(entry)
    assert (manifest.codec, manifest.quality, manifest.image_shape) == ("jpeg", 90, (SIZE, SIZE, 3))
    summary = inspect(entry)
    assert (summary["codec"], summary["quality"]) == ("jpeg", 90)
    png_entry, _ = outputs["png"]
    assert read_manifest(png_entry).quality is None  # a quality means JPEG's only


def test_jsd_output_codes_all_three_image_datasets(tmp_path: Path) -> None:
    entry = tmp_path / "jsd.h5"
    joined = build(entry, "png", jsd=True)
    with h5py.File(shard_path(entry, 1), "r") as f:
        assert all(f[name].attrs["codec"] == "png" for name in ("images", "clean", "images2"))
    with ShardReader(entry) as reader:
        assert reader.views == ("clean", "images", "images2")
        batch = reader.read(SHUFFLED)
    for name in ("clean", "images", "images2"):
        np.testing.assert_array_equal(batch[name], joined[name][SHUFFLED])
    assert verify(entry).ok


def test_checksum_covers_every_stored_byte_and_verify_catches_a_bad_row(tmp_path: Path) -> None:
    entry = tmp_path / "out.h5"
    build(entry, "jpeg")
    shard = shard_path(entry, 1)
    stored = read_shard_info(shard).checksum
    assert shard_checksum(shard) == stored
    assert verify(entry).ok

    images = photo_like(4)
    blobs = encode_images(images, "jpeg", 90)
    base = {"images": blobs, "labels": np.zeros(4, np.int64)}
    base |= {"source_index": np.arange(4), "copy_index": np.zeros(4, np.int64)}
    shape = (SIZE, SIZE, 3)
    before = compute_checksum(base, codec="jpeg", image_shape=shape)
    flipped = blobs.copy()
    flipped[2] = blobs[2].copy()
    flipped[2][len(blobs[2]) // 2] ^= 1
    assert compute_checksum({**base, "images": flipped}, codec="jpeg", image_shape=shape) != before
    moved = blobs.copy()  # the same bytes with the row boundary moved by one
    moved[0], moved[1] = blobs[0][:-1], np.concatenate([blobs[0][-1:], blobs[1]])
    assert compute_checksum({**base, "images": moved}, codec="jpeg", image_shape=shape) != before
    assert compute_checksum(base, codec="png", image_shape=shape) != before  # codec is covered

    with h5py.File(shard, "r+") as f:  # one stored byte of row 5 changes
        row = f["images"][5].copy()
        row[len(row) // 2] ^= 0x10
        f["images"][5] = row
    assert shard_checksum(shard) != stored
    faults = verify(entry).faults
    assert any("checksum mismatch" in fault and "shard-00001" in fault for fault in faults)

    with h5py.File(shard, "r+") as f:  # the last row no longer decodes
        f["images"][COUNTS[1] - 1] = np.frombuffer(b"not a jpeg", np.uint8)
    faults = verify(entry).faults
    assert any(f"row {COUNTS[1] - 1} does not decode" in fault for fault in faults), faults
    with pytest.raises(ShardError, match=rf"shard-00001\.h5: 'images' row {COUNTS[1] - 1} "):
        ShardReader(entry).read([COUNTS[0] + COUNTS[1] - 1, 0])


def test_the_decode_recipe_in_the_format_doc_runs(tmp_path: Path, monkeypatch) -> None:
    text = (ROOT / "docs" / "format.md").read_text()
    found = re.search(r"<!-- codec-decode-example -->\s*```python\n(.*?)```", text, re.S)
    assert found, "docs/format.md lost its codec-decode-example block"
    code = found.group(1)
    assert len([line for line in code.splitlines() if line.strip()]) == 3  # three lines
    entry = tmp_path / "OUT.h5"
    joined = build(entry, "png")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "docs/format.md", "exec"), scope)
    scope["f"].close()
    np.testing.assert_array_equal(scope["image"], joined["images"][0])


def test_threaded_decode_gives_the_same_batches(outputs: dict) -> None:
    entry, _ = outputs["jpeg"]
    one = ShardReader(entry, decode_threads=1).read(SHUFFLED)["images"]
    for threads in (2, 3):
        many = ShardReader(entry, decode_threads=threads).read(SHUFFLED)["images"]
        np.testing.assert_array_equal(many, one)
    blobs = encode_images(photo_like(9), "jpeg", 75)
    for threads in (1, 2, 4):
        out = np.zeros((12, SIZE, SIZE, 3), np.uint8)
        decode_into(blobs, out, np.arange(9)[::-1] + 2, threads)
        for i in range(9):
            np.testing.assert_array_equal(out[10 - i], decode_one(blobs[i]))
        assert not out[:2].any() and not out[11:].any()
    with pytest.raises(ValueError, match="decode_threads"):
        ShardReader(entry, decode_threads=0)


def _decode_in_child(blob: np.ndarray, queue: multiprocessing.Queue) -> None:
    out = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    decode_into([blob, blob], out, [0, 1], 2)
    queue.put(int(out.sum()))


def test_decoding_in_a_forked_child_after_the_parent_used_the_pool() -> None:
    blob = encode_images(photo_like(1), "jpeg", 90)[0]
    out = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    decode_into([blob, blob], out, [0, 1], 2)  # the parent's pool exists now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_decode_in_child, args=(blob, queue))
    child.start()
    child.join(20)
    assert child.exitcode == 0  # an inherited pool would have hung the child
    assert queue.get(timeout=5) == int(out.sum())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"codec": "webp"}, "unknown image codec 'webp' (choose raw, jpeg, png)"),
        ({"codec": "jpeg", "quality": 0}, "JPEG quality must be from 1 to 100, got 0"),
        ({"codec": "jpeg", "quality": 101}, "JPEG quality must be from 1 to 100, got 101"),
        ({"codec": "jpeg", "quality": "90"}, "JPEG quality must be an integer from 1 to 100"),
        ({"codec": "png", "compression": "gzip"}, "--compression applies to raw images only"),
        ({"codec": "jpeg", "compression": "lzf"}, "--compression applies to raw images only"),
    ],
)
def test_invalid_codec_options_give_one_line_errors(tmp_path: Path, options, message) -> None:
    with pytest.raises(ShardError) as caught:
        write_shard_pending(tmp_path / "shard-00000.h5", _arrays(2, 0), **options)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not list(tmp_path.iterdir())  # nothing written
    with pytest.raises(ConfigError, match="unknown image codec"):
        check_codec("JPEG")
    with pytest.raises(ConfigError, match="from 1 to 100"):
        check_quality(True)


def test_png_quality_is_ignored_and_file_name_is_recorded(tmp_path: Path) -> None:
    arrays = _arrays(3, 0)
    a = write_shard(tmp_path / "a" / "shard-00007.h5", arrays, codec="png", quality=5)
    b = write_shard(tmp_path / "b" / "shard-00007.h5", arrays, codec="png", quality=99)
    assert a.checksum == b.checksum and a.quality is None and a.index == 7
    pending = write_shard_pending(
        tmp_path / "c" / "0000" / "shard-00007.h5", arrays, file_name="0000/shard-00007.h5"
    )
    assert pending.info.file == "0000/shard-00007.h5" and pending.info.index == 7
    pending.discard()


def test_raw_codec_writes_the_same_bytes_as_before(tmp_path: Path) -> None:
    arrays = _arrays(5, 3)
    plain = write_shard(tmp_path / "x" / "shard-00000.h5", arrays)
    raw = write_shard(tmp_path / "y" / "shard-00000.h5", arrays, codec="raw", quality=1)
    first = (tmp_path / "x" / "shard-00000.h5").read_bytes()
    assert first == (tmp_path / "y" / "shard-00000.h5").read_bytes()
    assert plain == raw and raw.codec == "raw" and "codec" not in raw.to_dict()
    with h5py.File(tmp_path / "x" / "shard-00000.h5", "r") as f:
        assert f["images"].shape == (5, SIZE, SIZE, 3) and f["images"].dtype == np.uint8


_CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    from ipmix_cli.shards.codec import decode_one, encode_images
    images = np.load(sys.argv[1])
    blobs = encode_images(images, "jpeg", int(sys.argv[2]))
    decoded = np.stack([decode_one(b) for b in blobs])
    np.savez(sys.argv[3], sizes=[len(b) for b in blobs], data=np.concatenate(blobs),
             decoded=decoded)
    """
)


def test_jpeg_bytes_do_not_depend_on_simd(tmp_path: Path) -> None:
    """libjpeg-turbo picks SIMD code for the CPU it runs on (SSE2, AVX2, NEON...); with
    ``JSIMD_FORCENONE=1`` it runs its plain C code. Same bytes both ways, and the same decoded
    pixels, is what makes JPEG outputs identical across CPUs."""
    images = photo_like(6, size=45, seed=1)  # not a multiple of 16: partial MCUs at the edges
    np.save(tmp_path / "images.npy", images)
    for quality in (90, 75):
        env = {**os.environ, "JSIMD_FORCENONE": "1"}
        result = subprocess.run(
            [sys.executable, "-c", _CHILD, str(tmp_path / "images.npy"), str(quality),
             str(tmp_path / "plain.npz")],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        plain = np.load(tmp_path / "plain.npz")
        blobs = encode_images(images, "jpeg", quality)
        assert plain["sizes"].tolist() == [len(b) for b in blobs]
        assert plain["data"].tobytes() == np.concatenate(blobs).tobytes()
        np.testing.assert_array_equal(plain["decoded"], np.stack([decode_one(b) for b in blobs]))


def test_jpeg_q90_shard_is_at_least_five_times_smaller_than_raw(tmp_path: Path) -> None:
    arrays = _arrays(16, 0)
    arrays["images"] = photo_like(16, size=224, seed=9)
    write_shard(tmp_path / "raw" / "shard-00000.h5", arrays)
    write_shard(tmp_path / "jpeg" / "shard-00000.h5", arrays, codec="jpeg", quality=90)
    raw = (tmp_path / "raw" / "shard-00000.h5").stat().st_size
    coded = (tmp_path / "jpeg" / "shard-00000.h5").stat().st_size
    assert raw >= 5 * coded, (raw, coded)


@pytest.mark.parametrize("codec", ["raw", "png"])
def test_sorted_rows_with_repeats_and_gaps_read_right(tmp_path: Path, codec: str) -> None:
    """[0, 2, 3, 3] spans as many rows as [0, 1, 2, 3]; neither the raw memory-map path nor
    the coded path may take it for a consecutive run."""
    entry = tmp_path / "out.h5"
    joined = build(entry, codec)
    rng = np.random.default_rng(1)
    with ShardReader(entry) as reader:
        np.testing.assert_array_equal(
            reader.read([0, 2, 3, 3])["images"], joined["images"][[0, 2, 3, 3]]
        )
        for _ in range(50):
            rows = np.sort(rng.integers(0, sum(COUNTS), rng.integers(1, 12)))
            np.testing.assert_array_equal(reader.read(rows)["images"], joined["images"][rows])


def test_coded_shards_are_byte_identical_across_writes(tmp_path: Path) -> None:
    arrays = _arrays(70, 1, jsd=True)  # more rows than one chunk
    for codec in ("jpeg", "png"):
        a = write_shard(tmp_path / f"a-{codec}" / "shard-00000.h5", arrays, codec=codec)
        b = write_shard(tmp_path / f"b-{codec}" / "shard-00000.h5", arrays, codec=codec)
        first = (tmp_path / f"a-{codec}" / "shard-00000.h5").read_bytes()
        assert first == (tmp_path / f"b-{codec}" / "shard-00000.h5").read_bytes()
        assert a.checksum == b.checksum
