"""Large files written past the page cache (``O_DIRECT``): the same bytes as a buffered write,
whatever the pieces' sizes against the bounce buffer; the ordinary write where the file system
refuses it (tmpfs); a full disk still one line; shards the same with it on or off."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hostile import ipmix, mixing_folder, one_line_failure, output_digest, small_npz
from page_cache import needs_fincore, resident_bytes

from ipmix_cli.fs import direct_io
from ipmix_cli.fs.atomic import write_new_file

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a file system needs root")
Mount = Callable[[str, int], Path]
"""Mounts a file system of a kind ("tmpfs", "ext4") and a size in MB for the test."""
FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def pieces_of(sizes: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size, dtype=np.uint8) for size in sizes]


def joined(pieces: list[np.ndarray]) -> bytes:
    return b"".join(piece.tobytes() for piece in pieces)


def direct_fd(path: Path) -> int:
    fd = direct_io.open_direct(path, FLAGS)
    if fd is None:
        pytest.skip(f"{path.parent} does not take O_DIRECT")
    return fd


@pytest.mark.parametrize(
    "sizes",
    [
        [1, 8191, 8192, 8193, 20000, 3],  # across the 8 KiB bounce buffer's edges
        [8192, 8192, 8192],  # ends on a block: nothing to pad or cut
        [4096 * 5 + 17],  # one piece, several buffers, a tail to pad
        [0, 5, 0],  # empty pieces
        [],  # an empty file
    ],
)
def test_direct_write_holds_the_pieces_in_order(tmp_path: Path, sizes: list[int]) -> None:
    path = tmp_path / "f.bin"
    pieces = pieces_of(sizes)
    fd = direct_fd(path)
    try:
        assert direct_io.write_direct(fd, [memoryview(p) for p in pieces], bounce_bytes=8192)
    finally:
        os.close(fd)
    assert path.stat().st_size == sum(sizes)
    assert path.read_bytes() == joined(pieces)


def test_bounce_size_must_be_aligned(tmp_path: Path) -> None:
    fd = direct_fd(tmp_path / "f.bin")
    try:
        with pytest.raises(ValueError, match="multiple of 4096"):
            direct_io.write_direct(fd, [memoryview(b"x")], bounce_bytes=5000)
    finally:
        os.close(fd)


@needs_fincore
@pytest.mark.parametrize("setting", ["on", "off"])
def test_large_files_skip_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    """fincore counts a file's pages held in memory: none after a direct write, all after a
    buffered one (``IPMIX_DIRECT_IO=off``); the bytes are the same."""
    os.close(direct_fd(tmp_path / "probe"))
    monkeypatch.setenv("IPMIX_DIRECT_IO", setting)
    pieces = pieces_of([3000, direct_io.THRESHOLD, 12345], seed=2)
    path = tmp_path / "big.bin"
    write_new_file(path, pieces)
    assert path.read_bytes() == joined(pieces)  # reading brings pages in: count a twin
    twin = tmp_path / "twin.bin"
    write_new_file(twin, pieces)
    resident = resident_bytes(twin)
    if setting == "on":
        assert resident == 0
    else:
        assert resident >= direct_io.THRESHOLD


@needs_fincore
def test_small_files_stay_buffered(tmp_path: Path) -> None:
    """Under the threshold nothing is opened with O_DIRECT: the page cache keeps the file."""
    os.close(direct_fd(tmp_path / "probe"))
    path = tmp_path / "small.bin"
    pieces = pieces_of([direct_io.THRESHOLD - 1])
    write_new_file(path, pieces)
    assert resident_bytes(path) >= direct_io.THRESHOLD - 4096


@pytest.fixture()
def mounted(tmp_path: Path) -> Iterator[Mount]:
    mounts: list[Path] = []

    def mount(kind: str, megabytes: int) -> Path:
        target = tmp_path / f"{kind}-{len(mounts)}"
        target.mkdir()
        if kind == "tmpfs":
            command = ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(target)]
        else:
            if shutil.which("mkfs.ext4") is None:
                pytest.skip("needs mkfs.ext4")
            image = tmp_path / f"{target.name}.img"
            with image.open("wb") as f:
                f.truncate(megabytes << 20)
            subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
            command = ["mount", "-o", "loop", str(image), str(target)]
        if subprocess.run(command, capture_output=True).returncode != 0:
            pytest.skip(f"cannot mount a {kind} here")
        mounts.append(target)
        return target

    yield mount
    for target in mounts:
        subprocess.run(["umount", "-l", str(target)], check=False)


@needs_root
def test_tmpfs_gets_the_ordinary_write(mounted: Mount) -> None:
    """Not a local disk's file system: no O_DIRECT (tmpfs takes it from Linux 6.6 on, for
    nothing), the same bytes."""
    disk = mounted("tmpfs", 64)
    assert direct_io.file_system_type(disk) == "tmpfs"
    assert direct_io.open_direct(disk / "probe", FLAGS) is None
    assert not (disk / "probe").exists()
    pieces = pieces_of([7, direct_io.THRESHOLD + 3])
    write_new_file(disk / "f.bin", pieces)
    assert (disk / "f.bin").read_bytes() == joined(pieces)


@pytest.mark.skipif(shutil.which("findmnt") is None, reason="needs util-linux's findmnt")
def test_file_system_type_is_what_findmnt_says(tmp_path: Path) -> None:
    for folder in (tmp_path, Path("/proc"), Path("/dev")):
        listed = subprocess.run(
            ["findmnt", "--noheadings", "--output", "FSTYPE", "--target", str(folder)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[0]
        assert direct_io.file_system_type(folder) == listed
    assert direct_io.file_system_type(tmp_path / "missing") is None


def test_without_o_direct_the_ordinary_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the platform has no O_DIRECT (macOS) or the user turned it off."""
    for remove, setting in ((True, "on"), (False, "off")):
        with monkeypatch.context() as patch:
            if remove:
                patch.delattr(os, "O_DIRECT", raising=False)
            patch.setenv("IPMIX_DIRECT_IO", setting)
            path = tmp_path / f"{setting}.bin"
            assert direct_io.open_direct(path, FLAGS) is None
            assert not path.exists()
            pieces = pieces_of([direct_io.THRESHOLD + 5])
            write_new_file(path, pieces)
            assert path.read_bytes() == joined(pieces)


