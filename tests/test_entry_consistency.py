"""An entry file that contradicts itself is refused by every reader and reported by ``verify``.

Each test damages one thing in a copy of a real ``ipmix augment`` output (24 sources x 2 copies
in shards of 8 rows): the manifest's shard counts, starts or copies, the entry's own virtual
datasets, its root attributes or its ``ipmix/`` lists. Readers go by the manifest, so a
manifest whose numbers do not add up must stop them when they open (not as a numpy error
mid-epoch); ``verify`` must report, as one-line faults, everything the readers refuse and
everything docs/format.md tells plain HDF5 readers to rely on, without a traceback.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hostile import ipmix, one_line_failure, small_npz

from ipmix_cli.errors import ShardError
from ipmix_cli.readers import ShardReader
from ipmix_cli.shards import read_shard_info, verify, write_entry

SOURCES, COPIES, SHARD_SIZE = 24, 2, 8
ROWS = SOURCES * COPIES


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, bank: Path) -> Path:
    """The augment output every test damages a copy of."""
    root = tmp_path_factory.mktemp("consistency")
    data = small_npz(root / "in.npz", count=SOURCES)
    out = root / "out.h5"
    done = ipmix(
        "augment", "--input", data, "--mixing-set", bank, "--out", out, "--jobs", "1",
        "--copies", COPIES, "--shard-size", SHARD_SIZE, "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert verify(out, jobs=1).ok
    return out


@pytest.fixture()
def entry(made: Path, tmp_path: Path) -> Path:
    """A fresh copy of the output (entry and shard folder), for one test to damage."""
    copy = tmp_path / "out.h5"
    shutil.copy(made, copy)
    shutil.copytree(made.with_suffix(".shards"), copy.with_suffix(".shards"))
    return copy


def edit_manifest(entry: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the JSON in the entry's ``ipmix/manifest`` dataset after ``change``."""
    with h5py.File(entry, "r+") as f:
        manifest = json.loads(f["ipmix/manifest"][()])
        change(manifest)
        del f["ipmix/manifest"]
        f["ipmix/manifest"] = json.dumps(manifest)


def _count(k: int, n: int) -> Callable[[dict[str, Any]], None]:
    return lambda m: m["shards"][k].__setitem__("count", n)


def _negative(m: dict[str, Any]) -> None:
    m["shards"][2]["count"] = -3  # the total still adds up: only the shards' own counts tell
    m["shards"][3]["count"] = 8 + 8 + 3


BAD_MANIFESTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "a shard of 0 rows": _count(2, 0),
    "negative counts": _negative,
    "a shard left out": lambda m: m["shards"].pop(2),
    "shards out of order": lambda m: m["shards"].reverse(),
    "too many copies": lambda m: m.__setitem__("copies", 3),
    "no sources": lambda m: m.__setitem__("num_sources", 0),
}


@pytest.mark.parametrize("damage", list(BAD_MANIFESTS), ids=list(BAD_MANIFESTS))
def test_a_manifest_that_does_not_add_up_is_refused_when_a_reader_opens(
    entry: Path, damage: str
) -> None:
    edit_manifest(entry, BAD_MANIFESTS[damage])
    with pytest.raises(ShardError) as refused:
        ShardReader(entry)
    assert refused.value.path == str(entry)
    problem = refused.value.problem
    faults = verify(entry, jobs=1).faults
    # verify lists what the reader refused (the reader names only the first of several)
    assert f"{entry}: {problem.split(' (and ')[0]}" in faults, (problem, faults)


@pytest.mark.parametrize("damage", ["a shard of 0 rows", "a shard left out"])
def test_framework_readers_and_preview_refuse_it_in_one_line(entry: Path, damage: str) -> None:
    edit_manifest(entry, BAD_MANIFESTS[damage])
    torch = pytest.importorskip("ipmix_cli.readers.torch")
    jax = pytest.importorskip("ipmix_cli.readers.jax")
    for make in (
        lambda: torch.ShardDataset(entry, epoch_mode="all"),
        lambda: next(iter(jax.batches(entry, batch_size=ROWS))),
    ):
        with pytest.raises(ShardError, match="manifest: shard 2 "):
            make()
    sheet = entry.parent / "sheet.png"
    one_line_failure(ipmix("preview", entry, "--out", sheet), str(entry), "manifest: shard 2 ")
    assert not sheet.exists()


def test_the_reader_reads_every_row_of_a_sound_output(entry: Path) -> None:
    """The checks refuse nothing ipmix writes (the baseline of the damage tests)."""
    images, labels = ShardReader(entry).read_batch(np.arange(ROWS))
    with h5py.File(entry, "r") as f:
        np.testing.assert_array_equal(images, f["images"][()])
        np.testing.assert_array_equal(labels, f["labels"][()])


def _replace(name: str, value: Any) -> Callable[[h5py.File], None]:
    def change(f: h5py.File) -> None:
        del f[name]
        f[name] = value

    return change


def _delete(name: str) -> Callable[[h5py.File], None]:
    def change(f: h5py.File) -> None:
        del f[name]

    return change


def _attr(name: str, value: Any) -> Callable[[h5py.File], None]:
    return lambda f: f.attrs.__setitem__(name, value)


