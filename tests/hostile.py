"""Shared by the tests that use ipmix as a careless or hostile user would: real processes, a
check that a failure is one line with no traceback, and byte digests of whole outputs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def ipmix(*args: object, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """``python -m ipmix_cli ARGS`` as a real child process (what a user's terminal runs)."""
    return subprocess.run(
        [sys.executable, "-m", "ipmix_cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


def one_line_failure(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert the run failed with exit 1 and exactly one line on stderr, no traceback, holding
    every needle; return that line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def digest_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (or of ``root`` itself), keyed by relative path."""
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def output_digest(entry: Path) -> dict[str, str]:
    """Digest of an augment output: its entry file and its shard folder."""
    return {**digest_tree(entry), **digest_tree(entry.with_suffix(".shards"))}


def small_npz(path: Path, count: int = 40, seed: int = 0, size: int = 32) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        images=rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8),
        labels=rng.integers(0, 4, count),
    )
    return path


def mixing_folder(path: Path, count: int = 4, seed: int = 1) -> Path:
    """A tiny mixing set: a folder of PNG pictures (no fractal rendering needed)."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        picture = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(picture).save(path / f"{i:02d}.png")
    return path


def image_folder(root: Path, sizes: list[tuple[int, int]], classes: int = 2) -> Path:
    """``root/<class>/<i>.png`` with one image per size given."""
    rng = np.random.default_rng(7)
    for i, (h, w) in enumerate(sizes):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="a full disk is a small tmpfs mounted for the test, which needs root"
)
"""For the full-disk tests: mounting :func:`small_tmpfs` needs root."""


@contextmanager
def small_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (``"1m"``, ``"3m"``) at ``mount`` for a full-disk test (needs
    root), unmounted afterwards whatever the test left on it."""
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path) -> None:
    """Leave (almost) no free byte on ``mount`` (one file, ``fill``, takes it all)."""
    fd = os.open(mount / "fill", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)
