"""Inputs a careless or hostile user can hand ipmix, refused in one line naming the file, before
any work: a decompression bomb in an image folder (scan cache or not), class names that are not
UTF-8, a forced ``--input-format`` that does not match the file, an HDF5 mixing set or input
whose virtual data is not all there, ``--labels`` for an input that holds its own labels, labels
too large for int64, and names too long for the file system. Real files, the real CLI."""

from __future__ import annotations

import errno
import pickle
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hostile import ipmix, mixing_folder, one_line_failure
from PIL import Image

from ipmix_cli.cli import main
from ipmix_cli.errors import DecodeError, IpmixError, SourceError
from ipmix_cli.fs import scan_cache
from ipmix_cli.sources import open_mixing_set, open_source
from ipmix_cli.sources.decode import decode_image
from ipmix_cli.sources.headers import probe_image

RNG = np.random.default_rng(11)
BOMB_SIDE = 100_000  # 10**10 pixels: far over Pillow's limit, in a 400-byte file


def run_cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def one_line(code: int, output: str, *needles: str) -> str:
    """The CLI failed (exit 1) with one line, no traceback, holding every needle."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 1, (code, output[-2000:])
    assert len(lines) == 1 and "Traceback" not in output, output[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def bomb_png(path: Path, side: int = BOMB_SIDE) -> Path:
    """A valid PNG whose header declares side x side RGB pixels; one row of data follows."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (side * 3 + 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )
    return path


def image_folder(root: Path, count: int = 4) -> Path:
    for i in range(count):
        folder = root / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def small_npz(path: Path, count: int = 4, **extra: np.ndarray) -> Path:
    images = RNG.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    np.savez(path, images=images, labels=np.arange(count) % 2, **extra)
    return path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny mixing set of PNG pictures."""
    return mixing_folder(tmp_path_factory.mktemp("mixing") / "bank")


# --------------------------------------------------------------------------------------------
# Decompression bombs: refused by the scan, from the header, cache or not
# --------------------------------------------------------------------------------------------


def test_the_scan_refuses_a_decompression_bomb_before_any_work(
    tmp_path: Path, pictures: Path
) -> None:
    data = image_folder(tmp_path / "data")
    bomb_png(data / "c1" / "zz.png")
    out = tmp_path / "out" / "b.h5"
    code, output = run_cli(
        "augment", "--input", data, "--mixing-set", pictures, "--out", out,
        "--shard-size", "1", "--jobs", "1", "--quiet",
    )  # fmt: skip
    line = one_line(code, output, "zz.png", "too large", f"{BOMB_SIDE}x{BOMB_SIDE}")
    assert "header passed the scan" not in line  # the scan, not a worker, refused it
    assert not out.exists() and not out.with_suffix(".shards").exists()


def _jpeg_header(height: int, width: int) -> bytes:
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


def _gif_header(height: int, width: int) -> bytes:
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + image + b"\x3b"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bomb.png", None),
        ("bomb.jpg", _jpeg_header(65535, 65535)),  # the scan's own JPEG parser
        ("bomb.gif", _gif_header(65535, 65535)),  # Pillow's lazy open
    ],
)
def test_the_header_check_refuses_what_the_decoder_would(
    tmp_path: Path, name: str, content: bytes | None
) -> None:
    path = tmp_path / name
    if content is None:
        bomb_png(path)
    else:
        path.write_bytes(content)
    with pytest.raises(DecodeError) as info:
        probe_image(str(path))
    assert "too large" in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_the_limit_is_the_decoders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan takes exactly what the decoder takes: Pillow's hard limit, 2 * MAX."""
    picture = tmp_path / "p.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(picture)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # hard limit 100: 10x10 passes
    assert probe_image(str(picture)).height == 10
    decode_image(picture)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 49)  # hard limit 98: both refuse
    with pytest.raises(DecodeError, match="too large"):
        probe_image(str(picture))
    with pytest.raises(DecodeError, match="too large"):
        decode_image(picture)


