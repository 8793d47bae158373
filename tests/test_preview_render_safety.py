"""Contact sheets and re-rendered images are written safely: ``fractals generate --preview``,
``ipmix preview`` and ``fractals render`` check every path before any work (extension, folder,
an existing file, the command's own input or bank folder), report a full disk or a damaged
record in one line naming the file, leave no temporary file or empty folder they made, and a
bank that cannot fit is refused before it starts. Real CLI, real files, a real full tmpfs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner, Result
from hostile import digest_tree, fill, needs_root, small_npz, small_tmpfs
from PIL import Image

from ipmix_cli.cli import main
from ipmix_cli.commands.output import _augment_sheet

SMALL = ["--count", "12", "--size", "32", "--points", "2000", "--jobs", "1", "--quiet"]


def cli(*args: object) -> Result:
    """The real command line, in this process (the kernels load once for the module)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(result: Result, *needles: str) -> str:
    """Assert a one-line failure with exit 1 and no traceback, holding every needle."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not a crash
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary files (``.NAME.PID.HEX.tmp``) anywhere under ``folder``."""
    return [p.name for p in folder.rglob(".*.tmp")]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small bank and an augment output mixed with it (read-only: copy before changing)."""
    root = tmp_path_factory.mktemp("made")
    assert cli("fractals", "generate", "--out", root / "bank", *SMALL).exit_code == 0
    data = small_npz(root / "in.npz", count=24)
    result = cli("augment", "--input", data, "--mixing-set", root / "bank", "--out",
                 root / "out.h5", "--jobs", "1", "--copies", "2", "--shard-size", "8",
                 "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture()
def bank(made: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bank"
    shutil.copytree(made / "bank", copy)
    return copy


@pytest.fixture()
def output(made: Path, tmp_path: Path) -> Path:
    shutil.copy2(made / "out.h5", tmp_path / "out.h5")
    shutil.copytree(made / "out.shards", tmp_path / "out.shards")
    return tmp_path / "out.h5"


# --------------------------------------------------------------------------------------------
# fractals generate --preview: checked where it lands, before the bank is made


@pytest.mark.parametrize("inside", ["fractals/00000.png", "manifest.png", "sheet.jpg"])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_preview_inside_the_bank_folder_is_refused_before_work(
    tmp_path: Path, inside: str, overwrite: list[str]
) -> None:
    out = tmp_path / "g6"
    result = cli("fractals", "generate", "--out", out, *SMALL, "--preview", out / inside,
                 *overwrite)  # fmt: skip
    refused(result, inside, "is inside", "the bank's folder")
    assert not out.exists()  # nothing rendered


def test_a_preview_reaching_an_existing_file_through_dotdot_is_refused(tmp_path: Path) -> None:
    """``g5/../notes.png`` does not exist while g5 does not; once the bank made g5 it was the
    user's notes.png, replaced by the sheet."""
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"mine")
    out = tmp_path / "g5"
    result = cli("fractals", "generate", "--out", out, *SMALL, "--preview", out / ".." / notes.name)
    refused(result, "notes.png", "exists; pass --overwrite")
    assert notes.read_bytes() == b"mine" and not out.exists()


def test_a_preview_in_a_missing_folder_is_refused_before_work(tmp_path: Path) -> None:
    out = tmp_path / "g8"
    sheet = tmp_path / "nonexistdir" / "p.png"
    refused(cli("fractals", "generate", "--out", out, *SMALL, "--preview", sheet),
            "p.png", "nonexistdir does not exist")  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize("name", ["g3.gif", "sheet", "manifest.json"])
def test_a_preview_named_other_than_png_or_jpeg_is_refused(tmp_path: Path, name: str) -> None:
    out = tmp_path / "g3"
    result = cli("fractals", "generate", "--out", out, *SMALL, "--preview", tmp_path / name)
    refused(result, name, ".png", ".jpg")
    assert not out.exists() and not (tmp_path / name).exists()


# --------------------------------------------------------------------------------------------
# ipmix preview


