"""Sources: every input format round-trips known pixels and labels; bad inputs fail clearly."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
from pathlib import Path

import h5py
import joblib
import numpy as np
import pytest
from PIL import Image

from ipmix_cli.errors import IpmixError, SourceError
from ipmix_cli.sources import Source, open_mixing_set, open_source
from ipmix_cli.sources.file_array import FileArray

RNG = np.random.default_rng(7)


def _img(h: int = 6, w: int = 5) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _assert_one_line(error: BaseException, path: Path, *words: str) -> None:
    assert isinstance(error, IpmixError)
    text = str(error)
    assert "\n" not in text, text
    assert str(path) in text, text
    for word in words:
        assert word in text, text


def _raises(path: Path, *words: str, **kwargs) -> None:
    with pytest.raises(SourceError) as info:
        open_source(path, **kwargs)
    _assert_one_line(info.value, path, *words)


# --------------------------------------------------------------------------------------------
# Folder
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def folder(tmp_path: Path) -> tuple[Path, list[np.ndarray], list[int]]:
    """dog/ (2 images, one upper-case extension) and cat/ (2 images) plus noise to ignore."""
    root = tmp_path / "data"
    expected = {
        "cat/b.png": _img(),
        "cat/a.png": _img(),
        "dog/x.PNG": _img(),
        "dog/sub/y.png": _img(),
    }
    for rel, arr in expected.items():
        _png(root / rel, arr)
    _png(root / "dog" / ".hidden.png", _img())  # hidden: ignored
    (root / "README.txt").write_text("top-level files are not part of the data")
    (root / ".cache").mkdir()
    order = ["cat/a.png", "cat/b.png", "dog/sub/y.png", "dog/x.PNG"]
    return root, [expected[k] for k in order], [0, 0, 1, 1]


def test_folder_round_trip(folder) -> None:
    root, images, labels = folder
    src = open_source(root)
    assert src.format == "folder"
    assert src.class_names == ["cat", "dog"]
    assert src.labels.dtype == np.int64
    np.testing.assert_array_equal(src.labels, labels)
    assert len(src) == 4 and src.image_size == (6, 5) and src.skipped == []
    for i, arr in enumerate(images):
        np.testing.assert_array_equal(src.read(i), arr)
    np.testing.assert_array_equal(
        src.read_batch([3, 0, 3]), np.stack([images[3], images[0], images[3]])
    )
    d = src.to_dict()
    assert d["count"] == 4 and d["class_names"] == ["cat", "dog"] and d["format"] == "folder"


def test_folder_fingerprint_tracks_content(folder) -> None:
    root, images, _ = folder
    fp = open_source(root).fingerprint()
    full = open_source(root, fingerprint="full").fingerprint()
    assert fp["files"] == full["files"] == 4 and len(fp["sha256"]) == 64
    assert fp["sha256"] != full["sha256"] and "mtime" in fp["method"]
    assert open_source(root).fingerprint() == fp  # nothing changed: the same answer
    target = root / "cat" / "a.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    assert open_source(root).fingerprint()["sha256"] != fp["sha256"]
    assert open_source(root, fingerprint="full").fingerprint() == full
    _png(target, 255 - images[0])  # same size, other content
    assert open_source(root, fingerprint="full").fingerprint()["sha256"] != full["sha256"]
    with pytest.raises(SourceError, match="unknown fingerprint"):
        open_source(root, fingerprint="fast")


def test_folder_of_mixed_sizes(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _png(root / "a" / "1.png", _img(4, 4))
    _png(root / "a" / "2.png", _img(5, 3))
    src = open_source(root)
    assert src.image_size is None
    batch = src.read_batch([0, 1])
    assert isinstance(batch, list) and [b.shape for b in batch] == [(4, 4, 3), (5, 3, 3)]


def test_folder_bad_files_fail_or_skip(tmp_path: Path) -> None:
    root = tmp_path / "d"
    good = _img()
    _png(root / "a" / "good.png", good)
    buf = io.BytesIO()
    Image.fromarray(_img(48, 48)).save(buf, "JPEG")
    (root / "a" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "b").mkdir()
    (root / "b" / "empty.png").write_bytes(b"")
    (root / "b" / "notes.txt").write_text("hello")
    _png(root / "b" / "ok.png", good)

    with pytest.raises(SourceError) as info:  # first bad file in path order
        open_source(root)
    _assert_one_line(info.value, root / "a" / "cut.jpg", "truncated", "2 more")

    src = open_source(root, on_error="skip")
    assert len(src) == 2 and list(src.labels) == [0, 1]
    reasons = dict(src.skipped)
    assert set(reasons) == {str(root / p) for p in ("a/cut.jpg", "b/empty.png", "b/notes.txt")}
    assert "truncated" in reasons[str(root / "a" / "cut.jpg")]
    assert "empty file" in reasons[str(root / "b" / "empty.png")]
    assert "not an image" in reasons[str(root / "b" / "notes.txt")]
    np.testing.assert_array_equal(src.read(1), good)
    assert len(src.to_dict()["skipped"]) == 3


def test_folder_structure_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _raises(empty, "empty")
    flat = tmp_path / "flat"
    _png(flat / "x.png", _img())
    _raises(flat, "no class subfolders", "1 image files at the top level")
    noimg = tmp_path / "noimg"
    (noimg / "cls").mkdir(parents=True)
    _raises(noimg, "no image files")
    _raises(tmp_path / "does-not-exist", "no such file")
    only_bad = tmp_path / "onlybad"
    (only_bad / "c").mkdir(parents=True)
    (only_bad / "c" / "z.png").write_bytes(b"")
    _raises(only_bad, "no readable images", on_error="skip")


@pytest.mark.parametrize("classes", [2, 9])
def test_parallel_scan_matches_serial_scan(tmp_path: Path, classes: int) -> None:
    """2 classes: one walk, header checks in chunks over the workers; 9 classes: each worker
    walks and checks whole classes. Either way the same files, labels, problems, fingerprint
    as one process, and a bar whose total ends at the file count."""
    from ipmix_cli.sources.folder import PARALLEL_FROM

    root = tmp_path / "many"
    n = PARALLEL_FROM + 300  # above the size where the scan goes parallel
    data = io.BytesIO()
    Image.fromarray(_img(2, 3)).save(data, "PNG")
    names = ["train", "test"] if classes == 2 else [f"c{k}" for k in range(classes)]
    for k in range(n):
        nested = "deep/" if k % 50 == 0 else ""  # subfolders of a class belong to it
        path = root / names[k % classes] / f"{nested}{k:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.getvalue())
    (root / names[1] / "0001.png").write_bytes(b"")
    (root / names[-1] / "notes.txt").write_text("not an image")
    seen: list[tuple[str, int]] = []

    class Counter:
        def start(self, total: int, done: int = 0) -> None:
            seen.append(("start", total))

        def update(self, k: int) -> None:
            seen.append(("update", k))

        def retotal(self, total: int) -> None:
            seen.append(("retotal", total))

    serial = open_source(root, on_error="skip")
    parallel = open_source(root, on_error="skip", n_jobs=2, progress=Counter())
    updates = [k for what, k in seen if what == "update"]
    totals = [k for what, k in seen if what in ("start", "retotal")]
    assert sum(updates) == n and len(updates) > 3  # every image file, in steps
    assert totals[-1] == n, "the bar's total ends at the real count"
    if classes == 2:
        assert seen[0] == ("start", n) and len(totals) == 1  # walked first: known total
    else:
        assert len(totals) == classes + 1  # a guess, then corrected as each class finishes
    assert serial.format == "folder"  # class folders named train/test are not CIFAR
    assert len(parallel) == len(serial) == n - 1 and parallel.skipped == serial.skipped
    assert len(serial.skipped) == 2 and serial.relpaths == parallel.relpaths
    np.testing.assert_array_equal(parallel.labels, serial.labels)
    assert parallel.fingerprint() == serial.fingerprint()
    assert parallel.image_size == serial.image_size == (2, 3)


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> CIFAR rows: 1024 red, 1024 green, 1024 blue values per image."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1).copy()


def _dump(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _make_cifar10(root: Path, per_batch: int = 3) -> dict[str, tuple[np.ndarray, list[int]]]:
    root.mkdir(parents=True)
    made = {}
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        images = RNG.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = [int(v) for v in RNG.integers(0, 10, per_batch)]
        _dump(
            root / name,
            {
                b"batch_label": name.encode(),
                b"labels": labels,
                b"data": _cifar_rows(images),
                b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)],
            },
        )
        made[name] = (images, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(root / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch})
    return made


def test_cifar10_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    made = _make_cifar10(root)
    src = open_source(root)
    assert src.format == "cifar" and len(src) == 15 and src.image_size == (32, 32)
    assert src.class_names[0] == "airplane" and len(src.class_names) == 10
    train = [made[f"data_batch_{k}"] for k in range(1, 6)]
    all_images = np.concatenate([im for im, _ in train])
    np.testing.assert_array_equal(src.labels, [v for _, lab in train for v in lab])
    for i in (0, 4, 14):
        np.testing.assert_array_equal(src.read(i), all_images[i])
    np.testing.assert_array_equal(src.read_batch([14, 2, 7]), all_images[[14, 2, 7]])
    test = open_source(root, split="test")
    np.testing.assert_array_equal(test.read_batch(range(3)), made["test_batch"][0])
    # A pickled copy re-loads its batches lazily and gives the same pixels.
    clone = pickle.loads(pickle.dumps(src))
    assert "_cache_batches" not in clone.__dict__
    np.testing.assert_array_equal(clone.read(9), all_images[9])
    assert src.fingerprint()["files"]["data_batch_1"]["bytes"] > 0


def test_cifar100_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    images = RNG.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    fine = [5, 0, 99, 42]
    _dump(
        root / "train",
        {b"data": _cifar_rows(images), b"fine_labels": fine, b"coarse_labels": [1, 0, 19, 3]},
    )
    _dump(
        root / "test",
        {b"data": _cifar_rows(images[:1]), b"fine_labels": [1], b"coarse_labels": [0]},
    )
    names = [f"class{i}".encode() for i in range(100)]
    _dump(root / "meta", {b"fine_label_names": names, b"coarse_label_names": names[:20]})
    src = open_source(root)
    np.testing.assert_array_equal(src.labels, fine)
    assert src.class_names[99] == "class99"
    np.testing.assert_array_equal(src.read_batch(range(4)), images)


def test_cifar_errors(tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    _make_cifar10(root)
    (root / "data_batch_3").unlink()
    _raises(root, "missing data_batch_3")
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "data_batch_1").write_bytes(b"")
    (evil / "test_batch").write_bytes(pickle.dumps({"data": Path("x")}, protocol=2))
    with pytest.raises(SourceError) as info:  # a pickle may not build arbitrary objects
        open_source(evil, split="test")
    _assert_one_line(info.value, evil / "test_batch", "refusing to load pathlib")


# --------------------------------------------------------------------------------------------
# npz / npy / hdf5
# --------------------------------------------------------------------------------------------


def test_npz_round_trip_rgb_and_gray(tmp_path: Path) -> None:
    images = RNG.integers(0, 256, (5, 4, 3, 3), dtype=np.uint8)
    labels = np.array([0, 2, 1, 2, 0])
    np.savez(
        tmp_path / "rgb.npz", images=images, labels=labels, class_names=np.array(["a", "b", "c"])
    )
    src = open_source(tmp_path / "rgb.npz")
    assert src.format == "npz" and src.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(src.labels, labels)
    np.testing.assert_array_equal(src.read_batch([4, 1]), images[[4, 1]])
    gray = RNG.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    np.savez_compressed(tmp_path / "gray.npz", x=gray, y=np.array([[1], [0], [1]]))
    g = open_source(tmp_path / "gray.npz")
    assert g.class_names == ["0", "1"] and list(g.labels) == [1, 0, 1]
    np.testing.assert_array_equal(g.read(2), np.repeat(gray[2][..., None], 3, axis=2))


def test_npz_is_memory_mapped_when_stored_and_loaded_when_compressed(tmp_path: Path) -> None:
    """``np.savez`` members are read in place on demand (workers then read only the rows they
    need; positioned reads, not a memory map, which a truncated file turns into SIGBUS);
    ``savez_compressed`` ones are decompressed. Both read the same images, by any indices."""
    images = RNG.integers(0, 256, (40, 6, 5, 3), dtype=np.uint8)
    labels = np.arange(40) % 3
    np.savez(tmp_path / "plain.npz", labels=labels, images=images)  # images not the first member
    np.savez_compressed(tmp_path / "packed.npz", images=images, labels=labels)
    plain, packed = open_source(tmp_path / "plain.npz"), open_source(tmp_path / "packed.npz")
    for indices in ([3, 4, 5, 6], [7, 2, 2, 39], np.array([-1, 0]), range(10, 20), [], [5]):
        expected = images[np.asarray(list(indices), dtype=np.int64)]
        np.testing.assert_array_equal(plain.read_batch(indices), expected)
        np.testing.assert_array_equal(packed.read_batch(indices), expected)
    assert isinstance(plain._array(), FileArray)
    assert isinstance(packed._array(), np.ndarray)
    assert "_cache_images" not in pickle.loads(pickle.dumps(plain)).__dict__
    for bad in ([0, 40], [-41], np.array([2, 99])):
        with pytest.raises(IndexError, match="out of range for 40 images in .*plain.npz"):
            plain.read_batch(bad)


def test_npy_with_sibling_or_explicit_labels(tmp_path: Path) -> None:
    images = RNG.integers(0, 256, (4, 3, 2, 3), dtype=np.uint8)
    np.save(tmp_path / "train.npy", images)
    _raises(tmp_path / "train.npy", "train_labels.npy")
    np.save(tmp_path / "train_labels.npy", np.array([3, 1, 0, 2]))
    src = open_source(tmp_path / "train.npy")
    np.testing.assert_array_equal(src.labels, [3, 1, 0, 2])
    np.testing.assert_array_equal(src.read_batch([0, 1, 2, 3]), images)
    np.save(tmp_path / "other.npy", np.array([1, 1, 1, 1], dtype=np.uint8))
    explicit = open_source(tmp_path / "train.npy", labels_path=tmp_path / "other.npy")
    assert list(explicit.labels) == [1, 1, 1, 1]


def _h5(path: Path, images: np.ndarray, labels: np.ndarray, names: list[str] | None = None) -> Path:
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["labels"] = labels
        if names is not None:
            f.attrs["class_names"] = names
    return path


def test_hdf5_round_trip(tmp_path: Path) -> None:
    images = RNG.integers(0, 256, (6, 3, 4, 3), dtype=np.uint8)
    labels = np.array([1, 0, 1, 1, 0, 1])
    path = _h5(tmp_path / "d.h5", images, labels, ["neg", "pos"])
    src = open_source(path)
    assert src.format == "hdf5" and src.class_names == ["neg", "pos"] and src.image_size == (3, 4)
    np.testing.assert_array_equal(src.labels, labels)
    np.testing.assert_array_equal(src.read(-1), images[-1])
    np.testing.assert_array_equal(src.read_batch([5, 0, 5, 2]), images[[5, 0, 5, 2]])
    np.testing.assert_array_equal(src.read_batch([1, 2, 3]), images[1:4])
    assert len(src.fingerprint()["files"][str(path)]["sha256"]) == 64


def test_array_input_errors(tmp_path: Path) -> None:
    imgs = RNG.integers(0, 256, (4, 3, 3, 3), dtype=np.uint8)
    np.savez(tmp_path / "short.npz", images=imgs, labels=np.arange(3))
    _raises(tmp_path / "short.npz", "3 entries", "4 images")
    np.savez(tmp_path / "shape.npz", images=imgs, labels=np.zeros((4, 2), int))
    _raises(tmp_path / "shape.npz", "shape (4, 2)")
    np.savez(tmp_path / "float.npz", images=imgs.astype(np.float32), labels=np.arange(4))
    _raises(tmp_path / "float.npz", "dtype float32", "uint8")
    np.savez(tmp_path / "rgba.npz", images=np.zeros((4, 3, 3, 4), np.uint8), labels=np.arange(4))
    _raises(tmp_path / "rgba.npz", "shape (4, 3, 3, 4)")
    np.savez(tmp_path / "keys.npz", pixels=imgs)
    _raises(tmp_path / "keys.npz", "'images'")
    _h5(tmp_path / "neg.h5", imgs, np.array([0, -1, 1, 0]))
    _raises(tmp_path / "neg.h5", "negative", "missing ipmix shard")
    (tmp_path / "x.csv").write_text("1,2,3\n")
    _raises(tmp_path / "x.csv", "unknown input format")
    _raises(tmp_path / "short.npz", "unknown input format 'tiff'", input_format="tiff")


# --------------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------------


def _read_in_worker(src: Source, indices: list[int]) -> tuple[int, np.ndarray]:
    import os

    return os.getpid(), np.stack([src.read(i) for i in indices])


def test_sources_work_in_loky_workers(folder, tmp_path: Path) -> None:
    root, images, _ = folder
    h5_images = RNG.integers(0, 256, (8, 3, 3, 3), dtype=np.uint8)
    h5src = open_source(_h5(tmp_path / "w.h5", h5_images, np.arange(8) % 2))
    h5src.read(0)  # the parent now holds an open handle; it must not travel
    fsrc = open_source(root)
    state = pickle.dumps(h5src)
    assert len(state) < 4096
    jobs = [(h5src, [7, 1]), (fsrc, [3, 0]), (h5src, [2]), (fsrc, [1])]
    out = joblib.Parallel(n_jobs=2, backend="loky")(
        joblib.delayed(_read_in_worker)(s, idx) for s, idx in jobs
    )
    import os

    assert all(pid != os.getpid() for pid, _ in out)
    np.testing.assert_array_equal(out[0][1], h5_images[[7, 1]])
    np.testing.assert_array_equal(out[1][1], np.stack([images[3], images[0]]))
    np.testing.assert_array_equal(out[2][1], h5_images[[2]])
    np.testing.assert_array_equal(out[3][1], images[1][None])


def _forked_read(args: tuple[Source, int]) -> bytes:
    src, i = args
    return src.read(i).tobytes()


def test_hdf5_handle_is_not_reused_after_fork(tmp_path: Path) -> None:
    images = RNG.integers(0, 256, (4, 2, 2, 3), dtype=np.uint8)
    src = open_source(_h5(tmp_path / "f.h5", images, np.zeros(4, int)))
    src.read(0)
    parent_handle = src.__dict__["_cache_h5"]
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.map(_forked_read, [(src, 3)])  # args are pickled: no handle travels
    assert got[0] == images[3].tobytes()
    # Simulate an inherited object directly: a different pid forces a fresh handle.
    src.__dict__["_cache_pid"] = -1
    np.testing.assert_array_equal(src.read(1), images[1])
    assert src.__dict__["_cache_h5"] is not parent_handle and parent_handle.id.valid
    src.close()


# --------------------------------------------------------------------------------------------
# Mixing sets
# --------------------------------------------------------------------------------------------


def test_open_mixing_set_folder_and_hdf5(tmp_path: Path) -> None:
    bank = tmp_path / "bank"
    pics = [_img(8, 8), _img(8, 8), _img(4, 6)]
    for k, arr in enumerate(pics):
        _png(bank / "fractals" / f"{k:05d}.png", arr)
    (bank / "manifest.json").write_text("{}")
    got = open_mixing_set(bank)
    assert len(got) == 3
    for a, b in zip(got, pics, strict=True):
        np.testing.assert_array_equal(a, b)
    stack = RNG.integers(0, 256, (3, 5, 5, 3), dtype=np.uint8)
    h5bank = tmp_path / "h5bank"
    h5bank.mkdir()
    with h5py.File(h5bank / "fractals.h5", "w") as f:
        f["images"] = stack
    (h5bank / "manifest.json").write_text("{}")
    for got in (open_mixing_set(h5bank / "fractals.h5"), open_mixing_set(h5bank)):
        np.testing.assert_array_equal(np.stack(got), stack)
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "manifest.json").write_text("{}")
    with pytest.raises(SourceError) as info:
        open_mixing_set(nothing)
    _assert_one_line(info.value, nothing, "no images")


def test_mixing_set_limit_decodes_only_the_first_pictures(tmp_path: Path) -> None:
    import h5py

    from ipmix_cli.sources import open_mixing_set

    rng = np.random.default_rng(3)
    pictures = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    for i, picture in enumerate(pictures):
        Image.fromarray(picture).save(tmp_path / f"{i}.png")
    (tmp_path / "4.png").write_bytes(b"broken")  # never reached with limit=3
    got = open_mixing_set(tmp_path, limit=3)
    assert len(got) == 3 and all(np.array_equal(g, p) for g, p in zip(got, pictures, strict=False))
    with h5py.File(tmp_path / "bank.h5", "w") as f:
        f["images"] = pictures
    from_h5 = open_mixing_set(tmp_path / "bank.h5", limit=2)
    assert len(from_h5) == 2 and np.array_equal(from_h5[1], pictures[1])