def test_a_remembered_bomb_is_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan-cache record of a bomb (written under a higher limit, or before the scan refused
    bombs) must not let it through: the file is checked again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("IPMIX_SCAN_CACHE", raising=False)
    monkeypatch.setattr(scan_cache, "SETTLED_S", 0.0)
    data = image_folder(tmp_path / "data")
    bomb = bomb_png(data / "c1" / "zz.png")
    with monkeypatch.context() as raised:
        raised.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_SIDE**2)
        assert len(open_source(data)) == 5  # accepted, and remembered
    records = scan_cache.load_records(str(data)).lookup(["c1/zz.png"])
    assert records["c1/zz.png"][1:3] == (BOMB_SIDE, BOMB_SIDE)
    with pytest.raises(DecodeError) as info:
        open_source(data)
    assert str(bomb) in str(info.value) and "too large" in str(info.value)


def test_a_plain_png_decodes_with_the_limit_switched_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ipmix_cli.bank.png import encode_bank_png

    picture = RNG.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    np.testing.assert_array_equal(decode_image(encode_bank_png(picture)), picture)


# --------------------------------------------------------------------------------------------
# Class names that are not UTF-8
# --------------------------------------------------------------------------------------------


def _cifar10(root: Path, names: list[bytes]) -> Path:
    root.mkdir()
    for k in range(1, 6):
        batch = {
            b"data": RNG.integers(0, 256, (2, 3 * 32 * 32), dtype=np.uint8),
            b"labels": [0, 1],
        }
        (root / f"data_batch_{k}").write_bytes(pickle.dumps(batch))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return root


def test_cifar_class_names_that_are_not_utf8(tmp_path: Path, pictures: Path) -> None:
    cif = _cifar10(tmp_path / "cif", [b"\xff", b"b"])
    code, output = run_cli(
        "augment", "--input", cif, "--mixing-set", pictures, "--out", tmp_path / "o.h5",
        "--jobs", "1", "--quiet",
    )  # fmt: skip
    one_line(code, output, str(cif / "batches.meta"), "UTF-8")