def test_preview_in_a_missing_folder_is_one_line(output: Path, tmp_path: Path) -> None:
    refused(cli("preview", output, "--out", tmp_path / "nonexistdir" / "p.png"),
            "nonexistdir does not exist")  # fmt: skip


@pytest.mark.parametrize("name", ["sheet.gif", "sheetnoext", "sheet.png.bak"])
def test_preview_refuses_other_extensions(output: Path, tmp_path: Path, name: str) -> None:
    refused(cli("preview", output, "--out", tmp_path / name), name, ".png")
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("name", ["sheet.jpeg", "sheet.JPG", "sheet.PNG"])
def test_preview_takes_every_supported_extension(output: Path, tmp_path: Path, name: str) -> None:
    result = cli("preview", output, "--out", tmp_path / name, "--quiet")
    assert result.exit_code == 0, result.output
    expected = "PNG" if name.lower().endswith(".png") else "JPEG"
    assert Image.open(tmp_path / name).format == expected


def test_preview_never_writes_over_or_into_its_input(output: Path, bank: Path) -> None:
    before = {**digest_tree(output.parent), **digest_tree(bank)}
    shards = output.with_suffix(".shards")
    refused(cli("preview", output, "--out", shards / "shard-00000.png", "--overwrite"),
            "inside", "out.shards")  # fmt: skip
    refused(cli("preview", output, "--out", shards / ".." / "out.shards" / "x.png"), "inside")
    link = output.parent / "link.png"
    link.symlink_to(output)  # the entry file by another name
    refused(cli("preview", output, "--out", link, "--overwrite"), "is the output being previewed")
    refused(cli("preview", bank, "--out", bank / "fractals" / "00001.png", "--overwrite"),
            "inside", "the bank being previewed")  # fmt: skip
    refused(cli("preview", bank / "fractals", "--out", bank / "fractals" / "00002.png",
                "--overwrite"), "inside", "image folder")  # fmt: skip
    link.unlink()
    assert {**digest_tree(output.parent), **digest_tree(bank)} == before


def test_preview_captions_a_label_out_of_range_as_such(output: Path, tmp_path: Path) -> None:
    shard = output.with_suffix(".shards") / "shard-00000.h5"
    with h5py.File(shard, "r") as f:
        source = int(f["source_index"][0])
    for bad in (-5, -1, 4):  # the data set has classes 0..3
        with h5py.File(shard, "r+") as f:
            f["labels"][0] = bad
        result = cli("preview", output, "--out", tmp_path / "l.png", "--overwrite", "--quiet")
        assert result.exit_code == 0, (result.output, result.exception)
        _, captions, _, _ = _augment_sheet(output, 32)
        ours = [c for c in captions if c.startswith(f"src {source} (")]
        assert ours == [f"src {source} ({bad}: out of range)\ncopy 0"], captions


# --------------------------------------------------------------------------------------------
# fractals render


