"""Output bytes pinned: small outputs made through the CLI must keep the exact checksums they had
when this test was written.

Why: a restructuring, a dependency bump or an "equivalent" rewrite of a kernel must not change
what users get for the same seed and options without anybody noticing. The pins are CRC-32s of
the data each shard holds (images, labels, indices; the recipe in docs/format.md), not of the
HDF5 files, so a new HDF5 library that lays files out differently does not trip them, while any
changed pixel does. Inputs are made with integer arithmetic only and stored losslessly.

If a change is meant to change the bytes, say so in its commit and update the pins here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ipmix_cli.cli import main


def run_cli(*args: object) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def integer_image(height: int, width: int, salt: int) -> np.ndarray:
    """A structured picture from integer arithmetic only (gradients, stripes and a block), so
    the input is the same on every machine and the ops see edges and smooth areas."""
    y, x, c = np.mgrid[0:height, 0:width, 0:3]
    value = (x * (3 + salt % 5) + y * (7 + salt % 3) + c * 85 + salt * 29) % 256
    value = np.where(((x // 5 + y // 7 + salt) % 4) == 0, 255 - value, value)
    return value.astype(np.uint8)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pinned")
    mixing = root / "mixing"
    mixing.mkdir()
    for i in range(5):
        picture = integer_image(40 + 3 * i, 48 - 2 * i, 100 + i)
        Image.fromarray(picture).save(mixing / f"{i:02d}.png")
    images = np.stack([integer_image(32, 32, i) for i in range(30)])
    npz = root / "data.npz"
    np.savez(npz, images=images, labels=np.arange(30) % 4)
    folder = root / "folder"
    for i in range(12):
        (folder / f"class{i % 3}").mkdir(parents=True, exist_ok=True)
        picture = integer_image(70 + 9 * (i % 4), 90 - 7 * (i % 3), 50 + i)
        Image.fromarray(picture).save(folder / f"class{i % 3}" / f"{i:02d}.png")
    return {"root": root, "mixing": mixing, "npz": npz, "folder": folder}


def shard_checksums(entry: Path) -> list[str]:
    with h5py.File(entry, "r") as f:
        manifest = json.loads(f["ipmix/manifest"][()])
    return [shard["checksum"] for shard in manifest["shards"]]


PINNED_AUGMENT = {
    # Re-pinned when shards became copy-aligned (each copy's rows cut at the same source
    # offsets): every row's bytes were checked equal to the old output; only the grouping moved.
    "cifar": ["crc32:aba53daf", "crc32:e8981eb6", "crc32:fef9581c", "crc32:6ec7fa96"],
    "cifar-jsd-all-ops": ["crc32:5933cfd7", "crc32:2a22c44d"],
    "imagenet-64": ["crc32:b8e0395f", "crc32:49de161c"],
}

CASES = {
    "cifar": ("npz", ["--copies", "2", "--seed", "7", "--shard-size", "16"]),
    "cifar-jsd-all-ops": (
        "npz",
        ["--jsd", "--all-ops", "--patch-overflow", "clip", "--seed", "3", "--shard-size", "16"],
    ),
    "imagenet-64": (
        "folder",
        ["--preset", "imagenet", "--size", "64", "--copies", "2", "--shard-size", "12"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_augment_bytes_are_pinned(inputs: dict[str, Path], case: str) -> None:
    source, options = CASES[case]
    entry = inputs["root"] / f"{case}.h5"
    run_cli(
        "augment", "--input", inputs[source], "--mixing-set", inputs["mixing"], "--out", entry,
        "--jobs", "1", "--quiet", *options,
    )  # fmt: skip
    assert shard_checksums(entry) == PINNED_AUGMENT[case]


PINNED_BANK = "d04abeff7039189daabcffe093f2be49720c148400f90b4e8aa6a066a05a3416"


def test_bank_pixels_are_pinned(tmp_path: Path) -> None:
    out = tmp_path / "bank"
    run_cli(
        "fractals", "generate", "--out", out, "--count", "6", "--size", "32", "--points", "3000",
        "--format", "h5", "--seed", "11", "--jobs", "1", "--quiet",
    )  # fmt: skip
    with h5py.File(out / "fractals.h5", "r") as f:
        pixels = np.ascontiguousarray(f["images"][()])
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == PINNED_BANK