def test_npy_class_names_file_that_is_not_utf8(tmp_path: Path, pictures: Path) -> None:
    images = tmp_path / "y.npy"
    np.save(images, RNG.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    np.save(tmp_path / "y_labels.npy", np.arange(4) % 2)
    names = tmp_path / "y_class_names.txt"
    names.write_bytes(b"cat\n\xffdog\n")
    code, output = run_cli(
        "augment", "--input", images, "--mixing-set", pictures, "--out", tmp_path / "o.h5",
        "--jobs", "1", "--quiet",
    )  # fmt: skip
    one_line(code, output, str(names), "UTF-8", "line 2")


def test_npz_and_hdf5_class_names_that_are_not_utf8(tmp_path: Path) -> None:
    npz = small_npz(tmp_path / "z.npz", class_names=np.array([b"\xff", b"b"]))
    with pytest.raises(SourceError) as info:
        open_source(npz)
    assert str(npz) in str(info.value) and "UTF-8" in str(info.value)
    h5 = tmp_path / "z.h5"
    with h5py.File(h5, "w") as f:
        f["images"] = np.zeros((2, 4, 4, 3), np.uint8)
        f["labels"] = np.array([0, 1])
        f.attrs["class_names"] = np.array([b"\xff", b"b"])
    with pytest.raises(SourceError) as info:
        open_source(h5)
    assert str(h5) in str(info.value) and "UTF-8" in str(info.value)


# --------------------------------------------------------------------------------------------
# A forced --input-format that does not match the file
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def three_formats(tmp_path: Path) -> dict[str, Path]:
    npy = tmp_path / "x.npy"
    np.save(npy, RNG.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    np.save(tmp_path / "x_labels.npy", np.arange(4) % 2)
    h5 = tmp_path / "h.h5"
    with h5py.File(h5, "w") as f:
        f["images"] = np.zeros((4, 32, 32, 3), np.uint8)
        f["labels"] = np.arange(4) % 2
    return {"npy": npy, "npz": small_npz(tmp_path / "z.npz"), "hdf5": h5}


@pytest.mark.parametrize(
    ("given", "forced", "words"),
    [
        ("npy", "npz", ("not a valid .npz file", "an .npy array")),
        ("npz", "npy", ("not a valid .npy file", "zip archive")),
        ("hdf5", "npz", ("not a valid .npz file", "an HDF5 file")),
        ("npz", "hdf5", ("not a valid HDF5 file", "zip archive")),
    ],
)
def test_a_forced_format_that_does_not_match(
    three_formats: dict[str, Path], pictures: Path, given: str, forced: str, words: tuple
) -> None:
    path = three_formats[given]
    code, output = run_cli(
        "augment", "--input", path, "--input-format", forced, "--mixing-set", pictures,
        "--out", path.parent / "o.h5", "--jobs", "1", "--quiet",
    )  # fmt: skip
    one_line(code, output, str(path), *words)


def test_labels_that_are_not_an_npy_file(three_formats: dict[str, Path]) -> None:
    with pytest.raises(SourceError) as info:
        open_source(three_formats["npy"], labels_path=three_formats["npz"])
    assert str(three_formats["npz"]) in str(info.value)
    assert "not a valid .npy file" in str(info.value)


# --------------------------------------------------------------------------------------------
# HDF5 whose virtual data is not all there
# --------------------------------------------------------------------------------------------


def test_a_mixing_set_with_a_missing_shard(tmp_path: Path) -> None:
    """Refused, also after a run that prepared (and cached) it while it was whole."""
    npz = small_npz(tmp_path / "m.npz", count=20)
    entry = tmp_path / "ms" / "m.h5"
    code, output = run_cli(
        "export", "--input", npz, "--out", entry, "--preset", "cifar", "--size", "40",
        "--shard-size", "10", "--jobs", "1", "--quiet",
    )  # fmt: skip
    assert code == 0, output
    data = image_folder(tmp_path / "data")
    args = ["augment", "--input", data, "--mixing-set", entry, "--jobs", "1", "--quiet"]
    code, output = run_cli(*args, "--out", tmp_path / "first.h5")
    assert code == 0 and (tmp_path / "first.h5").is_file(), output
    shard = entry.with_suffix(".shards") / "shard-00001.h5"
    shard.unlink()
    out = tmp_path / "out" / "a.h5"
    code, output = run_cli(*args, "--out", out)
    one_line(code, output, str(shard), "missing")
    assert not out.exists() and not out.with_suffix(".shards").exists()
    with pytest.raises(IpmixError) as info:
        open_mixing_set(entry)
    assert str(shard) in str(info.value)


def _vds(path: Path, parts: list[Path], rows: int = 4, labels: bool = True) -> Path:
    """An HDF5 file whose ``images`` is a virtual dataset over ``parts`` (``rows`` each),
    named relative to ``path``'s folder as a foreign tool would."""
    layout = h5py.VirtualLayout((rows * len(parts), 32, 32, 3), np.uint8)
    for k, part in enumerate(parts):
        with h5py.File(part, "w") as f:
            f["images"] = RNG.integers(0, 256, (rows, 32, 32, 3), dtype=np.uint8)
        source = h5py.VirtualSource(part.name, "images", (rows, 32, 32, 3))
        layout[rows * k : rows * (k + 1)] = source
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("images", layout, fillvalue=0)
        if labels:
            f["labels"] = np.arange(rows * len(parts)) % 2
    return path


def test_a_foreign_virtual_dataset_with_a_missing_source(tmp_path: Path, pictures: Path) -> None:
    """Real processes: an error raised while a virtual dataset is open must not crash HDF5's
    clean-up at exit either (a segfault after the message)."""
    parts = [tmp_path / "part0.h5", tmp_path / "part1.h5"]
    vds = _vds(tmp_path / "vds.h5", parts)
    assert len(open_source(vds)) == 8 and len(open_mixing_set(vds)) == 8  # whole: fine
    parts[1].unlink()
    data = image_folder(tmp_path / "data")
    for args in (
        ("--input", vds, "--mixing-set", pictures),
        ("--input", data, "--mixing-set", vds),
    ):
        out = tmp_path / "out.h5"
        result = ipmix("augment", *args, "--out", out, "--jobs", "1", "--quiet")
        one_line_failure(result, str(vds), "part1.h5", "missing")
        assert not out.exists()


def test_a_foreign_virtual_dataset_over_a_short_or_absent_dataset(tmp_path: Path) -> None:
    part = tmp_path / "part.h5"
    vds = _vds(tmp_path / "vds.h5", [part])
    with h5py.File(part, "w") as f:  # the source shrank: HDF5 would read the rest as 0
        f["images"] = np.zeros((3, 32, 32, 3), np.uint8)
    for opener in (open_source, open_mixing_set):
        with pytest.raises(SourceError, match="part.h5:images has"):
            opener(vds)
    with h5py.File(part, "w") as f:  # the named dataset is gone
        f["other"] = np.zeros((4, 32, 32, 3), np.uint8)
    for opener in (open_source, open_mixing_set):
        with pytest.raises(SourceError, match="holds no dataset 'images'"):
            opener(vds)


def test_a_virtual_source_found_through_hdf5_vds_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where HDF5 itself finds a source (HDF5_VDS_PREFIX), the check finds it too."""
    vds = _vds(tmp_path / "vds.h5", [tmp_path / "part.h5"])
    elsewhere = tmp_path / "moved"
    elsewhere.mkdir()
    (tmp_path / "part.h5").rename(elsewhere / "part.h5")
    with pytest.raises(SourceError, match="missing"):
        open_source(vds)
    monkeypatch.setenv("HDF5_VDS_PREFIX", str(elsewhere))
    source = open_source(vds)
    assert source.read(0).any()  # really read from the moved file, not fill values


# --------------------------------------------------------------------------------------------
# --labels for an input that holds its own labels; labels too large for int64
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["npz", "folder"])
def test_labels_refused_for_an_input_that_holds_its_own(
    tmp_path: Path, pictures: Path, kind: str
) -> None:
    data = small_npz(tmp_path / "z.npz") if kind == "npz" else image_folder(tmp_path / "data")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros(4, np.int64))
    out = tmp_path / "o.h5"
    code, output = run_cli(
        "augment", "--input", data, "--labels", wrong, "--mixing-set", pictures, "--out", out,
        "--jobs", "1", "--quiet",
    )  # fmt: skip
    one_line(code, output, str(wrong), "--labels", kind)
    assert not out.exists() and not out.with_suffix(".shards").exists()


def test_uint64_labels_too_large_say_their_value(tmp_path: Path) -> None:
    npz = tmp_path / "z.npz"
    labels = np.array([0, 1, 2**64 - 5, 1], dtype=np.uint64)
    np.savez(npz, images=np.zeros((4, 4, 4, 3), np.uint8), labels=labels)
    with pytest.raises(SourceError) as info:
        open_source(npz)
    assert str(2**64 - 5) in str(info.value) and "negative" not in str(info.value)


# --------------------------------------------------------------------------------------------
# Names too long for the file system
# --------------------------------------------------------------------------------------------


def test_paths_too_long(tmp_path: Path, pictures: Path) -> None:
    long = tmp_path / ("a" * 300)
    with pytest.raises(OSError) as probe:  # the premise: this file system refuses the name
        long.stat()
    assert probe.value.errno == errno.ENAMETOOLONG
    images = tmp_path / "y.npy"
    np.save(images, RNG.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    np.save(tmp_path / "y_labels.npy", np.arange(4) % 2)
    data = image_folder(tmp_path / "data")
    for args in (
        ("--input", data, "--mixing-set", long),
        ("--input", images, "--labels", long, "--mixing-set", pictures),
    ):
        code, output = run_cli(
            "augment", *args, "--out", tmp_path / "o.h5", "--jobs", "1", "--quiet"
        )
        one_line(code, output, "name too long")
    with pytest.raises(SourceError, match="name too long"):
        open_source(long)


def test_a_long_npy_name_whose_sibling_names_cannot_exist(tmp_path: Path) -> None:
    """``<stem>_class_names.txt`` of a 250-byte name is over the file system's limit: it is
    simply not there, and the input opens."""
    images = tmp_path / ("b" * 246 + ".npy")
    np.save(images, RNG.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    labels = tmp_path / "labels.npy"
    np.save(labels, np.arange(4) % 2)
    source = open_source(images, labels_path=labels)
    assert source.class_names == ["0", "1"]
