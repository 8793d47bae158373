"""The folder scan at ImageNet scale: header checks instead of decodes, each image decoded once
in a run, broken files found late following --on-error, shard sizes in bytes, and the dry run's
estimates against the real run."""

from __future__ import annotations

import io
import json
import math
import re
import zlib
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hostile import mixing_folder
from PIL import Image

import ipmix_cli.sources.decode as decode_module
import ipmix_cli.sources.folder as folder_module
from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.cli import main
from ipmix_cli.jobs.augment_spec import AugmentSpec
from ipmix_cli.readers import ShardReader
from ipmix_cli.sources import open_source
from ipmix_cli.sources.headers import probe_image


@pytest.fixture(scope="module")
def bank_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mixing_folder(tmp_path_factory.mktemp("mixing") / "bank")


def run_cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour fields with mild noise: compresses like a photograph, not like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    channels = [
        128 + 70 * np.sin(x / (9 + 3 * c + seed % 5) + c) * np.cos(y / (13 + seed % 7) + 2 * c)
        for c in range(3)
    ]
    noisy = np.stack(channels, -1) + rng.normal(0, 4, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def jpeg_folder(root: Path, count: int = 18, classes: int = 3) -> list[Path]:
    """Class folders of JPEGs of varied sizes and aspect ratios (portrait and landscape)."""
    rng = np.random.default_rng(5)
    paths = []
    for i in range(count):
        h, w = (int(v) for v in rng.integers(40, 100, 2))
        path = root / f"class{i % classes}" / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(h, w, i)).save(path, quality=92)
        paths.append(path)
    return paths


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """How many times each file is fully decoded (every decode goes through ``decode_image``:
    the workers' reads and the scan's fallback both)."""
    seen: Counter = Counter()
    real = decode_module.decode_image

    def counting(src, *args, **kwargs):
        if isinstance(src, (str, Path)):
            seen[str(src)] += 1
        return real(src, *args, **kwargs)

    monkeypatch.setattr(decode_module, "decode_image", counting)
    monkeypatch.setattr(folder_module, "decode_image", counting)
    return seen


