"""An input changed while the job reads it leaves the output unfinished, in one line.

A real run in a child process; the input is rewritten in place (``np.savez`` over the same
path, which the job's memory map then shows) or a picture of a folder is replaced, once the
first shards exist."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from hostile import image_folder, mixing_folder, one_line_failure, small_npz
from interrupts import wait_for_shards
from PIL import Image


def _run_and_change(args: list, shards: Path, change) -> subprocess.CompletedProcess:
    process = subprocess.Popen(
        [sys.executable, "-m", "ipmix_cli", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for_shards(shards, 1, process) >= 1
        assert process.poll() is None, "the run ended before the input could change"
        change()
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(args, process.returncode, "", stderr)


def test_an_npz_rewritten_in_place_mid_run(tmp_path: Path) -> None:
    data = small_npz(tmp_path / "in.npz", count=2000)
    out = tmp_path / "out.h5"
    args = ["augment", "--input", data, "--mixing-set", mixing_folder(tmp_path / "mix"),
            "--out", out, "--copies", "20", "--shard-size", "500", "--jobs", "2",
            "--quiet"]  # fmt: skip

    def rewrite() -> None:
        with np.load(data) as old:
            images, labels = 255 - old["images"], old["labels"]
        np.savez(data, images=images, labels=labels)  # the same file, rewritten

    result = _run_and_change(args, out.with_suffix(".shards"), rewrite)
    # the job's own check, or a read that came back short (before, a SIGBUS: exit -7)
    one_line_failure(result, str(data), "changed while")
    assert not out.exists()  # no entry: the output is visibly unfinished


def test_a_picture_replaced_mid_run(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "photos", [(32, 32)] * 200)
    out = tmp_path / "out.h5"
    args = ["augment", "--input", root, "--mixing-set", mixing_folder(tmp_path / "mix"),
            "--out", out, "--copies", "60", "--shard-size", "200", "--jobs", "2",
            "--quiet"]  # fmt: skip
    victim = root / "class1" / "199.png"

    def replace() -> None:
        fresh = tmp_path / "new.png"
        Image.new("RGB", (32, 32)).save(fresh)
        os.replace(fresh, victim)
        time.sleep(0.01)

    result = _run_and_change(args, out.with_suffix(".shards"), replace)
    one_line_failure(result, str(victim), "changed while the job read it")
    assert not out.exists()
