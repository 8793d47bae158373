"""``--classes FILE``: the order and subset of a folder's classes, human labels, recorded in the
manifest and exposed by the readers; every mistake in the file is one line naming it, before
any image is read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hostile import mixing_folder
from PIL import Image

from ipmix_cli.cli import main
from ipmix_cli.errors import SourceError
from ipmix_cli.readers import ShardReader
from ipmix_cli.sources.class_map import read_class_map

FOLDERS = ["n01440764", "n01443537", "n01484850", "zebra stripes"]


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mixing_folder(tmp_path_factory.mktemp("mixing") / "bank")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("classes") / "train"
    rng = np.random.default_rng(1)
    for k, name in enumerate(FOLDERS):
        (root / name).mkdir(parents=True)
        for i in range(3 + k):  # a different count per class: labels can be told apart
            image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


def run_cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def _augment(data: Path, bank: Path, out: Path, *extra: object) -> tuple[int, str]:
    return run_cli(
        *("augment", "--input", data, "--mixing-set", bank, "--out", out, "--jobs", "1"),
        *("--quiet", *extra),
    )


def test_text_map_orders_picks_and_labels(tmp_path: Path, data: Path, bank: Path) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text(
        "# a subset, in the order of an existing model's head\n"
        "zebra stripes\n"  # a folder name with a space, no label
        "\n"
        "n01484850 great white shark, white shark\n"
        "n01440764\ttench, Tinca tinca\n"
    )
    out = tmp_path / "o.h5"
    code, output = _augment(data, bank, out, "--classes", classes)
    assert code == 0, output
    reader = ShardReader(out, extras=("source_index",))
    assert reader.class_names == ["zebra stripes", "n01484850", "n01440764"]
    assert reader.class_labels == [
        "zebra stripes",
        "great white shark, white shark",
        "tench, Tinca tinca",
    ]
    assert len(reader) == 6 + 5 + 3  # n01443537 left out
    rows = reader.read(np.arange(len(reader)))
    counts = np.bincount(rows["labels"], minlength=3).tolist()
    assert counts == [6, 5, 3], "label id follows the map, whatever the folder order"
    assert reader.manifest.source["options"]["classes"] == str(classes)
    code, shown = run_cli("inspect", out)
    assert code == 0 and "n01484850 (great white shark, white shark)" in shown, shown

    # the same file edited to another order would mix label orders: refused, output kept
    code, output = _augment(data, bank, out, "--classes", classes, "--resume")
    assert code == 0, output
    classes.write_text("n01440764\nn01484850\nzebra stripes\n")
    before = out.read_bytes()
    code, output = _augment(data, bank, out, "--classes", classes, "--resume")
    assert code == 1 and out.read_bytes() == before, output
    assert "cannot resume: input data differ" in output, output


@pytest.mark.parametrize(
    ("content", "names", "labels"),
    [
        (["n01443537", "n01440764"], ["n01443537", "n01440764"], ["n01443537", "n01440764"]),
        ({"n01440764": 1, "n01443537": 0}, ["n01443537", "n01440764"], None),
        (
            {"n01440764": "tench", "zebra stripes": "zebra"},
            ["n01440764", "zebra stripes"],
            ["tench", "zebra"],
        ),
    ],
)
def test_json_forms(tmp_path: Path, content: object, names: list[str], labels: list[str]) -> None:
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(content))
    got_names, got_labels = read_class_map(path).resolve(FOLDERS)
    assert got_names == names and got_labels == (labels or names)


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("typo.txt", "n01440764\nn0144376\n", "line 2: no class folder 'n0144376'"),
        (
            "twice.txt",
            "n01440764\n# x\nn01440764 tench\n",
            "line 3: class 'n01440764' is listed twice",
        ),
        ("empty.txt", "# nothing\n\n", "lists no classes"),
        ("bad.json", '["n01440764",', "not valid JSON"),
        ("ids.json", '{"n01440764": 0, "n01443537": 2}', "label ids must be 0..1"),
        ("mixed.json", '{"n01440764": 0, "n01443537": "x"}', "maps each folder to a label id"),
        ("binary.txt", b"\xff\xfe\x00n0", "not UTF-8"),
        ("missing.txt", None, "does not exist"),
    ],
)
def test_mistakes_are_one_line_naming_the_file(
    tmp_path: Path, data: Path, bank: Path, name: str, text: object, problem: str
) -> None:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    out = tmp_path / "o.h5"
    code, output = _augment(data, bank, out, "--classes", path)
    lines = output.strip().splitlines()
    assert code == 1 and len(lines) == 1, output
    assert str(path) in lines[0] and problem in lines[0], lines[0]
    assert not out.exists() and not (tmp_path / "o.shards").exists()


def test_classes_need_a_folder_input(tmp_path: Path, bank: Path) -> None:
    data = tmp_path / "d.npz"
    np.savez(data, images=np.zeros((4, 32, 32, 3), np.uint8), labels=np.arange(4))
    classes = tmp_path / "c.txt"
    classes.write_text("a\n")
    code, output = _augment(data, bank, tmp_path / "o.h5", "--classes", classes)
    assert code == 1 and "image-folder input" in output and str(classes) in output, output
    with pytest.raises(SourceError, match="not a folder|needs a file"):
        read_class_map(tmp_path)