@needs_root
def test_full_ext4_disk_is_enospc_and_leaves_nothing(mounted: Mount) -> None:
    disk = mounted("ext4", 16)
    assert direct_io.file_system_type(disk) == "ext4"
    os.close(direct_fd(disk / "probe"))
    (disk / "probe").unlink()
    with pytest.raises(OSError) as raised:
        write_new_file(disk / "big.bin", pieces_of([30 << 20]))
    assert raised.value.errno == errno.ENOSPC
    assert sorted(p.name for p in disk.iterdir()) == ["lost+found"]


@needs_root
def test_augment_on_a_full_ext4_disk_is_one_line(tmp_path: Path, mounted: Mount) -> None:
    """Shards of ~6 MB (over the threshold: written direct) onto 16 MB: one line, no entry."""
    disk = mounted("ext4", 16)
    data = small_npz(tmp_path / "d.npz", count=6000)
    args = ["--input", data, "--mixing-set", mixing_folder(tmp_path / "mix"), "--jobs", "1",
            "--shard-size", "2000", "--quiet", "--no-space-check"]  # fmt: skip
    failed = ipmix("augment", *args, "--out", disk / "out.h5")
    one_line_failure(failed, "no space left on device writing", "--resume")
    assert not (disk / "out.h5").exists()
    leftovers = [p.name for p in (disk / "out.shards").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_shards_are_the_same_bytes_direct_or_not(tmp_path: Path) -> None:
    data = small_npz(tmp_path / "d.npz", count=3000)
    args = ["--input", data, "--mixing-set", mixing_folder(tmp_path / "mix"), "--jobs", "1",
            "--quiet"]  # fmt: skip
    digests = {}
    for setting in ("on", "off"):
        out = tmp_path / setting / "out.h5"
        done = ipmix("augment", *args, "--out", out, IPMIX_DIRECT_IO=setting)
        assert done.returncode == 0, done.stderr
        digests[setting] = output_digest(out)
    assert digests["on"] == digests["off"]
    shard = next((tmp_path / "on" / "out.shards").rglob("*.h5"))
    assert shard.stat().st_size >= direct_io.THRESHOLD  # the direct path was taken
