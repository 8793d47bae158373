"""Named pipes, devices and the like where files are expected: opening a pipe for reading
waits for a writer that never comes, so each place that reads inputs (the folder scan, the
decoder, the mixing set's fingerprint, the read-ahead thread, format detection) must refuse
it at once, in one line naming it, instead of hanging."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path

import h5py
import pytest
from hostile import image_folder, ipmix, mixing_folder, one_line_failure

from ipmix_cli.errors import DecodeError, ShardError
from ipmix_cli.fs.digest_cache import sha256_file
from ipmix_cli.fs.readahead import ReadAhead, advise
from ipmix_cli.fs.regular import NotRegularFileError, kind_of, read_regular
from ipmix_cli.shards import check_output
from ipmix_cli.sources.decode import decode_image
from ipmix_cli.sources.headers import probe_image

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")


def pipe(path: Path) -> Path:
    os.mkfifo(path)
    return path


def finishes(call, *args, seconds: float = 5.0) -> bool:
    """Whether ``call(*args)`` returns within ``seconds`` (a hang must fail the test, not
    stall the suite)."""
    worker = threading.Thread(target=call, args=args, daemon=True)
    worker.start()
    worker.join(seconds)
    return not worker.is_alive()


def raised(call, *args, seconds: float = 5.0) -> BaseException | None:
    """What ``call(*args)`` raised (None if it returned), failing the test if it hangs."""
    box: list[BaseException | None] = [None]

    def run() -> None:
        try:
            call(*args)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            box[0] = error

    assert finishes(run, seconds=seconds), f"{call.__name__} hung"
    return box[0]


def release(fifo: Path) -> None:
    """Let a reader stuck opening ``fifo`` go (a writer appears and leaves)."""
    with contextlib.suppress(OSError):  # nobody waiting
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_kinds_and_the_regular_read(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"abc" * 1000)
    fifo = pipe(tmp_path / "p.jpg")
    assert read_regular(tmp_path / "f.bin") == b"abc" * 1000
    assert kind_of(os.stat(tmp_path).st_mode) == "a folder"
    assert kind_of(os.stat(fifo).st_mode) == "a named pipe (FIFO)"
    assert kind_of(os.stat(os.devnull).st_mode) == "a character device"
    assert kind_of(stat.S_IFSOCK) == "a socket" and kind_of(stat.S_IFBLK) == "a block device"
    try:
        for special in (fifo, Path(os.devnull), tmp_path):
            error = raised(read_regular, special)
            assert isinstance(error, NotRegularFileError) and "not a regular file" in str(error)
        for reader in (decode_image, probe_image):  # the decoder and the scan's header check
            error = raised(reader, str(fifo))
            assert isinstance(error, DecodeError), error
            assert "a named pipe (FIFO), not an image file" in str(error)
        assert isinstance(raised(sha256_file, fifo), NotRegularFileError)
    finally:
        release(fifo)


def test_a_pipe_in_an_image_folder_fails_in_one_line_or_is_skipped(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "data", [(40, 40)] * 6)
    fifo = pipe(folder / "class0" / "stray.png")
    bank = mixing_folder(tmp_path / "bank")
    out = tmp_path / "out.h5"
    try:
        args = ("augment", "--input", folder, "--out", out, "--mixing-set", bank, "--quiet")
        failed = ipmix(*args, "--preset", "cifar", "--size", "32", timeout=120)
        one_line_failure(failed, "stray.png", "named pipe (FIFO), not an image file")
        assert not out.exists() and not out.with_suffix(".shards").exists()
        skipped = ipmix(*args, "--preset", "cifar", "--size", "32", "--on-error", "skip")
        assert skipped.returncode == 0, skipped.stderr[-2000:]
        assert "stray.png" in skipped.stderr
        with h5py.File(out) as f:
            assert f["images"].shape[0] == 6
    finally:
        release(fifo)


def test_a_pipe_in_the_mixing_set_fails_in_one_line(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "data", [(32, 32)] * 4)
    bank = mixing_folder(tmp_path / "bank")
    fifo = pipe(bank / "99.png")
    out = tmp_path / "out.h5"
    try:
        result = ipmix(
            "augment", "--input", folder, "--out", out, "--mixing-set", bank,
            "--preset", "cifar", "--quiet", timeout=120,
        )  # fmt: skip
        one_line_failure(result, "99.png", "named pipe (FIFO)")
        assert not out.exists()
    finally:
        release(fifo)


def test_a_mixing_set_that_is_a_pipe_or_a_device(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "data", [(32, 32)] * 4)
    fifo = pipe(tmp_path / "bank")
    try:
        kinds = ((fifo, "a named pipe (FIFO)"), (Path(os.devnull), "a character device"))
        for given, kind in kinds:
            result = ipmix(
                "augment", "--input", folder, "--out", tmp_path / "o.h5", "--mixing-set", given,
                "--preset", "cifar", "--quiet", timeout=120,
            )  # fmt: skip
            one_line_failure(result, str(given), f"{kind}, not a mixing set folder or HDF5 bank")
    finally:
        release(fifo)


def test_an_input_that_is_a_pipe_or_a_device(tmp_path: Path) -> None:
    bank = mixing_folder(tmp_path / "bank")
    fifo = pipe(tmp_path / "data")
    try:
        for given, extra, needle in (
            (fifo, (), "a named pipe (FIFO), not a data set file or folder"),
            (Path(os.devnull), (), "a character device, not a data set file or folder"),
            (fifo, ("--input-format", "npz"), "needs a file, this is a named pipe (FIFO)"),
            (fifo, ("--input-format", "folder"), "needs a folder, this is a named pipe (FIFO)"),
        ):
            result = ipmix(
                "augment", "--input", given, "--out", tmp_path / "o.h5", "--mixing-set", bank,
                *extra, timeout=120,
            )  # fmt: skip
            one_line_failure(result, str(given), needle)
    finally:
        release(fifo)


def test_read_ahead_passes_over_pipes(tmp_path: Path) -> None:
    fifo = pipe(tmp_path / "p.jpg")
    (tmp_path / "f.jpg").write_bytes(b"x" * 4096)
    try:
        assert finishes(advise, str(fifo))
        ahead = ReadAhead([str(fifo), str(tmp_path / "f.jpg")], depth=4)
        assert finishes(ahead.close)
    finally:
        release(fifo)


def test_an_output_entry_that_is_a_pipe_or_a_device(tmp_path: Path) -> None:
    """``verify``, ``inspect`` and ``preview`` open the entry file with HDF5, which would wait
    on a pipe for ever; readers check the entry through the same function."""
    fifo = pipe(tmp_path / "out.h5")
    try:
        for given, kind in (
            (fifo, "a named pipe (FIFO)"),
            (Path(os.devnull), "a character device"),
        ):
            for command in (("verify",), ("inspect",), ("preview", "--out", tmp_path / "p.png")):
                result = ipmix(command[0], given, *command[1:], timeout=60)
                one_line_failure(result, str(given), f"{kind}, not an output entry file")
            error = raised(check_output, given)
            assert isinstance(error, ShardError) and kind in str(error), error
        assert not (tmp_path / "p.png").exists()
        error = raised(check_output, tmp_path / "absent.h5")
        assert isinstance(error, ShardError) and "does not exist" in str(error), error
    finally:
        release(fifo)
