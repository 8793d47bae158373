"""What a user already has is safe: inputs are never removed, a finished output is never
replaced or mixed with another job's shards, two runs never write one output, and a failed
attempt blocks nothing. Real files, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hostile import (
    digest_tree,
    image_folder,
    ipmix,
    mixing_folder,
    one_line_failure,
    output_digest,
    small_npz,
)
from PIL import Image


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return small_npz(tmp_path / "data.npz")


@pytest.fixture()
def mixing(tmp_path: Path) -> Path:
    return mixing_folder(tmp_path / "mixing")


def augment(
    data: Path, mixing: Path, out: Path, *args: object, quiet: bool = True
) -> subprocess.CompletedProcess:
    """``quiet=False`` where the summary line is checked (``--quiet`` hides it)."""
    return ipmix("augment", "--input", data, "--mixing-set", mixing, "--out", out,
                 *(["--quiet"] if quiet else []), "--shard-size", "8", *args)  # fmt: skip


# --------------------------------------------------------------------------------------------
# inputs are sacred


def test_out_equal_to_the_input_is_refused_even_with_overwrite(
    tmp_path: Path, data: Path, mixing: Path
) -> None:
    before = digest_tree(data)
    one_line_failure(augment(data, mixing, data, "--overwrite"), "is part of this output")
    assert digest_tree(data) == before


def test_an_input_inside_the_shard_folder_is_never_removed(tmp_path: Path, mixing: Path) -> None:
    out = tmp_path / "out.h5"
    inside = out.with_suffix(".shards") / "data.npz"
    inside.parent.mkdir()
    small_npz(inside)
    before = digest_tree(inside)
    one_line_failure(augment(inside, mixing, out, "--overwrite"), "is part of this output")
    one_line_failure(augment(inside, mixing, out), "is part of this output")
    assert digest_tree(inside) == before
    data = small_npz(tmp_path / "d.npz")  # the mixing set inside the output: refused too
    mixing_inside = mixing_folder(out.with_suffix(".shards") / "mixing")
    one_line_failure(augment(data, mixing_inside, out, "--overwrite"), "is part of this output")
    assert len(list(mixing_inside.iterdir())) == 4


def test_an_output_inside_its_folder_input_does_not_become_input(tmp_path: Path) -> None:
    """The second run (and a resume) sees the same data set as the first: the output inside
    the input folder is skipped by the scan and its fingerprint."""
    root = image_folder(tmp_path / "photos", [(32, 32)] * 10)
    mixing = mixing_folder(tmp_path / "mix")
    for out in (root / "out.h5", root / "class0" / "nested.h5"):
        first = augment(root, mixing, out)
        assert first.returncode == 0, first.stderr
        again = augment(root, mixing, out, "--resume", quiet=False)  # same input: nothing to do
        assert again.returncode == 0 and "reused" in again.stdout, again.stdout + again.stderr
        reference = output_digest(out)
        redo = augment(root, mixing, out, "--overwrite", quiet=False)
        assert redo.returncode == 0, redo.stderr
        assert output_digest(out) == reference
        assert "10 images" in redo.stdout


# --------------------------------------------------------------------------------------------
# --resume continues the same job only


def test_resume_of_a_finished_output_with_other_options_is_refused(
    tmp_path: Path, data: Path, mixing: Path
) -> None:
    out = tmp_path / "out.h5"
    assert augment(data, mixing, out, "--seed", "1").returncode == 0
    before = output_digest(out)
    one_line_failure(augment(data, mixing, out, "--seed", "2", "--resume"), "seed", "--overwrite")
    one_line_failure(augment(data, mixing, out, "--copies", "2", "--resume"), "copies")
    assert output_digest(out) == before
    same = augment(data, mixing, out, "--seed", "1", "--resume")
    assert same.returncode == 0 and output_digest(out) == before


def test_resume_of_a_finished_output_from_a_changed_input_is_refused(
    tmp_path: Path, mixing: Path
) -> None:
    root = image_folder(tmp_path / "photos", [(32, 32)] * 6)
    out = tmp_path / "out.h5"
    assert augment(root, mixing, out).returncode == 0
    before = output_digest(out)
    first = sorted((root / "class0").iterdir())[0]
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(first)
    one_line_failure(augment(root, mixing, out, "--resume"), "input data", "--overwrite")
    assert output_digest(out) == before


def test_resume_with_a_corrupt_job_record_is_one_line(tmp_path: Path, mixing: Path) -> None:
    data = small_npz(tmp_path / "d.npz", count=5000)
    out = tmp_path / "out.h5"
    work = out.with_suffix(".shards") / ".work"
    process = subprocess.Popen(
        [sys.executable, "-m", "ipmix_cli", "augment", "--input", str(data), "--mixing-set",
         str(mixing), "--out", str(out), "--shard-size", "8", "--jobs", "1", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.with_suffix(".shards").glob("shard-*"))) < 3:
        time.sleep(0.01)
    process.send_signal(signal.SIGSTOP)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (work / "job.json").write_text("{not json")
    one_line_failure(
        augment(data, mixing, out, "--resume", "--jobs", "1"), "job.json", "--overwrite"
    )
    fresh = augment(data, mixing, out, "--overwrite")
    assert fresh.returncode == 0, fresh.stderr


# --------------------------------------------------------------------------------------------
# one job per output


def _start_long_run(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ipmix_cli", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for(path: Path, pattern: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if list(path.glob(pattern)):
            return
        time.sleep(0.01)
    raise AssertionError(f"no {pattern} in {path} (exit {process.poll()})")


@pytest.mark.parametrize("second", [["--resume"], ["--overwrite"], []])
def test_a_second_augment_of_the_same_output_is_refused(
    tmp_path: Path, mixing: Path, second: list[str]
) -> None:
    data = small_npz(tmp_path / "d.npz", count=3000)
    out = tmp_path / "out.h5"
    first = _start_long_run("augment", "--input", data, "--mixing-set", mixing, "--out", out,
                            "--shard-size", "16", "--jobs", "1", "--quiet")  # fmt: skip
    # (the first run is stopped with SIGSTOP while the second tries, then continued)
    try:
        _wait_for(out.with_suffix(".shards"), "shard-*.h5", first)
        first.send_signal(signal.SIGSTOP)  # still running, holding its lock, as long as we need
        result = augment(data, mixing, out, "--shard-size", "16", *second)
        first.send_signal(signal.SIGCONT)
        one_line_failure(result, "another ipmix run", f"pid {first.pid}")
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    done = ipmix("verify", out)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_second_bank_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "bank"
    first = _start_long_run("fractals", "generate", "--out", out, "--count", "400", "--size",
                            "64", "--jobs", "1", "--quiet")  # fmt: skip
    try:
        _wait_for(out / "fractals", "*.png", first)
        first.send_signal(signal.SIGSTOP)
        result = ipmix("fractals", "generate", "--out", out, "--count", "400", "--size", "64",
                       "--overwrite", "--quiet")  # fmt: skip
        first.send_signal(signal.SIGCONT)
        one_line_failure(result, "another ipmix run", f"pid {first.pid}")
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    assert len(list((out / "fractals").glob("*.png"))) == 400


# --------------------------------------------------------------------------------------------
# a failed attempt blocks nothing; --dry-run makes every check the real run makes


def test_a_wrong_size_folder_is_refused_before_any_work_naming_the_file(
    tmp_path: Path, mixing: Path
) -> None:
    root = image_folder(tmp_path / "photos", [(32, 32)] * 5 + [(64, 48)] + [(32, 32)] * 2)
    out = tmp_path / "out.h5"
    for extra in (["--dry-run"], [], ["--size", "32"]):
        refused = augment(root, mixing, out, "--resize", "exact", *extra)
        line = one_line_failure(refused, "64x48", "--resize center")
        assert line.startswith(f"Error: {root / 'class1' / '5.png'}:"), line
        assert "--size" not in line  # never suggest an option the user already gave
        assert not out.exists() and not out.with_suffix(".shards").exists()
    fixed = augment(root, mixing, out)  # the default resize takes it; no --overwrite needed
    assert fixed.returncode == 0, fixed.stderr


def test_an_attempt_that_committed_nothing_does_not_block_the_next(
    tmp_path: Path, data: Path, mixing: Path
) -> None:
    out = tmp_path / "out.h5"
    work = out.with_suffix(".shards") / ".work"
    work.mkdir(parents=True)  # what a run killed before its first shard leaves
    (work / "job.json").write_text(json.dumps({"seed": 99}))
    result = augment(data, mixing, out)
    assert result.returncode == 0, result.stderr
    assert ipmix("verify", out).returncode == 0


def test_an_interrupted_run_needs_resume_or_overwrite(tmp_path: Path, mixing: Path) -> None:
    data = small_npz(tmp_path / "d.npz", count=5000)
    out = tmp_path / "out.h5"
    run = _start_long_run("augment", "--input", data, "--mixing-set", mixing, "--out", out,
                          "--shard-size", "8", "--jobs", "1", "--quiet")  # fmt: skip
    _wait_for(out.with_suffix(".shards"), "shard-00002.h5", run)
    run.send_signal(signal.SIGSTOP)  # then kill: it must not get to write its entry file
    run.send_signal(signal.SIGKILL)
    run.wait()
    one_line_failure(augment(data, mixing, out), "interrupted run", "--resume", "--overwrite")
    resumed = augment(data, mixing, out, "--resume", quiet=False)
    assert resumed.returncode == 0 and "reused" in resumed.stdout, resumed.stderr


# --------------------------------------------------------------------------------------------
# every user error is one line


def test_a_shard_folder_that_is_a_file(tmp_path: Path, data: Path, mixing: Path) -> None:
    out = tmp_path / "out.h5"
    out.with_suffix(".shards").write_text("not a folder")
    for extra in ([], ["--overwrite"]):
        one_line_failure(augment(data, mixing, out, *extra), "exists and is not a folder")
    assert out.with_suffix(".shards").read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only tmpfs needs root")
def test_a_read_only_shard_folder_with_overwrite(tmp_path: Path, data: Path, mixing: Path) -> None:
    out = tmp_path / "out.h5"
    assert augment(data, mixing, out).returncode == 0
    shards = out.with_suffix(".shards")
    subprocess.run(["mount", "-o", "bind,ro", str(shards), str(shards)], check=True)
    try:
        line = one_line_failure(augment(data, mixing, out, "--overwrite"), str(shards))
        assert "cannot" in line or "Read-only" in line, line
    finally:
        subprocess.run(["umount", str(shards)], check=True)


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_seeds_outside_64_bits_are_refused(
    tmp_path: Path, data: Path, mixing: Path, seed: str
) -> None:
    result = augment(data, mixing, tmp_path / "o.h5", "--seed", seed)
    assert result.returncode == 2 and "Invalid value for '--seed'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o.h5").exists()
    bank = ipmix("fractals", "generate", "--out", tmp_path / "b", "--seed", seed)
    assert bank.returncode == 2 and "Invalid value for '--seed'" in bank.stderr
