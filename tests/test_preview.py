"""Preview sheets: captions (source, copy, class; bank index) and that they fit their cells."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ipmix_cli.cli import main
from ipmix_cli.commands.output import _augment_sheet
from ipmix_cli.ui.captions import (
    ELLIPSIS,
    PADDING,
    augment_captions,
    bank_captions,
    fit,
    text_width,
)
from ipmix_cli.ui.contact_sheet import contact_sheet, fitted_lines
from ipmix_cli.ui.sheets import plan_augment_sheet

LONG = "a_very_long_class_name_that_would_run_into_the_next_cell"
CLASSES = ("cat", "dog", LONG)


def run_cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_standard_captions_name_source_class_and_each_copy() -> None:
    captions = augment_captions(17, "cat", [0, 1, 2], jsd=False)
    assert captions == ["src 17 (cat)\ncopy 0", "\ncopy 1", "\ncopy 2"]


def test_jsd_captions_start_with_the_original() -> None:
    captions = augment_captions(3, "dog", [0, 1], jsd=True)
    assert captions[0] == "src 3 (dog)\noriginal (clean)"
    assert [c.split("\n")[1] for c in captions[1:]] == [
        "copy 0 view 1",
        "copy 0 view 2",
        "copy 1 view 1",
        "copy 1 view 2",
    ]


def test_bank_captions_are_render_indices() -> None:
    assert bank_captions(range(3, 6)) == ["index 3", "index 4", "index 5"]


@pytest.mark.parametrize("cell", [32, 48, 128])
def test_captions_fit_their_cell(cell: int) -> None:
    for caption in [*augment_captions(123456, LONG, [0, 11], jsd=True), *bank_captions([99999])]:
        for line in fitted_lines(caption, cell):
            assert text_width(line) <= cell - 2 * PADDING, (cell, line)
    long_line = fitted_lines(augment_captions(1, LONG, [0], jsd=False)[0], 128)[0]
    assert long_line.endswith(ELLIPSIS) and long_line.startswith("src 1 (a_very")


def test_fit_keeps_short_text_and_cuts_long_text_by_its_drawn_width() -> None:
    assert fit("copy 0", 100) == "copy 0"
    cut = fit("W" * 40, 60)
    assert cut.endswith(ELLIPSIS) and text_width(cut) <= 60
    assert text_width(fit("W" * 40, 60)[:-1] + "W" + ELLIPSIS) > 60  # the longest that fits
    assert fit("anything", 1) == ""


def test_plan_groups_copies_of_one_source_copy_major() -> None:
    plan = plan_augment_sheet(num_sources=10, copies=3, count=12, jsd=False)
    assert plan.copies == [0, 1, 2] and plan.group == 3 and len(plan.sources) == 4
    assert plan.columns == 6  # two groups of three per row
    rows = plan.rows(10).tolist()
    assert rows[:3] == [0, 10, 20]  # source 0, copies 0..2 (row = copy * sources + source)
    jsd = plan_augment_sheet(num_sources=10, copies=9, count=32, jsd=True)
    assert jsd.copies == [0, 1, 2, 3] and jsd.group == 9 and jsd.columns == 9


def test_sheet_grows_by_caption_lines() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    plain = contact_sheet([image] * 4, columns=4, cell=32)
    captioned = contact_sheet([image] * 4, captions=["a\nb"] * 4, columns=4, cell=32)
    assert captioned.width == plain.width and captioned.height > plain.height + 20


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bank") / "bank"
    code, output = run_cli(
        "fractals", "generate", "--out", out, "--count", "4", "--size", "32", "--points",
        "2000", "--jobs", "1", "--quiet",
    )  # fmt: skip
    assert code == 0, output
    return out


@pytest.mark.parametrize("jsd", [False, True], ids=["standard", "jsd"])
def test_output_sheet_shows_each_source_with_its_copies(
    tmp_path: Path, bank: Path, jsd: bool
) -> None:
    rng = np.random.default_rng(2)
    data = tmp_path / "d.npz"
    images = rng.integers(0, 256, size=(9, 32, 32, 3), dtype=np.uint8)
    np.savez(data, images=images, labels=np.arange(9) % 3, class_names=np.array(CLASSES))
    out = tmp_path / "o.h5"
    code, output = run_cli(
        "augment", "--input", data, "--mixing-set", bank, "--out", out, "--copies", "3",
        "--shard-size", "4", "--jobs", "1", "--quiet", *(["--jsd"] if jsd else []),
    )  # fmt: skip
    assert code == 0, output
    pictures, captions, columns, group = _augment_sheet(out, count=18)
    assert group == (7 if jsd else 3) and len(pictures) == len(captions)
    with h5py.File(out, "r") as f:
        stored = f["images"][:]
        clean = f["clean"][:] if jsd else None
    for start in range(0, len(pictures), group):
        head = captions[start].split("\n")[0]
        source = int(head.split()[1])
        assert head == f"src {source} ({CLASSES[source % 3]})", head
        if jsd:
            np.testing.assert_array_equal(pictures[start], clean[source])  # the original
            views = pictures[start + 1 : start + group : 2]
        else:
            views = pictures[start : start + group]
        for copy, picture in enumerate(views):
            assert f"copy {copy}" in captions[start + (1 + 2 * copy if jsd else copy)]
            np.testing.assert_array_equal(picture, stored[copy * 9 + source])
    sheet = tmp_path / "sheet.png"
    code, output = run_cli("preview", out, "--out", sheet, "--count", "18")
    assert code == 0, output
    assert Image.open(sheet).width > columns * 128


def test_bank_preview_is_captioned(tmp_path: Path, bank: Path) -> None:
    sheet = tmp_path / "bank.jpg"
    code, output = run_cli("preview", bank, "--out", sheet)
    assert code == 0 and output.startswith("4 images ->"), output
    image = Image.open(sheet)
    assert image.format == "JPEG" and image.height > 128 + 2 * 4  # a caption strip under cells
