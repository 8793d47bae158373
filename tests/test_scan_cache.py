"""Remembered header checks of a folder scan (``fs/scan_cache.py``): a record answers only for
the very file it was made from, and the scan's results are the same with or without it.

A record is shown to be what answered by planting a false one (an image size no file has) and
seeing the scan report it; any change to the file must make the scan check it again instead.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hostile import fill, image_folder, mixing_folder, needs_root, small_tmpfs

import ipmix_cli.sources.folder as folder_module
from ipmix_cli.cli import main
from ipmix_cli.errors import DecodeError
from ipmix_cli.fs import scan_cache
from ipmix_cli.sources.folder import FolderSource

SIZES = [(40, 30), (24, 50), (33, 33), (20, 60), (45, 25), (31, 29)]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of the test's own, recording files as soon as they are checked."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("IPMIX_SCAN_CACHE", raising=False)
    monkeypatch.setattr(scan_cache, "SETTLED_S", 0.0)
    return tmp_path / "cache" / "ipmix" / "scans"


def _sizes(source: FolderSource) -> dict[str, tuple[int, int]]:
    return {
        rel: (int(h), int(w))
        for rel, (h, w) in zip(source.relpaths, source._cache_sizes, strict=True)
    }


def _plant(root: Path, size: tuple[int, int] = (7, 9)) -> None:
    """Replace every remembered size with ``size``: the next scan shows whether it trusted them."""
    records = scan_cache.load_records(str(root))
    assert len(records), "nothing was remembered"
    sizes = np.empty_like(records.sizes)
    sizes[:] = size
    planted = dataclasses.replace(records, sizes=sizes)
    scan_cache.save_records(str(root), planted)


def _remembered(root: Path) -> dict[str, tuple[int, int]]:
    records = scan_cache.load_records(str(root))
    return {
        rel.decode(): (int(h), int(w))
        for rel, (h, w) in zip(records.rels, records.sizes, strict=True)
    }


def test_a_second_scan_trusts_the_records_and_matches_a_fresh_one(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = image_folder(tmp_path / "data", SIZES)
    first = FolderSource(root)
    assert len(list(cache.iterdir())) == 1
    second = FolderSource(root)
    assert (
        _sizes(second)
        == _sizes(first)
        == {f"class{i % 2}/{i}.png": size for i, size in enumerate(SIZES)}
    )
    assert second._fingerprint == first._fingerprint
    assert second.labels.tolist() == first.labels.tolist()
    _plant(root)
    assert set(_sizes(FolderSource(root)).values()) == {(7, 9)}  # the records answered
    monkeypatch.setenv("IPMIX_SCAN_CACHE", "off")
    assert _sizes(FolderSource(root)) == _sizes(first)  # off: every file checked


def _set_png_height(path: Path, height: int) -> None:
    """Rewrite the height in a PNG's IHDR in place: same size, same bytes elsewhere."""
    with open(path, "r+b") as handle:
        handle.seek(20)
        handle.write(struct.pack(">I", height))


@pytest.mark.parametrize("change", ["same size, times put back", "replaced", "removed", "added"])
def test_any_change_to_a_file_is_checked_again(tmp_path: Path, cache: Path, change: str) -> None:
    root = image_folder(tmp_path / "data", SIZES)
    FolderSource(root)
    _plant(root)
    target = root / "class0" / "2.png"
    st = os.stat(target)
    if change == "same size, times put back":
        _set_png_height(target, 77)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(target).st_size == st.st_size
        want = (77, 33)
    elif change == "replaced":
        image_folder(tmp_path / "other", [(12, 13)] * 3)
        os.replace(tmp_path / "other" / "class0" / "2.png", target)
        want = (12, 13)
    elif change == "removed":
        target.unlink()
        want = None
    else:
        image_folder(tmp_path / "other", [(12, 13)] * 8)
        target = root / "class1" / "new.png"
        os.replace(tmp_path / "other" / "class1" / "7.png", target)
        want = (12, 13)
    sizes = _sizes(FolderSource(root))
    rel = target.relative_to(root).as_posix()
    assert sizes.get(rel) == want
    assert {size for other, size in sizes.items() if other != rel} == {(7, 9)}
    remembered = _remembered(root)
    assert set(remembered) == set(sizes)  # a removed file's record went with it
    if want is not None:
        assert remembered[rel] == want


def test_failures_are_never_remembered(tmp_path: Path, cache: Path) -> None:
    root = image_folder(tmp_path / "data", SIZES)
    broken = root / "class1" / "3.png"
    broken.write_bytes(broken.read_bytes()[:100])  # truncated
    for _ in range(2):
        with pytest.raises(DecodeError, match="3.png"):
            FolderSource(root)
        skipping = FolderSource(root, on_error="skip")
        assert [path for path, _ in skipping.skipped] == [str(broken)]
    assert "class1/3.png" not in _remembered(root) and len(_remembered(root)) == 5


