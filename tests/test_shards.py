"""Shards and entry files: exact round trips with plain h5py, moves, damage, atomicity, resume."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from ipmix_cli import shards
from ipmix_cli.errors import ShardError, SourceError
from ipmix_cli.fs import atomic
from ipmix_cli.shards import (
    ShardInfo,
    inspect,
    open_output,
    read_shard_info,
    shard_is_valid,
    shard_path,
    verify,
    write_entry,
    write_shard,
    write_shard_pending,
)
from ipmix_cli.sources import open_source

COUNTS = (5, 3, 4)
H, W = 6, 7
CLASSES = ["a", "b", "c"]


def _arrays(index: int, n: int, jsd: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + index)
    out = {
        "images": rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8),
        "labels": rng.integers(0, len(CLASSES), n),
        "source_index": np.arange(n) + 10 * index,
        "copy_index": np.full(n, index % 2),
    }
    if jsd:
        out["clean"] = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
        out["images2"] = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
    return out


def _build(entry: Path, jsd: bool = False, **kwargs) -> tuple[list[ShardInfo], dict]:
    parts = [_arrays(i, n, jsd) for i, n in enumerate(COUNTS)]
    infos = [
        write_shard(shard_path(entry, i), a, {"config_hash": "abc"}, **kwargs)
        for i, a in enumerate(parts)
    ]
    manifest = {"config": {"k": 3, "jsd": jsd}, "seed": 42, "source": {"sha256": "00"}}
    write_entry(entry, infos, manifest, class_names=CLASSES)
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return infos, joined


@pytest.fixture()
def built(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    entry = tmp_path / "out" / "train.h5"
    _, joined = _build(entry)
    return entry, joined


def _assert_plain_read(entry: Path, joined: dict[str, np.ndarray]) -> None:
    with h5py.File(entry, "r") as f:  # plain h5py, no ipmix code
        for key, value in joined.items():
            got = f[key][()]
            assert got.dtype == (np.uint8 if value.dtype == np.uint8 else np.int64)
            np.testing.assert_array_equal(got, value)
        assert f["images"].shape == (sum(COUNTS), H, W, 3)


def test_plain_h5py_reads_exact_arrays(built) -> None:
    entry, joined = built
    assert sorted(p.name for p in (entry.parent / "train.shards").iterdir()) == [
        "shard-00000.h5",
        "shard-00001.h5",
        "shard-00002.h5",
    ]
    _assert_plain_read(entry, joined)
    with h5py.File(entry, "r") as f:
        assert f.attrs["format_version"] == shards.FORMAT_VERSION
        assert [n.decode() for n in f["ipmix/class_names"][()]] == CLASSES
        manifest = json.loads(f["ipmix/manifest"][()])
        sources = [m.file_name for m in f["images"].virtual_sources()]
    assert sources == [f"train.shards/shard-{i:05d}.h5" for i in range(3)]  # relative paths
    assert manifest["config"] == {"k": 3, "jsd": False} and manifest["seed"] == 42
    assert [s["count"] for s in manifest["shards"]] == list(COUNTS)
    assert manifest["count"] == sum(COUNTS) and manifest["class_names"] == CLASSES


def test_checksum_follows_the_documented_recipe(built) -> None:
    """Recomputed from docs/format.md with zlib alone; a shard that stores the older sha256
    form over the same bytes still passes the resume check."""
    entry, _ = built
    path = shard_path(entry, 1)
    crc, digest = 0, hashlib.sha256()
    with h5py.File(path, "r") as f:
        for name in ("images", "labels", "source_index", "copy_index"):
            data = f[name][()]
            kind = "uint8" if data.dtype == np.uint8 else "int64"
            for part in (
                f"{name} {kind} {','.join(map(str, data.shape))}\n".encode(),
                data.astype(data.dtype.newbyteorder("<")).tobytes(),
            ):
                crc = zlib.crc32(part, crc)
                digest.update(part)
        stored = f.attrs["checksum"]
        chunks = f["images"].chunks
    assert stored == f"crc32:{crc:08x}"
    assert chunks[1:] == (H, W, 3) and chunks[0] == COUNTS[1]  # whole images per chunk
    assert shards.shard_checksum(path, "sha256") == "sha256:" + digest.hexdigest()
    with h5py.File(path, "a") as f:
        f.attrs["checksum"] = "sha256:" + digest.hexdigest()
    assert shard_is_valid(path, COUNTS[1])
    with h5py.File(path, "a") as f:
        f.attrs["checksum"] = "sha256:" + "0" * 64
    assert not shard_is_valid(path, COUNTS[1])


def test_moved_output_reads_from_another_cwd(built, tmp_path: Path, monkeypatch) -> None:
    entry, joined = built
    moved = tmp_path / "elsewhere" / "deeper"
    moved.parent.mkdir()
    shutil.move(str(entry.parent), str(moved))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    new_entry = moved / "train.h5"
    _assert_plain_read(new_entry, joined)
    assert verify(new_entry).ok
    with open_output(new_entry) as out:
        np.testing.assert_array_equal(out.images[3:9], joined["images"][3:9])
        np.testing.assert_array_equal(out.labels, joined["labels"])
        clone = pickle.loads(pickle.dumps(out))  # no open handle travels
        np.testing.assert_array_equal(clone.read(2, 4)["images"], joined["images"][2:4])
        clone.close()
    rel = os.path.relpath(new_entry, elsewhere)  # relative entry path, too
    _assert_plain_read(Path(rel), joined)


def test_missing_shard_is_caught_and_reads_minus_one(built) -> None:
    entry, joined = built
    gone = shard_path(entry, 1)
    gone.unlink()
    with pytest.raises(ShardError) as info:
        open_output(entry)
    assert str(info.value).startswith(str(gone)) and "missing" in str(info.value)
    with pytest.raises(ShardError, match="shard-00001.h5"):
        open_source(entry)
    report = verify(entry)
    assert not report.ok
    assert len(report.faults) == 1 and report.faults[0].startswith(str(gone))
    with h5py.File(entry, "r") as f:  # what a plain reader sees: the documented -1 marker
        labels = f["labels"][()]
        images = f["images"][()]
    assert (labels[5:8] == -1).all() and (labels[:5] >= 0).all() and (labels[8:] >= 0).all()
    assert (images[5:8] == 0).all()
    assert inspect(entry)["missing_shards"] == 1


def test_truncated_shard_is_caught(built) -> None:
    entry, _ = built
    path = shard_path(entry, 2)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)
    report = verify(entry)
    assert not report.ok
    assert any(f.startswith(str(path)) for f in report.faults), report.faults
    assert all("\n" not in f for f in report.faults)
    assert not shard_is_valid(path, COUNTS[2])
    assert shard_is_valid(shard_path(entry, 0), COUNTS[0])


def test_flipped_byte_in_image_data_fails_checksum(built) -> None:
    entry, _ = built
    path = shard_path(entry, 0)
    with h5py.File(path, "r") as f:
        offset = f["images"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as handle:
        handle.seek(offset + 17)
        byte = handle.read(1)
        handle.seek(offset + 17)
        handle.write(bytes([byte[0] ^ 0x01]))
    report = verify(entry)
    assert [f for f in report.faults if "checksum mismatch" in f and str(path) in f]
    assert len(report.faults) == 1
    assert shard_is_valid(path, COUNTS[0], deep=False)  # attributes alone look fine...
    assert not shard_is_valid(path, COUNTS[0])  # ...re-hashing the data does not


def test_verify_ok_and_inspect(built) -> None:
    entry, _ = built
    report = verify(entry)
    assert report.ok and report.shards_checked == 3 and report.count == sum(COUNTS)
    assert report.warnings == []
    info = inspect(entry)
    assert info["count"] == 12 and info["num_shards"] == 3 and info["num_classes"] == 3
    assert info["image_shape"] == [H, W, 3] and info["config"]["k"] == 3 and info["seed"] == 42
    on_disk = entry.stat().st_size + sum(shard_path(entry, i).stat().st_size for i in range(3))
    assert info["bytes_on_disk"] == on_disk
    assert [s["count"] for s in info["shards"]] == list(COUNTS)
    # a temporary file as a killed writer leaves it, under its real name
    atomic.temporary_sibling(shard_path(entry, 3)).write_bytes(b"x")
    assert "interrupted write" in verify(entry).warnings[0]


def test_labels_out_of_range_are_reported(tmp_path: Path) -> None:
    entry = tmp_path / "o.h5"
    arrays = _arrays(0, 4)
    arrays["labels"] = np.array([0, 1, 7, 2])
    info = write_shard(shard_path(entry, 0), arrays)
    write_entry(entry, [info], {}, class_names=CLASSES)
    faults = verify(entry).faults
    assert len(faults) == 1 and "label 7 out of range for 3 classes" in faults[0]


def test_jsd_mode_and_compression(tmp_path: Path) -> None:
    for compression in ("gzip", "lzf"):
        entry = tmp_path / compression / "jsd.h5"
        _, joined = _build(entry, jsd=True, compression=compression)
        _assert_plain_read(entry, joined)
        with h5py.File(shard_path(entry, 0), "r") as f:
            assert f["images"].compression == compression
            assert f.attrs["mode"] == "jsd"
        assert verify(entry).ok
        with open_output(entry) as out:
            assert out.mode == "jsd"
            np.testing.assert_array_equal(out.dataset("images2")[()], joined["images2"])


def test_interrupted_write_leaves_no_final_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "s" / "shard-00000.h5"
    with pytest.raises(TypeError):  # fails mid-write: datasets done, attribute unstorable
        write_shard(target, _arrays(0, 3), {"bad": object()})
    assert not target.exists()  # (the file is built in memory: nothing reached the disk)
    assert not target.parent.exists() or list(target.parent.iterdir()) == []

    def killed(path: Path) -> None:
        raise KeyboardInterrupt  # the process is stopped between the write and the rename

    monkeypatch.setattr(atomic, "fsync_path", killed)
    with pytest.raises(KeyboardInterrupt):
        write_shard(target, _arrays(0, 3))
    assert not target.exists() and list(target.parent.iterdir()) == []
    monkeypatch.undo()
    good = write_shard(target, _arrays(0, 3))
    before = target.read_bytes()
    monkeypatch.setattr(atomic, "fsync_path", killed)
    with pytest.raises(KeyboardInterrupt):  # a failed rewrite keeps the old complete shard
        write_shard(target, _arrays(1, 4))
    assert target.read_bytes() == before and read_shard_info(target) == good
    entry = tmp_path / "s.h5"  # the shard above lives in s/, not s.shards/: use a fresh one
    monkeypatch.undo()
    info = write_shard(shard_path(entry, 0), _arrays(0, 3))
    monkeypatch.setattr(atomic, "fsync_path", killed)
    with pytest.raises(KeyboardInterrupt):  # the entry file is written atomically too
        write_entry(entry, [info], {})
    assert not entry.exists() and [p.name for p in tmp_path.iterdir() if p.is_file()] == []


def test_pending_shard_commits_or_discards(tmp_path: Path, monkeypatch) -> None:
    """Workers write pending shards, the job commits them: a pending shard is complete under a
    hidden temporary name, commits to the bytes write_shard gives, and an interrupted commit or
    a discard leaves neither the final name nor the temporary."""
    folder = tmp_path / "s"
    pending = write_shard_pending(folder / "shard-00002.h5", _arrays(2, 5))
    assert not pending.path.exists() and pending.tmp.parent == folder
    assert pending.tmp.name.startswith(".") and pending.tmp.name.endswith(".tmp")
    info = pending.commit()
    assert shard_is_valid(pending.path, info) and read_shard_info(pending.path) == info
    reference = write_shard(tmp_path / "ref" / "shard-00002.h5", _arrays(2, 5))
    assert reference == info
    assert (tmp_path / "ref" / "shard-00002.h5").read_bytes() == pending.path.read_bytes()

    write_shard_pending(folder / "shard-00003.h5", _arrays(3, 4)).discard()

    def interrupted(path: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "fsync_path", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_shard_pending(folder / "shard-00005.h5", _arrays(5, 4)).commit()
    assert sorted(p.name for p in folder.iterdir()) == ["shard-00002.h5"]


def test_shard_is_valid_for_resume(built) -> None:
    entry, _ = built
    path = shard_path(entry, 1)
    info = read_shard_info(path)
    assert info.count == COUNTS[1] and info.attrs == {"config_hash": "abc"}
    assert shard_is_valid(path, info)
    assert shard_is_valid(path, {"count": 3, "attrs": {"config_hash": "abc"}})
    assert not shard_is_valid(path, {"count": 3, "attrs": {"config_hash": "xyz"}})
    assert not shard_is_valid(path, 4)
    assert not shard_is_valid(path, {"count": 3, "checksum": "sha256:00"})
    assert not shard_is_valid(shard_path(entry, 9), 3)
    assert ShardInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


def test_write_entry_refuses_inconsistent_shards(tmp_path: Path) -> None:
    entry = tmp_path / "e.h5"
    a = write_shard(shard_path(entry, 0), _arrays(0, 2))
    c = write_shard(shard_path(entry, 2), _arrays(2, 2))
    with pytest.raises(ShardError, match="0..k-1"):
        write_entry(entry, [a, c], {})
    b = write_shard(shard_path(entry, 1), _arrays(1, 2))
    shard_path(entry, 1).unlink()
    with pytest.raises(ShardError, match="shard-00001.h5: shard is missing"):
        write_entry(entry, [a, b, c], {})
    assert not entry.exists()
    with pytest.raises(ShardError, match="uint8"):
        write_shard(shard_path(entry, 3), {**_arrays(3, 2), "images": np.zeros((2, 3, 3, 3))})


def test_our_output_reads_back_as_a_source(built) -> None:
    entry, joined = built
    src = open_source(entry)
    assert src.class_names == CLASSES and len(src) == sum(COUNTS)
    np.testing.assert_array_equal(src.labels, joined["labels"])
    np.testing.assert_array_equal(src.read_batch([11, 0, 6]), joined["images"][[11, 0, 6]])
    with pytest.raises(SourceError):
        open_source(entry.parent / "train.shards" / "nope.h5")


def test_shard_bytes_do_not_depend_on_dataset_lifetime(tmp_path: Path, monkeypatch) -> None:
    """Holding the h5py Dataset object past the write (as a dask worker's profiler thread can)
    must not change the file's layout: the bytes are the public promise."""
    normal = tmp_path / "a" / "shard-00000.h5"
    write_shard(normal, _arrays(0, 40))
    held = []
    original = h5py.Group.create_dataset

    def create_and_hold(self, *args, **kwargs):
        dataset = original(self, *args, **kwargs)
        held.append(dataset)
        return dataset

    monkeypatch.setattr(h5py.Group, "create_dataset", create_and_hold)
    kept = tmp_path / "b" / "shard-00000.h5"
    write_shard(kept, _arrays(0, 40))
    assert held, "the hook must have seen the datasets"
    assert kept.read_bytes() == normal.read_bytes()