def test_render_into_an_existing_file_is_one_line(bank: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_bytes(b"x")
    refused(cli("fractals", "render", bank, "--index", 1, "--out", afile),
            "afile: exists and is not a folder")  # fmt: skip
    assert afile.read_bytes() == b"x"


def test_render_checks_every_output_before_writing_any(bank: Path, tmp_path: Path) -> None:
    out = tmp_path / "r2"
    out.mkdir()
    (out / "00003.png").write_bytes(b"mine")
    refused(cli("fractals", "render", bank, "--index", 1, "--index", 3, "--out", out),
            "00003.png: exists; pass --overwrite")  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["00003.png"]
    through = tmp_path / "missing" / ".." / "r2"  # r2 itself, once "missing" were made
    refused(cli("fractals", "render", bank, "--index", 3, "--out", through),
            "00003.png: exists; pass --overwrite")  # fmt: skip
    assert (out / "00003.png").read_bytes() == b"mine" and not (tmp_path / "missing").exists()


def test_render_takes_a_repeated_index_once(bank: Path, tmp_path: Path) -> None:
    out = tmp_path / "r3"
    result = cli("fractals", "render", bank, "--index", 2, "--index", 2, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [str(out / "00002.png")]
    assert [p.name for p in out.iterdir()] == ["00002.png"]


def test_render_refuses_a_folder_inside_the_bank(bank: Path) -> None:
    before = digest_tree(bank)
    for out in (bank / "fractals", bank / "again"):
        refused(cli("fractals", "render", bank, "--index", 1, "--out", out, "--overwrite"),
                "is inside the bank")  # fmt: skip
    assert digest_tree(bank) == before


@pytest.mark.parametrize("given", ["folder", "manifest"])
def test_a_damaged_record_names_the_manifest_and_the_image(
    bank: Path, tmp_path: Path, given: str
) -> None:
    path = bank / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["records"][1]["look_key"] = None
    path.write_text(json.dumps(manifest))
    out = tmp_path / "x"
    where = bank if given == "folder" else path
    result = cli("fractals", "render", where, "--index", 0, "--index", 1, "--out", out)
    line = refused(result, "manifest.json: image 1: record: 'look_key' is not a 16-digit hex")
    assert line.startswith(f"Error: {path}: image 1:")
    assert not out.exists()  # image 0 was not written first, nor the folder made


# --------------------------------------------------------------------------------------------
# a full disk, and a bank that cannot fit


@pytest.fixture()
def tiny(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs."""
    with small_tmpfs(tmp_path / "tiny", "1m") as mount:
        yield mount


@needs_root
def test_full_disk_writing_a_preview_is_one_line(output: Path, tiny: Path) -> None:
    fill(tiny)
    refused(cli("preview", output, "--out", tiny / "p.png"),
            f"no space left on device writing {tiny / 'p.png'}")  # fmt: skip
    assert sorted(p.name for p in tiny.iterdir()) == ["fill"]


@needs_root
def test_full_disk_writing_a_render_is_one_line(bank: Path, tiny: Path) -> None:
    fill(tiny)
    out = tiny / "r" / "deeper"
    refused(cli("fractals", "render", bank, "--index", 1, "--out", out, "--size", 512),
            f"no space left on device writing {out / '00001.png'}")  # fmt: skip
    assert sorted(p.name for p in tiny.iterdir()) == ["fill"]  # the folders it made are gone


@needs_root
def test_full_disk_writing_the_bank_preview_is_one_line(tmp_path: Path, tiny: Path) -> None:
    fill(tiny)
    out = tmp_path / "g9"
    refused(cli("fractals", "generate", "--out", out, *SMALL, "--preview", tiny / "p.png"),
            f"no space left on device writing {tiny / 'p.png'}", "the bank in",
            "is complete")  # fmt: skip
    assert sorted(p.name for p in tiny.iterdir()) == ["fill"]
    assert (out / "manifest.json").is_file()


@needs_root
@pytest.mark.parametrize("image_format", ["h5", "png"])
def test_a_bank_that_cannot_fit_is_refused_before_work(tiny: Path, image_format: str) -> None:
    out = tiny / "b"
    result = cli("fractals", "generate", "--out", out, "--format", image_format, "--count",
                 300, "--size", 128, "--points", 2000, "--jobs", 1, "--quiet")  # fmt: skip
    refused(result, f"{out}: the bank needs at least", "MB free")
    assert list(tiny.iterdir()) == []


@needs_root
def test_a_bank_that_fits_is_not_refused(tiny: Path) -> None:
    """The estimate is a lower bound: an HDF5 bank needing about 800 KB of the 1 MiB at its peak
    starts and finishes; replacing it with --overwrite counts the bank it removes as free (the
    disk then has less free than the bank needs, the old bank included more)."""
    args = ["--format", "h5", "--count", "32", "--size", "64", "--points", "2000", "--jobs",
            "1", "--quiet"]  # fmt: skip
    first = cli("fractals", "generate", "--out", tiny / "b", *args)
    assert first.exit_code == 0, first.output
    again = cli("fractals", "generate", "--out", tiny / "b", *args, "--overwrite", "--seed", 1)
    assert again.exit_code == 0, again.output