def test_files_changed_just_now_are_not_remembered(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan_cache, "SETTLED_S", 3600.0)
    root = image_folder(tmp_path / "data", SIZES)
    FolderSource(root)
    assert _remembered(root) == {}


def test_untrusted_cache_files_are_ignored(tmp_path: Path, cache: Path) -> None:
    root = image_folder(tmp_path / "data", SIZES)
    want = _sizes(FolderSource(root))
    (entry,) = cache.iterdir()
    entry.write_bytes(b"not an npz")
    assert _sizes(FolderSource(root)) == want  # checked again, and remembered again
    assert _remembered(root) == want
    # Another folder's records under this folder's name: they name another root.
    other = image_folder(tmp_path / "other", SIZES)
    FolderSource(other)
    _plant(other)
    os.replace(scan_cache._entry(str(other))[1], entry)
    assert _sizes(FolderSource(root)) == want


def test_parallel_scans_use_the_records_too(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both parallel paths: one task per class (many classes) and chunks of one list."""
    monkeypatch.setattr(folder_module, "PARALLEL_FROM", 4)
    monkeypatch.setattr(folder_module, "_CHUNK", 4)
    for classes in (8, 1):
        root = image_folder(tmp_path / f"data{classes}", SIZES * 4, classes=classes)
        want = _sizes(FolderSource(root, n_jobs=2))
        assert len(want) == 24 and set(want.values()) == set(SIZES)
        _plant(root)
        assert set(_sizes(FolderSource(root, n_jobs=2)).values()) == {(7, 9)}


def test_records_find_each_path_and_each_class_exactly() -> None:
    """Paths that sort next to each other ("a/x", "a-b/y", "a0/z"), odd bytes and spaces:
    each lookup finds its own record only, and a class's slice holds its files only."""
    rels = [
        "a/x.png",
        "a-b/y.png",
        "a0/z.png",
        "a/sub/w.png",
        "b/é ü.jpg",
        "b/\udcff.png",
        "ab/q.png",
    ]
    items = [
        (rel, ((1, i, 100 + i, 5, 6), 10 + i, 20 + i, "png" if i % 2 else "jpeg"))
        for i, rel in enumerate(rels)
    ]
    records = scan_cache.Records.from_items(items)
    assert records.lookup(rels) == dict(items)
    assert records.lookup(["a/y.png", "a", "b/", "zz"]) == {}
    for cls in ("a", "a-b", "a0", "b", "ab", "c"):
        inside = records.within(cls).lookup(rels)
        assert set(inside) == {rel for rel in rels if rel.startswith(cls + "/")}, cls
    chosen = [rels[5], rels[1], rels[5], "a/none.png"]
    assert records.select(chosen).lookup(rels) == {rel: dict(items)[rel] for rel in chosen[:2]}
    halves = [scan_cache.Records.from_items(items[:3]), scan_cache.Records.from_items(items[3:])]
    assert scan_cache.Records.concat(halves).same_as(records)
    assert not scan_cache.Records.concat(halves[:1]).same_as(records)


def test_a_cache_file_out_of_order_is_not_trusted(tmp_path: Path, cache: Path) -> None:
    root = image_folder(tmp_path / "data", SIZES)
    FolderSource(root)
    records = scan_cache.load_records(str(root))
    flipped = dataclasses.replace(records, rels=records.rels[::-1].copy())
    scan_cache.save_records(str(root), flipped)
    assert len(scan_cache.load_records(str(root))) == 0


@needs_root
def test_a_full_cache_disk_costs_nothing_but_the_saving(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache on a real full tmpfs: the scan gives the same answer, leaves no temporary
    file, and remembers nothing."""
    root = image_folder(tmp_path / "data", SIZES)
    want = _sizes(FolderSource(root))
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        (disk / "ipmix" / "scans").mkdir(parents=True)
        fill(disk)
        monkeypatch.setenv("XDG_CACHE_HOME", str(disk))
        assert _sizes(FolderSource(root)) == want
        assert list((disk / "ipmix" / "scans").iterdir()) == []
        assert len(scan_cache.load_records(str(root))) == 0


def test_the_command_sees_a_file_replaced_after_it_was_remembered(
    tmp_path: Path, cache: Path
) -> None:
    """End to end: ``augment --dry-run --resize exact`` on 32 px images twice (the second from
    the records), then one file is replaced by a 40 px image: only its header says so, and the
    next command refuses it in one line instead of trusting the record."""
    root = image_folder(tmp_path / "data", [(32, 32)] * 6)
    bank = mixing_folder(tmp_path / "bank")
    args = ["augment", "--input", root, "--mixing-set", bank, "--preset", "cifar", "--dry-run"]
    args += ["--resize", "exact", "--out", tmp_path / "o.h5"]
    for _ in range(2):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    assert len(scan_cache.load_records(str(root))) == 6
    image_folder(tmp_path / "other", [(40, 40)] * 4)
    replaced = root / "class1" / "3.png"
    os.replace(tmp_path / "other" / "class1" / "3.png", replaced)
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert str(replaced) in result.output and "40x40" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.h5").exists()