def test_header_probe_agrees_with_the_decoder(tmp_path: Path) -> None:
    """Sizes from headers equal the decoded sizes, EXIF rotations included."""
    cases = []
    for k, orientation in enumerate((1, 3, 5, 6, 7, 8)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.jpg"
        Image.fromarray(photo(30 + k, 50, k)).save(path, exif=exif)
        cases.append(path)
    Image.fromarray(photo(21, 34, 9)).save(tmp_path / "p.png")
    Image.fromarray(photo(17, 12, 9)).save(tmp_path / "b.bmp")
    Image.fromarray(photo(33, 31, 9)).save(tmp_path / "prog.jpg", progressive=True)
    Image.fromarray(photo(33, 31, 9)).convert("L").save(tmp_path / "grey.jpg")
    cases += [tmp_path / n for n in ("p.png", "b.bmp", "prog.jpg", "grey.jpg")]
    for path in cases:
        header = probe_image(str(path))
        assert (header.height, header.width) == decode_module.decode_image(path).shape[:2], path
        assert not header.decoded and header.nbytes == path.stat().st_size


def test_scan_reads_headers_only_and_catches_truncation(tmp_path: Path, decodes: Counter) -> None:
    paths = jpeg_folder(tmp_path / "d", count=6)
    cut = paths[2].read_bytes()
    paths[2].write_bytes(cut[: len(cut) * 2 // 3])  # a download that stopped early
    padded = paths[4].read_bytes() + b"\0" * 4096  # some writers pad after the end marker
    paths[4].write_bytes(padded)
    source = open_source(tmp_path / "d", on_error="skip")
    assert len(source) == 5 and [p for p, _ in source.skipped] == [str(paths[2])]
    assert "truncated" in source.skipped[0][1]
    # Only the two files without an end marker were decoded, to decide: the rest never were.
    assert decodes == Counter({str(paths[2]): 1, str(paths[4]): 1})


def test_each_image_is_decoded_once_in_a_run(
    tmp_path: Path, bank_folder: Path, decodes: Counter
) -> None:
    """Three copies and several shards per copy: each image is still decoded exactly once
    (one task decodes a range of images for every copy)."""
    paths = jpeg_folder(tmp_path / "d")
    out = tmp_path / "o.h5"
    code, output = run_cli(
        *("augment", "--input", tmp_path / "d", "--mixing-set", bank_folder, "--out", out),
        *("--copies", "3", "--shard-size", "5", "--jobs", "2"),
    )
    assert code == 0, output
    assert "54 images in 12 shards" in output  # 4 source ranges x 3 copies
    assert decodes == Counter({str(p): 1 for p in paths})
    reader = ShardReader(out, extras=("source_index", "copy_index"))
    rows = reader.read(np.arange(len(reader)))
    assert np.bincount(rows["copy_index"]).tolist() == [18, 18, 18]
    assert rows["source_index"].tolist() == list(range(18)) * 3


def _broken_png(path: Path, image: np.ndarray) -> None:
    """A PNG whose header and end chunk are intact but whose pixel data do not inflate: what
    the header check cannot see."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    at = data.index(b"IDAT") + 4
    length = int.from_bytes(data[at - 8 : at - 4], "big")
    data[at + 2 : at + length] = bytes(length - 2)  # zeros: not a deflate stream any more
    crc = zlib.crc32(bytes(data[at - 4 : at + length]))  # a valid CRC, so only inflating fails
    data[at + length : at + length + 4] = crc.to_bytes(4, "big")
    path.write_bytes(bytes(data))


def test_a_file_broken_past_its_header_follows_on_error(
    tmp_path: Path, bank_folder: Path, decodes: Counter
) -> None:
    paths = jpeg_folder(tmp_path / "d", count=12)
    bad = tmp_path / "d" / "class1" / "050.png"
    _broken_png(bad, photo(48, 48, 1))
    assert probe_image(str(bad)).height == 48  # the header check passes it
    args = ["augment", "--input", tmp_path / "d", "--mixing-set", bank_folder, "--quiet"]
    args += ["--copies", "2", "--shard-size", "4", "--jobs", "1"]
    code, output = run_cli(*args, "--out", tmp_path / "fail.h5")
    lines = output.strip().splitlines()
    assert code == 1 and len(lines) == 1 and str(bad) in lines[0], output
    assert "header passed the scan" in lines[0] and "--on-error skip" in lines[0]
    assert not (tmp_path / "fail.h5").exists()

    decodes.clear()
    out = tmp_path / "skip.h5"
    loud = [a for a in args if a != "--quiet"]  # the summary line is what is checked
    code, output = run_cli(*loud, "--out", out, "--on-error", "skip")
    assert code == 0, output
    assert "24 images" in output and "1 unreadable file skipped" in output
    with h5py.File(out, "r") as f:
        manifest = json.loads(f["ipmix/manifest"][()])
    assert [p for p, _ in manifest["skipped"]] == [str(bad)]
    # The same output as a run on the folder without that file.
    bad.unlink()
    reference = tmp_path / "reference.h5"
    assert run_cli(*args, "--out", reference)[0] == 0
    got, want = ShardReader(out), ShardReader(reference)
    np.testing.assert_array_equal(
        got.read(np.arange(24))["images"], want.read(np.arange(24))["images"]
    )
    assert len(paths) == 12


def test_shard_size_in_bytes_and_bad_sizes(tmp_path: Path, bank_folder: Path) -> None:
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.integers(0, 256, (50, 32, 32, 3), np.uint8), labels=np.zeros(50, int))
    base = ["augment", "--input", data, "--mixing-set", bank_folder, "--jobs", "1"]
    code, output = run_cli(*base, "--out", tmp_path / "a.h5", "--shard-size", "60KiB")
    assert code == 0 and "50 images in 3 shards" in output, output  # 61440 // 3072 = 20 rows
    for bad in ("0", "12parsecs", "-3MB", "MiB"):
        code, output = run_cli(*base, "--out", tmp_path / "b.h5", "--shard-size", bad)
        assert code == 2 and "not a shard size" in output, (bad, output)
    code, output = run_cli(*base, "--out", tmp_path / "c.h5", "--shard-size", "1KB")
    assert code == 1 and "less than one row" in output, output
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "b.h5").exists()


def _megabytes(text: str, label: str) -> float:
    match = re.search(label + r": ([\d.]+) (KB|MB|GB)", text)
    assert match, text
    return float(match.group(1)) * {"KB": 1e-3, "MB": 1.0, "GB": 1e3}[match.group(2)]


@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_dry_run_bytes_match_the_real_run(tmp_path: Path, bank_folder: Path, codec: str) -> None:
    jpeg_folder(tmp_path / "d", count=60, classes=4)
    args = ["augment", "--input", tmp_path / "d", "--mixing-set", bank_folder, "--quiet"]
    args += ["--copies", "2", "--codec", codec, "--out", tmp_path / "o.h5", "--jobs", "1"]
    code, dry = run_cli(*args, "--dry-run")
    assert code == 0 and "nothing written" in dry and "free:" in dry and "about" in dry, dry
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.shards").exists()
    code, real = run_cli(*[a for a in args if a != "--quiet"])  # the summary has the bytes
    assert code == 0, real
    estimated = _megabytes(dry, "output")
    actual = _megabytes(real.replace("(", "output: ", 1), "output")
    assert abs(estimated - actual) <= (0.02 if codec == "raw" else 0.10) * actual, (dry, real)


def test_export_is_resize_and_centre_crop(tmp_path: Path) -> None:
    """The clean export, against Pillow and torchvision's rules written out here."""
    paths = jpeg_folder(tmp_path / "d", count=6, classes=2)
    out = tmp_path / "val.h5"
    code, output = run_cli(
        *("export", "--input", tmp_path / "d", "--out", out, "--size", "24"),
        *("--resize-side", "30", "--codec", "png"),
    )
    assert code == 0 and "6 images" in output, output
    reader = ShardReader(out, extras=("source_index",))
    rows = reader.read(np.arange(6))
    source = open_source(tmp_path / "d")
    for k, index in enumerate(rows["source_index"].tolist()):
        image = Image.fromarray(decode_module.decode_image(source.file_path(index)))
        w, h = image.size
        short, long = min(h, w), max(h, w)
        new_long = int(30 * long / short)
        size = (30, new_long) if w < h else (new_long, 30)  # (width, height)
        if h == w:
            size = (30, 30)
        resized = np.asarray(image.resize(size, Image.Resampling.BILINEAR))
        top = int(round((resized.shape[0] - 24) / 2.0))
        left = int(round((resized.shape[1] - 24) / 2.0))
        np.testing.assert_array_equal(rows["images"][k], resized[top : top + 24, left : left + 24])
    assert len(paths) == 6


@pytest.mark.parametrize("preset", ["cifar", "imagenet"])
@pytest.mark.parametrize("size", ["24", "40x48"])
def test_mixed_size_jpegs_work_with_every_preset_and_size(
    tmp_path: Path, bank_folder: Path, preset: str, size: str
) -> None:
    jpeg_folder(tmp_path / "d", count=9)
    out = tmp_path / "o.h5"
    code, output = run_cli(
        *("augment", "--input", tmp_path / "d", "--mixing-set", bank_folder, "--out", out),
        *("--preset", preset, "--size", size, "--copies", "2", "--jobs", "1", "--quiet"),
    )
    assert code == 0, output
    h, w = (int(v) for v in (size.split("x") * 2)[:2])
    reader = ShardReader(out)
    images = reader.read(np.arange(len(reader)))["images"]
    assert images.shape == (18, h, w, 3) and images.std() > 10  # real pictures, not blanks


@pytest.mark.parametrize("copies", [1, 2, 4, 10, 100])
@pytest.mark.parametrize(
    ("preset", "n"), [("imagenet", 4_000), ("cifar", 50_000), ("imagenet", 400)]
)
def test_default_shards_hold_16_mib_or_more_while_a_task_stays_within_256(
    tmp_path: Path, preset: str, n: int, copies: int
) -> None:
    """The default plan: a task (one shard per copy) of at most 256 MiB, and each shard
    16 MiB or more unless that would take its task past 256 MiB (with several copies a shard
    was 1/copies of the task, 9 MiB at 224 px with 4 copies: many files, each paying its
    metadata and fsync)."""
    config = IPMixConfig.preset(preset)
    spec = AugmentSpec(tmp_path / "in.npz", tmp_path / "bank", tmp_path / "o.h5", config, copies)
    row = config.size[0] * config.size[1] * 3
    rows = spec.rows_per_shard(n)
    mib = 1 << 20
    shard, task = rows * row, rows * row * copies
    assert rows >= 8 and task <= 256 * mib
    if 16 * copies <= 256:
        assert shard > 16 * mib - row
    else:  # as large as the task's bound allows
        assert task > 256 * mib - copies * row
    assert spec.num_shards(n) == copies * math.ceil(n / rows)
