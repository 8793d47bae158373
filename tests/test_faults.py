"""Faults from outside: a full disk (a real small tmpfs, as root) and a parent killed under its
worker processes. One line and exit 1; resume gives the same bytes; no orphan outlives its
parent or puts a file under a final name after it died."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import (
    digest_tree,
    ipmix,
    mixing_folder,
    needs_root,
    one_line_failure,
    output_digest,
    small_npz,
    small_tmpfs,
)


@pytest.fixture()
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs: room for a few shards or images, then ENOSPC."""
    with small_tmpfs(tmp_path / "disk", "3m") as mount:
        yield mount


def grow(mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=256m", str(mount)], check=True)


@needs_root
@pytest.mark.parametrize("backend", ["threads", "loky", "one job"])
def test_full_disk_during_augment(tmp_path: Path, tiny_disk: Path, backend: str) -> None:
    """With "one job" the tasks run in the command's own process, and the commit thread writes
    each shard (deferred writes), so the full disk is met there."""
    data = small_npz(tmp_path / "d.npz", count=2000)
    mixing = mixing_folder(tmp_path / "mix")
    workers = ["--jobs", "1"] if backend == "one job" else ["--jobs", "2", "--backend", backend]
    args = ["--input", data, "--mixing-set", mixing, "--shard-size", "100", *workers,
            "--quiet"]  # fmt: skip
    out = tiny_disk / "out.h5"
    refused = ipmix("augment", *args, "--out", out)  # the estimate does not fit: no work
    one_line_failure(refused, "the output needs about", "MB free", "--no-space-check")
    assert not out.exists() and not out.with_suffix(".shards").exists()
    failed = ipmix("augment", *args, "--out", out, "--no-space-check")
    one_line_failure(failed, "no space left on device writing", "finished shards are kept",
                     "--resume")  # fmt: skip
    assert not out.exists()
    grow(tiny_disk)
    resumed = ipmix("augment", *args, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    reference = tmp_path / "reference" / "out.h5"  # same name, so the same entry file bytes
    assert ipmix("augment", *args, "--out", reference).returncode == 0
    assert output_digest(out) == output_digest(reference)


@needs_root
@pytest.mark.parametrize("image_format", ["png", "h5"])
def test_full_disk_during_a_bank(tmp_path: Path, tiny_disk: Path, image_format: str) -> None:
    args = ["--count", "300", "--size", "64", "--points", "3000", "--format", image_format,
            "--jobs", "2", "--quiet"]  # fmt: skip
    out = tiny_disk / "bank"
    failed = ipmix("fractals", "generate", "--out", out, *args, "--no-space-check")
    one_line_failure(failed, "no space left on device writing", "finished images are kept")
    grow(tiny_disk)
    resumed = ipmix("fractals", "generate", "--out", out, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    reference = tmp_path / "reference" / "bank"
    assert ipmix("fractals", "generate", "--out", reference, *args).returncode == 0
    assert digest_tree(out) == digest_tree(reference)


# --------------------------------------------------------------------------------------------
# orphans


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _finals(folder: Path, pattern: str) -> set[str]:
    return {p.name for p in folder.glob(pattern)} if folder.is_dir() else set()


@pytest.mark.parametrize("command", ["bank", "augment"])
def test_workers_die_with_their_killed_parent(tmp_path: Path, command: str) -> None:
    if command == "bank":
        out = tmp_path / "bank"
        args = ["fractals", "generate", "--out", out, "--count", "3000", "--size", "64",
                "--backend", "loky", "--jobs", "2", "--quiet"]  # fmt: skip
        finals, pattern = out / "fractals", "*.png"
    else:
        data = small_npz(tmp_path / "d.npz", count=6000)
        out = tmp_path / "out.h5"
        args = ["augment", "--input", data, "--mixing-set", mixing_folder(tmp_path / "mix"),
                "--out", out, "--shard-size", "64", "--jobs", "2", "--backend", "loky",
                "--quiet", "--jsd"]  # fmt: skip
        finals, pattern = out.with_suffix(".shards"), "shard-*.h5"
    parent = subprocess.Popen([sys.executable, "-m", "ipmix_cli", *map(str, args)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 180
    workers: list[int] = []
    while time.monotonic() < deadline and parent.poll() is None:
        workers = [c for c in _children(parent.pid) if "loky" in _cmdline(c)]
        if len(workers) >= 2 and _finals(finals, pattern):
            break
        time.sleep(0.05)
    assert parent.poll() is None and workers, "the run ended before it could be killed"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    killed_at = _finals(finals, pattern)
    time.sleep(2.0)  # a watchdog polls every 0.2 s
    assert [w for w in workers if _alive(w)] == []
    assert _finals(finals, pattern) == killed_at  # nothing committed after the parent died
    again = ipmix(*args, "--overwrite")  # an immediate rerun over the same output works
    assert again.returncode == 0, again.stderr


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_killed_worker_is_one_line_and_resume_completes(tmp_path: Path) -> None:
    """A loky worker killed mid-run (the OOM killer's SIGKILL): the command ends in one line
    saying so, exit 1, no traceback (was loky's 56-line TerminatedWorkerError); --resume then
    finishes with the bytes of an uninterrupted run."""
    data = small_npz(tmp_path / "d.npz", count=6000)
    args = ["augment", "--input", data, "--mixing-set", mixing_folder(tmp_path / "mix"),
            "--shard-size", "64", "--jobs", "2", "--backend", "loky", "--quiet"]  # fmt: skip
    out = tmp_path / "out.h5"
    shards = out.with_suffix(".shards")
    command = [sys.executable, "-m", "ipmix_cli", *map(str, args), "--out", str(out)]
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    workers: list[int] = []
    while time.monotonic() < deadline and parent.poll() is None:
        workers = [c for c in _children(parent.pid) if "loky" in _cmdline(c)]
        workers = [c for c in workers if "resource_tracker" not in _cmdline(c)]
        if workers and _finals(shards, "shard-*.h5"):
            break
        time.sleep(0.05)
    assert parent.poll() is None and workers, "the run ended before a worker could be killed"
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = parent.communicate(timeout=120)
    one_line_failure(subprocess.CompletedProcess([], parent.returncode, "", stderr),
                     "a worker process died", "--resume")  # fmt: skip
    resumed = ipmix(*args, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    reference = tmp_path / "reference" / "out.h5"
    assert ipmix(*args, "--out", reference).returncode == 0
    assert digest_tree(shards) == digest_tree(reference.with_suffix(".shards"))
