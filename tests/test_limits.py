"""Sizes real users reach (ImageNet at 224 px: a few thousand shards; ImageNet-21k: 21,000
classes) and values no real job has (a label of 2**40, --size 32768, 10**12 copies): the first
work, the second is a one-line error before anything is allocated or written."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile import ipmix, mixing_folder, one_line_failure, small_npz

from ipmix_cli.readers import ShardReader
from ipmix_cli.shards import (
    check_output,
    inspect,
    shard_filename,
    shard_path,
    verify,
    write_entry,
    write_shard,
)

N_SHARDS = 12_000  # ImageNet x 4 at 224 px with the default shard size: ~3,000
N_CLASSES = 25_000


def label_of(i: int) -> int:
    return (i * 7919) % N_CLASSES if i else N_CLASSES - 1


def _make_shards(entry: Path, indices: range) -> list:
    """One-row shards ``indices`` of ``entry`` (in a worker process: 12,000 take a while)."""
    infos = []
    for i in indices:
        arrays = {
            "images": np.full((1, 8, 8, 3), i % 251, np.uint8),
            "labels": np.array([label_of(i)]),
            "source_index": np.array([i]),
            "copy_index": np.array([0]),
        }
        name = shard_filename(i, N_SHARDS)  # past 1,000 shards: subfolders of 1,000
        infos.append(write_shard(shard_path(entry, i, N_SHARDS), arrays, file_name=name))
    return infos


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An output of 12,000 one-row shards whose labels span 25,000 named classes (in memory
    when the machine has /dev/shm: 20,000 fsyncs on a disk are slow and test nothing here)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        root = Path(tempfile.mkdtemp(prefix="ipmix-many-", dir=shm))
    else:
        root = tmp_path_factory.mktemp("many")
    entry = root / "many.h5"
    blocks = [range(i, min(i + 1500, N_SHARDS)) for i in range(0, N_SHARDS, 1500)]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        infos = [
            info for part in pool.map(_make_shards, [entry] * len(blocks), blocks) for info in part
        ]
    names = [f"n{c:08d} a class name as long as ImageNet-21k's" for c in range(N_CLASSES)]
    started = time.perf_counter()
    write_entry(entry, infos, {"copies": 1}, class_names=names, check_shards=False)
    assert time.perf_counter() - started < 120
    yield entry
    if root.parent == shm:
        shutil.rmtree(root)


def test_entry_with_12000_shards_and_25000_classes(many: Path) -> None:
    manifest = check_output(many)
    assert manifest.num_shards == N_SHARDS and len(manifest.class_names) == N_CLASSES
    with h5py.File(many, "r") as f:  # what a plain HDF5 reader sees
        names = f["ipmix/class_names"][()]
        assert len(names) == N_CLASSES and names[-1].decode() == manifest.class_names[-1]
        assert len(f["ipmix/shard_files"]) == N_SHARDS
        rows = [0, 1, 10_345, N_SHARDS - 1]
        assert f["labels"][rows].tolist() == [N_CLASSES - 1, 7919, (10_345 * 7919) % N_CLASSES,
                                             ((N_SHARDS - 1) * 7919) % N_CLASSES]  # fmt: skip
        assert f["images"][N_SHARDS - 1, 0, 0, 0] == (N_SHARDS - 1) % 251
    reader = ShardReader(many)
    images, labels = reader.read_batch([N_SHARDS - 1, 3])
    assert labels.tolist() == [((N_SHARDS - 1) * 7919) % N_CLASSES, (3 * 7919) % N_CLASSES]
    assert reader.num_classes == N_CLASSES and images[0, 0, 0, 0] == (N_SHARDS - 1) % 251
    folders = sorted(p.name for p in many.with_suffix(".shards").iterdir() if p.is_dir())
    assert folders == [f"{k:04d}" for k in range(N_SHARDS // 1000)]
    assert len(list((many.with_suffix(".shards") / "0003").iterdir())) == 1000
    info = inspect(many)
    assert info["num_shards"] == N_SHARDS and info["num_classes"] == N_CLASSES
    report = verify(many, deep=False)
    assert report.ok and not report.warnings, (report.faults[:3], report.warnings[:3])


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--copies", str(10**12), "--dry-run"], ["--copies must be in 1..100000"]),
        (["--size", "32768"], ["--size 32768x32768", "8..4096"]),
        (["--shard-size", str(10**9)], ["--shard-size", "per shard"]),
    ],
)
def test_absurd_options_are_one_line_before_any_work(
    tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    data, bank = small_npz(tmp_path / "d.npz"), mixing_folder(tmp_path / "mix")
    out = tmp_path / "o.h5"
    result = ipmix("augment", "--input", data, "--mixing-set", bank, "--out", out, *args)
    one_line_failure(result, *needles)
    assert not out.exists() and not out.with_suffix(".shards").exists()


def test_a_huge_label_without_class_names(tmp_path: Path) -> None:
    data = tmp_path / "d.npz"
    images = np.zeros((3, 32, 32, 3), np.uint8)
    np.savez(data, images=images, labels=np.array([0, 2**40, 1], dtype=np.int64))
    out = tmp_path / "o.h5"
    result = ipmix(
        "augment", "--input", data, "--mixing-set", mixing_folder(tmp_path / "mix"),
        "--out", out,
    )  # fmt: skip
    one_line_failure(result, str(data), f"labels go up to {2**40}", "class names")
    assert not out.exists() and not out.with_suffix(".shards").exists()


def test_a_mixing_set_too_large_for_memory_at_this_size(tmp_path: Path) -> None:
    """200 pictures prepared for 4096 px would take 13 GB: refused before resizing any."""
    mixing = tmp_path / "mixing.h5"
    with h5py.File(mixing, "w") as f:
        f["images"] = np.zeros((200, 8, 8, 3), np.uint8)
    data = tmp_path / "d.npz"
    np.savez(data, images=np.zeros((2, 64, 64, 3), np.uint8), labels=np.array([0, 1]))
    result = ipmix(
        "augment", "--input", data, "--mixing-set", mixing, "--out", tmp_path / "o.h5",
        "--preset", "imagenet", "--size", "4096", "--dry-run",
    )  # fmt: skip
    one_line_failure(result, str(mixing), "200 mixing pictures", "GB of memory")


def test_absurd_bank_count(tmp_path: Path) -> None:
    out = tmp_path / "bank"
    one_line_failure(
        ipmix("fractals", "generate", "--out", out, "--count", str(10**9)), "--count must be in"
    )
    assert not out.exists()
