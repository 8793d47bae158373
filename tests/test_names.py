"""Every name works or is refused before any work: output names HDF5 reads specially ('%'),
names that are not UTF-8, odd class folder names; and verify checks what plain h5py sees."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile import image_folder, ipmix, mixing_folder, one_line_failure, small_npz
from PIL import Image

from ipmix_cli.readers import ShardReader
from ipmix_cli.shards import entry as entry_module
from ipmix_cli.shards import shard_path, verify, write_entry, write_shard


@pytest.mark.parametrize("name", ["100%.h5", "a%b.h5", "%s%d%%.h5", "with space é.h5", "x%b%%b.h5"])
def test_odd_output_names_work_for_plain_h5py_too(tmp_path: Path, name: str) -> None:
    data, mixing = small_npz(tmp_path / "d.npz", count=24), mixing_folder(tmp_path / "mix")
    out = tmp_path / name
    result = ipmix("augment", "--input", data, "--mixing-set", mixing, "--out", out,
                   "--shard-size", "10", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    reader = ShardReader(out)
    with h5py.File(out, "r") as f:  # what a reader without ipmix gets
        labels = f["labels"][()]
        images = f["images"][()]
    assert (labels >= 0).all() and np.array_equal(labels, reader.labels)
    assert np.array_equal(images, reader.read_batch(np.arange(len(reader)))[0])
    checked = ipmix("verify", out)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_verify_sees_what_plain_h5py_sees(tmp_path: Path, monkeypatch) -> None:
    """An entry written without escaping '%' (the old bug): every shard is fine, but plain h5py
    reads label -1 and zeros through the entry. verify must say so."""
    entry = tmp_path / "a%%b.h5"  # unescaped, HDF5 reads the source name as "a%b.shards/..."
    arrays = {
        "images": np.full((3, 8, 8, 3), 7, np.uint8),
        "labels": np.array([0, 1, 2]),
        "source_index": np.arange(3),
        "copy_index": np.zeros(3, np.int64),
    }
    info = write_shard(shard_path(entry, 0), arrays)
    monkeypatch.setattr(entry_module, "vds_file_name", lambda name: name)  # no escaping
    write_entry(entry, [info], {})
    monkeypatch.undo()
    with h5py.File(entry, "r") as f:
        assert (f["labels"][()] == -1).all()  # the silent failure
    report = verify(entry)
    assert not report.ok
    assert any("plain HDF5 readers do not reach" in f or "do not map" in f for f in report.faults)


def test_an_output_name_that_is_not_utf8_is_refused_before_any_work(tmp_path: Path) -> None:
    data, mixing = small_npz(tmp_path / "d.npz"), mixing_folder(tmp_path / "mix")
    out = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.h5")
    line = one_line_failure(
        ipmix("augment", "--input", data, "--mixing-set", mixing, "--out", out),
        "not valid UTF-8",
    )
    assert "--out" in line
    assert sorted(os.listdir(tmp_path)) == ["d.npz", "mix"]  # nothing was created


def test_class_folders_that_are_not_utf8(tmp_path: Path) -> None:
    """Folder names that are bytes, not text: the job runs, the manifest keeps the exact names
    (JSON escapes), plain HDF5 gets a readable escaped form, and verify is happy."""
    root = tmp_path / "photos"
    names = [b"caf\xe9", b"ok", b"\xff\xfe"]
    rng = np.random.default_rng(3)
    for raw in names:
        folder = os.fsencode(root) + b"/" + raw
        os.makedirs(folder)
        for i in range(3):
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(image).save(os.fsdecode(folder + f"/{i}.png".encode()))
    out = tmp_path / "out.h5"
    result = ipmix("augment", "--input", root, "--mixing-set", mixing_folder(tmp_path / "mix"),
                   "--out", out, "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = sorted(os.fsdecode(raw) for raw in names)
    assert ShardReader(out).class_names == expected
    with h5py.File(out, "r") as f:
        stored = [n.decode("utf-8") for n in f["ipmix/class_names"][()]]
        manifest = json.loads(f["ipmix/manifest"][()])
    assert stored == [n.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                      for n in expected]  # fmt: skip
    assert "caf\\xe9" in stored and manifest["class_names"] == expected
    checked = ipmix("verify", out)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_file_name_with_a_newline_is_named_on_one_line(tmp_path: Path) -> None:
    """``bad<newline>name.png`` that is not an image: the one-line error shows the name with its
    newline escaped (the line still says which file it is); with ``--on-error skip`` the
    warning is one line too."""
    root = image_folder(tmp_path / "photos", [(32, 32)] * 4)
    (root / "class0" / "bad\nname.png").write_bytes(b"not a picture")
    args = ["augment", "--input", root, "--mixing-set", mixing_folder(tmp_path / "mix")]
    failed = ipmix(*args, "--out", tmp_path / "a.h5", "--quiet")
    line = one_line_failure(failed, "bad\\nname.png", "not an image")
    assert str(root / "class0") in line
    skipped = ipmix(*args, "--out", tmp_path / "b.h5", "--quiet", "--on-error", "skip")
    assert skipped.returncode == 0, skipped.stderr
    warnings = [line for line in skipped.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and "bad\\nname.png" in warnings[0], skipped.stderr
