"""What an augment output may write and remove: only its own entry file and shard folder.

Never an input (the data set's files, the mixing set's, a labels or classes file, the files a
source reads beside its own, an HDF5 input's shards), even with ``--overwrite``; never files
the user put in a shard folder without ``--overwrite``; never a shard folder another entry
owns; and ``--dry-run`` refuses whatever the real run refuses. Names that cannot be used (too
long, symbolic link loops) are one line, not a traceback. Real commands on real files.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hostile import digest_tree, image_folder, ipmix, mixing_folder, one_line_failure

from ipmix_cli.fs.lock import exclusive_lock


def augment(*args: object, command: str = "augment") -> subprocess.CompletedProcess:
    return ipmix(command, *args, "--jobs", "1", "--quiet", "--shard-size", "8")


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (names and bytes), to show a refused run changed nothing."""
    return digest_tree(root)


@pytest.fixture()
def place(tmp_path: Path) -> Path:
    """``data/class0,class1`` (4 images), ``bank/`` (4 pictures), ``x.npy`` with its sibling
    labels and class names, a classes file, and an empty ``out/``."""
    image_folder(tmp_path / "data", [(32, 32)] * 4)
    mixing_folder(tmp_path / "bank")
    (tmp_path / "bank" / "manifest.json").write_text('{"kept": true}')
    rng = np.random.default_rng(3)
    np.save(tmp_path / "x.npy", rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    np.save(tmp_path / "x_labels.npy", np.array([0, 1, 0, 1]))
    (tmp_path / "x_class_names.txt").write_text("cat\ndog\n")
    (tmp_path / "classes.txt").write_text("class0\nclass1\n")
    (tmp_path / "out").mkdir()
    return tmp_path


# --------------------------------------------------------------------------------------------
# no input is ever replaced or removed, even with --overwrite


INPUT_CASES: dict[str, Callable[[Path], list[object]]] = {
    "an image of the folder input": lambda p: [
        "--input", p / "data", "--mixing-set", p / "bank", "--out", p / "data/class0/0.png"
    ],
    "a picture of the mixing-set folder": lambda p: [
        "--input", p / "data", "--mixing-set", p / "bank", "--out", p / "bank/01.png"
    ],
    "another file of the mixing-set folder": lambda p: [
        "--input", p / "data", "--mixing-set", p / "bank", "--out", p / "bank/manifest.json"
    ],
    "the classes file": lambda p: [
        "--input", p / "data", "--classes", p / "classes.txt", "--mixing-set", p / "bank",
        "--out", p / "classes.txt",
    ],
    "the sibling labels of an .npy input": lambda p: [
        "--input", p / "x.npy", "--mixing-set", p / "bank", "--out", p / "x_labels.npy"
    ],
    "the sibling class names of an .npy input": lambda p: [
        "--input", p / "x.npy", "--mixing-set", p / "bank", "--out", p / "x_class_names.txt"
    ],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(INPUT_CASES))
def test_no_input_is_replaced_even_with_overwrite(place: Path, case: str) -> None:
    before = snapshot(place)
    for extra in (["--overwrite"], ["--overwrite", "--dry-run"], []):
        result = augment(*INPUT_CASES[case](place), *extra)
        one_line_failure(result, "input")
        assert snapshot(place) == before, (case, extra)


def test_a_classes_file_inside_the_shard_folder_is_kept(place: Path) -> None:
    shards = place / "out" / "o.shards"
    shards.mkdir()
    (shards / "classes.txt").write_text("class0\nclass1\n")
    before = snapshot(place)
    result = augment("--input", place / "data", "--classes", shards / "classes.txt", "--mixing-set",
                     place / "bank", "--out", place / "out/o.h5", "--overwrite")  # fmt: skip
    one_line_failure(result, "is part of this output")
    assert snapshot(place) == before


def test_the_shard_folder_of_an_hdf5_input_is_kept(place: Path) -> None:
    """An ipmix output read as input reads its shards: an output on one of them, or on another
    entry name that maps onto the same folder (``in.hdf5`` -> ``in.shards``), must not replace
    or clear them."""
    source = place / "in.h5"
    made = augment("--input", place / "data", "--mixing-set", place / "bank", "--out", source)
    assert made.returncode == 0, made.stderr
    before = snapshot(place)
    for out, needle in [
        (place / "in.shards" / "shard-00000.h5", "is part of the input"),
        (place / "in.hdf5", "belongs to"),
    ]:
        result = augment("--input", source, "--mixing-set", place / "bank", "--out", out,
                         "--overwrite")  # fmt: skip
        one_line_failure(result, "in.shards", needle)
        assert snapshot(place) == before


def test_export_keeps_its_input_too(place: Path) -> None:
    before = snapshot(place)
    for out in (place / "data/class0/0.png", place / "data/class0/new.png"):
        result = augment("--input", place / "data", "--out", out, "--overwrite", "--preset",
                         "cifar", command="export")  # fmt: skip
        one_line_failure(result, "input")
    assert snapshot(place) == before


def test_an_h5_output_inside_the_folder_input_still_works(place: Path) -> None:
    out = place / "data" / "class0" / "aug.h5"
    args = ["--input", place / "data", "--mixing-set", place / "bank", "--out", out]
    for extra in ([], ["--overwrite"], ["--resume"]):
        result = augment(*args, *extra)
        assert result.returncode == 0, (extra, result.stderr)


# --------------------------------------------------------------------------------------------
# a shard folder: the user's files in it, another entry's, a link


def test_files_of_the_users_in_the_shard_folder_need_overwrite(place: Path) -> None:
    shards = place / "out" / "x.shards"
    (shards / "sub").mkdir(parents=True)
    (shards / "notes.txt").write_text("keep")
    (shards / "sub" / "f").write_text("keep")
    args = ["--input", place / "data", "--mixing-set", place / "bank", "--out", place / "out/x.h5"]
    before = snapshot(place)
    for extra in ([], ["--dry-run"], ["--resume"]):
        one_line_failure(augment(*args, *extra), "x.shards", "notes.txt", "--overwrite")
        assert snapshot(place) == before, extra
    replaced = augment(*args, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert not (shards / "notes.txt").exists()


def test_a_shard_folder_of_another_entry_is_never_touched(place: Path) -> None:
    """``c.h5``, ``c.hdf5`` and ``c`` all name ``c.shards``: the second must not take it."""
    first = place / "out" / "c.h5"
    made = augment("--input", place / "data", "--mixing-set", place / "bank", "--out", first)
    assert made.returncode == 0, made.stderr
    before = snapshot(place)
    for name in ("c.hdf5", "c"):
        for extra in (["--overwrite"], ["--dry-run"], []):
            result = augment("--input", place / "x.npy", "--mixing-set", place / "bank",
                             "--out", place / "out" / name, *extra)  # fmt: skip
            line = one_line_failure(result, "c.shards", "belongs to", str(first))
            assert "--out" in line
            assert snapshot(place) == before, (name, extra)
    assert ipmix("verify", first).returncode == 0


def test_a_shard_folder_that_is_a_link_is_refused(place: Path) -> None:
    mine = place / "mine"
    mine.mkdir()
    (mine / "f").write_text("keep")
    (place / "out" / "s.shards").symlink_to(mine)
    before = snapshot(mine)
    args = ["--input", place / "data", "--mixing-set", place / "bank", "--out", place / "out/s.h5"]
    for extra in ([], ["--overwrite"], ["--dry-run"]):
        one_line_failure(augment(*args, *extra), "s.shards", "symbolic link")
    assert snapshot(mine) == before and sorted(os.listdir(mine)) == ["f"]


def test_an_entry_named_like_its_shard_folder_is_refused(place: Path) -> None:
    result = augment("--input", place / "data", "--mixing-set", place / "bank",
                     "--out", place / "out" / "e.shards")  # fmt: skip
    one_line_failure(result, "e.shards", "its own shard folder")
    assert os.listdir(place / "out") == []


# --------------------------------------------------------------------------------------------
# --dry-run refuses what the run refuses


def test_a_dry_run_refuses_what_the_run_refuses(place: Path) -> None:
    out = place / "out" / "d.h5"
    args = ["--input", place / "data", "--mixing-set", place / "bank", "--out", out]
    assert augment(*args).returncode == 0
    cases = [
        ([], "output exists"),
        (["--resume", "--seed", "7"], "seed"),
        (["--resume", "--copies", "2"], "copies"),
        (["--resume", "--k", "2"], "recipe options"),
        (["--overwrite", "--resume"], "choose one of"),
    ]
    before = snapshot(place)
    for extra, needle in cases:
        real = one_line_failure(augment(*args, *extra), needle)
        dry = one_line_failure(augment(*args, *extra, "--dry-run"), needle)
        assert dry == real
        assert snapshot(place) == before
    out.unlink()  # an interrupted run: finished shards, no entry file
    before = snapshot(place)
    for extra, needle in [([], "interrupted run"), (["--resume", "--seed", "7"], "resume")]:
        real = one_line_failure(augment(*args, *extra), needle)
        dry = one_line_failure(augment(*args, *extra, "--dry-run"), needle)
        assert dry == real
        assert snapshot(place) == before
    same = augment(*args, "--resume", "--dry-run")
    assert same.returncode == 0 and snapshot(place) == before, same.stderr


def test_a_dry_run_refuses_an_output_another_run_holds(place: Path) -> None:
    out = place / "out" / "held.h5"
    (place / "out" / "held.shards").mkdir()
    args = ["--input", place / "data", "--mixing-set", place / "bank", "--out", out]
    with exclusive_lock(place / "out" / "held.shards" / ".lock", out):
        one_line_failure(augment(*args, "--dry-run"), "another ipmix run", str(os.getpid()))
        one_line_failure(augment(*args), "another ipmix run", str(os.getpid()))
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# names that cannot be used are one line


def test_names_too_long_are_one_line(place: Path) -> None:
    data, bank = place / "data", place / "bank"
    long = "z" * 300
    cases = [
        (["--input", data, "--mixing-set", bank, "--out", place / "out" / ("z" * 250 + ".h5")],
         ".shards"),
        (["--input", data, "--mixing-set", bank, "--out", place / "out" / (long + ".h5")], long),
        (["--input", data, "--mixing-set", bank, "--out", place / "new" / long / "x.h5"], long),
        (["--input", data, "--mixing-set", bank, "--out", place / "new" / ("z" * 250 + ".h5")],
         ".shards"),
        (["--input", place / long, "--mixing-set", bank, "--out", place / "out/q.h5"], long),
        (["--input", data, "--mixing-set", place / long, "--out", place / "out/q.h5"], long),
        (["--input", place / "x.npy", "--labels", place / long, "--mixing-set", bank,
          "--out", place / "out/q.h5"], long),
    ]  # fmt: skip
    for args, needle in cases:
        for extra in ([], ["--dry-run"]):
            one_line_failure(augment(*args, *extra), needle, "too long")
    assert os.listdir(place / "out") == []
    assert not (place / "new").exists()  # no folder made before the name was found too long


def test_symlink_loops_are_one_line(place: Path) -> None:
    (place / "loopA").symlink_to("loopB")
    (place / "loopB").symlink_to("loopA")
    data, bank, loop, out = place / "data", place / "bank", place / "loopA", place / "out/q.h5"
    cases = [
        ["--input", data, "--mixing-set", bank, "--out", loop],
        ["--input", data, "--mixing-set", bank, "--out", loop / "x.h5"],
        ["--input", loop, "--mixing-set", bank, "--out", out],
        ["--input", data, "--mixing-set", loop, "--out", out],
        ["--input", place / "x.npy", "--labels", loop, "--mixing-set", bank, "--out", out],
    ]
    for args in cases:
        one_line_failure(augment(*args), "loopA", "symlink loop")
    assert os.listdir(place / "out") == []