BAD_ENTRIES: dict[str, tuple[Callable[[h5py.File], None], str]] = {
    "short labels": (_replace("labels", np.zeros(10, "int64")), "'labels' is int64 (10,)"),
    "images a string": (_replace("images", "x"), "'images' is "),
    "labels not virtual": (_replace("labels", np.zeros(ROWS, "int64")), "'labels' is not a "),
    "no copy_index": (_delete("copy_index"), "dataset 'copy_index' is missing"),
    "wrong count": (_attr("count", ROWS - 1), "root attribute 'count' is 47"),
    "wrong num_shards": (_attr("num_shards", 5), "root attribute 'num_shards' is 5"),
    "no shard_files": (_delete("ipmix/shard_files"), "'ipmix/shard_files' is missing"),
    "no class_names": (_delete("ipmix/class_names"), "'ipmix/class_names' is missing"),
    "wrong shard_counts": (
        _replace("ipmix/shard_counts", np.array([8, 8, 8, 8, 8, 7])),
        "'ipmix/shard_counts' differs from the manifest's shard counts at entry 5",
    ),
    "wrong shard_files": (
        _replace("ipmix/shard_files", np.array(["out.shards/x.h5"] * 6, dtype=object)),
        "'ipmix/shard_files' differs from the manifest's shard files at entry 0",
    ),
}


@pytest.mark.parametrize("damage", list(BAD_ENTRIES), ids=list(BAD_ENTRIES))
def test_verify_reports_a_malformed_entry_as_a_fault(entry: Path, damage: str) -> None:
    change, fault = BAD_ENTRIES[damage]
    with h5py.File(entry, "r+") as f:
        change(f)
    report = verify(entry, deep=False, jobs=1)
    assert any(f.startswith(f"{entry}: ") and fault in f for f in report.faults), report.faults


@pytest.mark.parametrize("damage", ["short labels", "images a string", "no shard_files"])
def test_ipmix_verify_of_a_malformed_entry_is_one_line_and_exit_1(entry: Path, damage: str) -> None:
    change, fault = BAD_ENTRIES[damage]
    with h5py.File(entry, "r+") as f:
        change(f)
    checked = ipmix("verify", "--quick", entry)
    one_line_failure(checked, str(entry), "1 fault found")
    assert f"FAULT {entry}: " in checked.stdout and fault in checked.stdout, checked.stdout


def test_a_newer_format_version_attribute_is_refused(entry: Path) -> None:
    """docs/format.md: readers must refuse a larger format_version; plain HDF5 readers see the
    root attribute, so it counts even when the manifest says 2."""
    with h5py.File(entry, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(ShardError, match="format_version attribute 99") as refused:
        ShardReader(entry)
    assert refused.value.path == str(entry)
    one_line_failure(ipmix("verify", "--quick", entry), str(entry), "format_version attribute 99")


@pytest.mark.parametrize("value", [1, "2", None], ids=["older", "a string", "missing"])
def test_a_format_version_attribute_that_is_not_the_manifests_is_a_fault(
    entry: Path, value: object
) -> None:
    with h5py.File(entry, "r+") as f:
        if value is None:
            del f.attrs["format_version"]
        else:
            f.attrs["format_version"] = value
    assert any("format_version attribute" in f for f in verify(entry, deep=False, jobs=1).faults)
    with pytest.raises(ShardError, match="format_version attribute"):
        ShardReader(entry)


def test_write_entry_refuses_copies_that_do_not_fit_its_rows(entry: Path) -> None:
    """An entry every reader would refuse is not written in the first place."""
    folder = entry.with_suffix(".shards")
    infos = [read_shard_info(p) for p in sorted(folder.glob("shard-*.h5"))]
    again = entry.parent / "again.h5"
    shutil.copytree(folder, again.with_suffix(".shards"))
    with pytest.raises(ShardError, match="3 copies of 24 sources"):
        write_entry(again, infos, {"copies": 3, "num_sources": SOURCES})
    assert not again.exists()
    write_entry(again, infos, {"copies": COPIES, "num_sources": SOURCES})
    assert len(ShardReader(again)) == ROWS


def test_a_shard_copied_over_another_is_refused_when_read(entry: Path) -> None:
    """Shards of one output are the same size, so the open-time size check passes a shard
    copied over another; its own index and checksum attributes tell: reading its rows is a
    ShardError naming it (the torch reader's too), the other shards still read."""
    shards = sorted(entry.with_suffix(".shards").glob("shard-*.h5"))
    expected = ShardReader(entry).read_batch(np.arange(ROWS))
    assert shards[3].stat().st_size == shards[2].stat().st_size
    shutil.copy(shards[3], shards[2])
    reader = ShardReader(entry)
    np.testing.assert_array_equal(reader.read_batch(np.arange(8))[0], expected[0][:8])
    with pytest.raises(ShardError, match="shard-00002.h5.*records shard 2"):
        reader.read_batch(np.arange(ROWS))
    torch = pytest.importorskip("torch")
    from ipmix_cli.readers.torch import ShardDataset

    with pytest.raises(ShardError, match="shard-00002.h5"):
        list(torch.utils.data.DataLoader(ShardDataset(entry), batch_size=None))


def test_a_shard_from_another_output_is_refused_when_read(
    entry: Path, bank: Path, tmp_path: Path
) -> None:
    """Shard 2 of another run of the same shape (another seed): the index matches, the
    checksum does not."""
    other = tmp_path / "other" / "out.h5"
    done = ipmix(
        "augment", "--input", small_npz(tmp_path / "in.npz", count=SOURCES), "--mixing-set",
        bank, "--out", other, "--jobs", "1", "--copies", COPIES, "--shard-size", SHARD_SIZE,
        "--seed", "5", "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    name = "shard-00002.h5"
    mine, theirs = entry.with_suffix(".shards") / name, other.with_suffix(".shards") / name
    assert mine.stat().st_size == theirs.stat().st_size
    shutil.copy(theirs, mine)
    with pytest.raises(ShardError, match="shard-00002.h5: shard was replaced"):
        ShardReader(entry).read_batch(np.arange(ROWS))
