"""End-to-end tests of ``ipmix augment`` / ``inspect`` / ``verify`` / ``preview`` (real files,
real worker processes, a real SIGKILL)."""

from __future__ import annotations

import hashlib
import json
import pickle
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from interrupts import interrupt_after_shards, random_npz
from PIL import Image

from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.augment.engine import augment_batch
from ipmix_cli.augment.mixing_set import MixingSet
from ipmix_cli.cli import main
from ipmix_cli.shards import shard_is_valid
from ipmix_cli.sources import open_mixing_set

N_IMAGES = 24
CLASSES = ("cat", "dog", "emu")


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def digest_tree(entry: Path) -> dict[str, str]:
    """sha256 of the entry file and every shard, keyed by name."""
    files = [entry, *sorted(entry.with_suffix(".shards").iterdir())]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N_IMAGES, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(N_IMAGES) % len(CLASSES)
    return images, labels


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory, arrays) -> Path:
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    np.savez(path, images=arrays[0], labels=arrays[1])
    return path


def make_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (root / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / CLASSES[label] / f"{i:03d}.png")
    return root


def expected_rows(
    images: np.ndarray, labels: np.ndarray, bank: Path, config: IPMixConfig, copies: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """What the output must hold, computed directly with the engine (copy-major rows)."""
    mixing = MixingSet.from_pictures(open_mixing_set(bank), config)
    n = len(images)
    sources = np.arange(n, dtype=np.int64)
    outs = [augment_batch(images, sources, c, mixing, config, seed) for c in range(copies)]
    return np.concatenate(outs), np.tile(labels, copies)


def test_npz_end_to_end_matches_engine_and_plain_h5py(
    tmp_path: Path, npz: Path, bank: Path, arrays
) -> None:
    out = tmp_path / "aug.h5"
    code, output = run_cli(
        "augment",
        "--input",
        npz,
        "--mixing-set",
        bank,
        "--out",
        out,
        "--copies",
        "2",
        "--seed",
        "7",
        "--jobs",
        "1",
        "--shard-size",
        "10",
    )
    assert code == 0, output
    assert "48 images in 6 shards" in output  # 3 source ranges x 2 copies
    images, labels = expected_rows(*arrays, bank, IPMixConfig.preset("cifar"), copies=2, seed=7)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["images"][()], images)
        np.testing.assert_array_equal(f["labels"][()], labels)
        np.testing.assert_array_equal(f["copy_index"][()], np.repeat([0, 1], N_IMAGES))
        manifest = json.loads(f["ipmix/manifest"][()])
    assert manifest["seed"] == 7 and manifest["copies"] == 2
    assert manifest["config"]["patch_overflow"] == "wrap"
    assert len(manifest["shards"]) == 6 and all(
        s["checksum"].startswith("crc32:") for s in manifest["shards"]
    )
    assert manifest["source"]["fingerprint"]


def test_workers_and_backends_give_identical_bytes(tmp_path: Path, npz: Path, bank: Path) -> None:
    """One thread, two threads (the default) and two loky worker processes: same bytes."""
    runs = {
        "j1": ["--jobs", "1"],
        "threads": ["--jobs", "2"],
        "loky": ["--jobs", "2", "--backend", "loky"],
    }
    for name, options in runs.items():
        code, output = run_cli(
            "augment",
            "--input",
            npz,
            "--mixing-set",
            bank,
            "--out",
            tmp_path / name / "out.h5",
            "--copies",
            "3",
            "--shard-size",
            "16",
            "--quiet",
            *options,
        )
        assert code == 0, output
    digests = [digest_tree(tmp_path / name / "out.h5") for name in runs]
    assert digests[0] == digests[1] == digests[2]


@pytest.mark.parametrize("fmt", ["folder", "cifar", "npy", "hdf5"])
def test_each_source_format(tmp_path: Path, bank: Path, arrays, fmt: str) -> None:
    images, labels = arrays
    if fmt == "folder":
        source = make_folder(tmp_path / "folder", images, labels)
        order = np.argsort(labels, kind="stable")  # class folders, then file names
        images, labels = images[order], labels[order]
    elif fmt == "cifar":
        source = tmp_path / "cifar-10-batches-py"
        source.mkdir()
        flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
        for k in range(1, 6):
            part = slice((k - 1) * 5, k * 5) if k < 5 else slice(20, None)
            batch = {b"data": flat[part], b"labels": labels[part].tolist(), b"batch_label": b"x"}
            (source / f"data_batch_{k}").write_bytes(pickle.dumps(batch))
        (source / "test_batch").write_bytes(pickle.dumps({b"data": flat[:2], b"labels": [0, 1]}))
        meta = {b"label_names": [c.encode() for c in CLASSES]}
        (source / "batches.meta").write_bytes(pickle.dumps(meta))
    elif fmt == "npy":
        source = tmp_path / "x.npy"
        np.save(source, images)
        np.save(tmp_path / "x_labels.npy", labels)
    else:
        source = tmp_path / "data.h5"
        with h5py.File(source, "w") as f:
            f["images"], f["labels"] = images, labels
    out = tmp_path / "aug.h5"
    code, output = run_cli(
        "augment", "--input", source, "--mixing-set", bank, "--out", out, "--jobs", "1", "--quiet"
    )
    assert code == 0, output
    expected, expected_labels = expected_rows(
        images, labels, bank, IPMixConfig.preset("cifar"), 1, 0
    )
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["images"][()], expected)
        np.testing.assert_array_equal(f["labels"][()], expected_labels)
    code, output = run_cli("inspect", out)
    assert code == 0 and f"images:    {N_IMAGES}" in output
    if fmt in ("folder", "cifar"):
        assert "cat, dog, emu" in output


def test_jsd_layout(tmp_path: Path, npz: Path, bank: Path, arrays) -> None:
    out = tmp_path / "jsd.h5"
    code, output = run_cli(
        "augment",
        "--input",
        npz,
        "--mixing-set",
        bank,
        "--out",
        out,
        "--jsd",
        "--jobs",
        "1",
        "--quiet",
    )
    assert code == 0, output
    config = IPMixConfig.preset("cifar", jsd=True)
    triplets, _ = expected_rows(*arrays, bank, config, 1, 0)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["clean"][()], triplets[:, 0])
        np.testing.assert_array_equal(f["images"][()], triplets[:, 1])
        np.testing.assert_array_equal(f["images2"][()], triplets[:, 2])
    assert not np.array_equal(triplets[:, 1], triplets[:, 2])


def test_imagenet_preset_with_mixed_sizes(tmp_path: Path, bank: Path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "imgs"
    for i, (h, w) in enumerate([(60, 80), (90, 50), (64, 64), (70, 100)]):
        (folder / CLASSES[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            folder / CLASSES[i % 2] / f"{i}.png"
        )
    out = tmp_path / "inet.h5"
    code, output = run_cli(
        "augment",
        "--input",
        folder,
        "--mixing-set",
        bank,
        "--out",
        out,
        "--preset",
        "imagenet",
        "--size",
        "40x48",
        "--jobs",
        "1",
        "--quiet",
    )
    assert code == 0, output
    with h5py.File(out, "r") as f:
        assert f["images"].shape == (4, 40, 48, 3)
    code, output = run_cli("verify", out)
    assert code == 0, output


def test_wrong_size_input_for_cifar_preset(tmp_path: Path, bank: Path) -> None:
    path = tmp_path / "big.npz"
    np.savez(path, images=np.zeros((3, 40, 40, 3), np.uint8), labels=np.zeros(3, int))
    code, output = run_cli(
        "augment",
        "--input",
        path,
        "--mixing-set",
        bank,
        "--out",
        tmp_path / "o.h5",
        "--jobs",
        "1",
        "--quiet",
        "--resize",
        "exact",
    )
    assert code == 1
    assert "40x40" in output and "--resize center" in output
    assert not (tmp_path / "o.h5").exists()


def test_killed_run_resumes_to_identical_bytes(tmp_path: Path, bank: Path) -> None:
    data = random_npz(tmp_path / "big.npz", 3000, seed=3)
    args = ["augment", "--input", data, "--mixing-set", bank, "--copies", "4"]
    args += ["--shard-size", "200", "--jobs", "1", "--quiet"]
    out = tmp_path / "killed.h5"
    shards = out.with_suffix(".shards")
    written, _, _ = interrupt_after_shards([*args, "--out", out], shards, 5, signal.SIGKILL)
    assert 5 <= written < 60, "the kill must land mid-run"
    assert not out.exists()
    code, output = run_cli(*args, "--out", out)
    assert code == 1 and "--resume" in output
    loud = [a for a in args if a != "--quiet"]  # --quiet would silence the summary line
    code, output = run_cli(*loud, "--out", out, "--resume")
    assert code == 0, output
    assert "reused" in output
    reference = tmp_path / "reference" / out.name
    code, output = run_cli(*args, "--out", reference)
    assert code == 0, output
    assert digest_tree(out) == digest_tree(reference)
    # no temporary files left behind; the (empty) lock file stays
    assert [p.name for p in shards.glob(".*")] == [".lock"]


def test_ctrl_c_stops_a_threads_run_and_resume_completes(tmp_path: Path, bank: Path) -> None:
    """A terminal's Ctrl-C (SIGINT to the process group) during a 2-thread run: exit 130 with the
    one-line hint and no traceback; every shard under its final name is complete; ``--resume``
    ends with the bytes of an uninterrupted run."""
    data = random_npz(tmp_path / "big.npz", 3000, seed=4)
    args = ["augment", "--input", data, "--mixing-set", bank, "--copies", "4"]
    args += ["--shard-size", "200", "--jobs", "2", "--quiet"]
    out = tmp_path / "stopped.h5"
    shards = out.with_suffix(".shards")
    written, stderr, process = interrupt_after_shards(
        [*args, "--out", out], shards, 5, signal.SIGINT
    )
    assert 5 <= written < 60, "the interrupt must land mid-run"
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: finished work is kept"), stderr
    assert not out.exists()
    for path in shards.glob("shard-*.h5"):
        assert shard_is_valid(path, 200), f"{path.name} is incomplete under its final name"
    loud = [a for a in args if a != "--quiet"]  # --quiet would silence the summary line
    code, output = run_cli(*loud, "--out", out, "--resume")
    assert code == 0 and "reused" in output, output
    reference = tmp_path / "reference" / out.name
    code, output = run_cli(*args, "--out", reference)
    assert code == 0, output
    assert digest_tree(out) == digest_tree(reference)
    # resume cleared what the interrupted threads left (the empty lock file stays)
    assert [p.name for p in shards.glob(".*")] == [".lock"]


@pytest.fixture()
def built(tmp_path: Path, npz: Path, bank: Path) -> Path:
    out = tmp_path / "v.h5"
    code, output = run_cli(
        "augment",
        "--input",
        npz,
        "--mixing-set",
        bank,
        "--out",
        out,
        "--shard-size",
        "8",
        "--jobs",
        "1",
        "--quiet",
    )
    assert code == 0, output
    code, output = run_cli("verify", out)
    assert code == 0 and output.startswith("ok: 24 images in 3 shards"), output
    return out


def test_verify_catches_a_deleted_shard(built: Path) -> None:
    (built.with_suffix(".shards") / "shard-00001.h5").unlink()
    code, output = run_cli("verify", built)
    assert code == 1 and "shard-00001.h5" in output


def test_verify_catches_a_truncated_shard(built: Path) -> None:
    shard = built.with_suffix(".shards") / "shard-00002.h5"
    shard.write_bytes(shard.read_bytes()[:3000])
    code, output = run_cli("verify", built)
    assert code == 1 and "shard-00002.h5" in output


def test_verify_catches_a_flipped_byte(built: Path) -> None:
    shard = built.with_suffix(".shards") / "shard-00000.h5"
    with h5py.File(shard, "r") as f:
        offset = (
            f["images"].id.get_offset()
            if f["images"].chunks is None
            else f["images"].id.get_chunk_info(0).byte_offset
        )
    data = bytearray(shard.read_bytes())
    data[offset + 100] ^= 0x01
    shard.write_bytes(bytes(data))
    code, output = run_cli("verify", built)
    assert code == 1 and "shard-00000.h5" in output and "checksum" in output


def test_preview_of_output_and_folder(tmp_path: Path, built: Path, bank: Path) -> None:
    sheet = tmp_path / "grid.png"
    code, output = run_cli("preview", built, "--out", sheet, "--count", "9")
    assert code == 0, output
    assert Image.open(sheet).width > 128 * 8
    code, output = run_cli("preview", built, "--out", sheet)
    assert code == 1 and "--overwrite" in output
    code, output = run_cli("preview", bank, "--out", tmp_path / "bank.png")
    assert code == 0, output


def test_dry_run_writes_nothing(tmp_path: Path, npz: Path, bank: Path) -> None:
    out = tmp_path / "dry.h5"
    code, output = run_cli(
        "augment", "--input", npz, "--mixing-set", bank, "--out", out, "--copies", "2", "--dry-run"
    )
    assert code == 0, output
    assert "48 rows" in output and "nothing written" in output
    assert list(tmp_path.iterdir()) == []


def bad_inputs(tmp_path: Path, bank: Path) -> dict[str, tuple[list[str], str]]:
    """Each bad input: (extra CLI args, text the one-line error must contain)."""
    empty = tmp_path / "empty"
    empty.mkdir(parents=True)
    notes = tmp_path / "notes" / "cat"
    notes.mkdir(parents=True)
    (notes / "readme.txt").write_text("not an image")
    (notes / "fake.png").write_text("not an image either")
    truncated = tmp_path / "trunc" / "cat"
    truncated.mkdir(parents=True)
    buffer = tmp_path / "whole.jpg"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(buffer, quality=90)
    (truncated / "a.jpg").write_bytes(buffer.read_bytes()[:300])
    zero = tmp_path / "zero" / "cat"
    zero.mkdir(parents=True)
    (zero / "a.png").write_bytes(b"")
    wrong_labels = tmp_path / "wrong.npz"
    np.savez(wrong_labels, images=np.zeros((5, 32, 32, 3), np.uint8), labels=np.zeros(4, int))
    unknown = tmp_path / "data.csv"
    unknown.write_text("1,2,3")
    no_pictures = tmp_path / "nopics"
    no_pictures.mkdir()
    (no_pictures / "manifest.json").write_text("{}")
    npz = tmp_path / "ok.npz"
    np.savez(npz, images=np.zeros((2, 32, 32, 3), np.uint8), labels=np.zeros(2, int))
    return {
        "empty folder": (["--input", str(empty)], str(empty)),
        "non-image file": (["--input", str(notes.parent)], "fake.png"),
        "truncated jpeg": (["--input", str(truncated.parent)], "a.jpg"),
        "zero-byte file": (["--input", str(zero.parent)], "a.png"),
        "labels of wrong length": (["--input", str(wrong_labels)], str(wrong_labels)),
        "unknown format": (["--input", str(unknown)], str(unknown)),
        "mixing set without images": (
            ["--input", str(npz), "--mixing-set", str(no_pictures)],
            str(no_pictures),
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty folder",
        "non-image file",
        "truncated jpeg",
        "zero-byte file",
        "labels of wrong length",
        "unknown format",
        "mixing set without images",
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, bank: Path, case: str) -> None:
    args, needle = bad_inputs(tmp_path / "in", bank)[case]
    if "--mixing-set" not in args:
        args += ["--mixing-set", str(bank)]
    out = tmp_path / "o.h5"
    code, output = run_cli("augment", *args, "--out", out, "--jobs", "1", "--quiet")
    assert code == 1
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], output
    assert not out.exists() and not out.with_suffix(".shards").exists()


def test_on_error_skip_lists_skipped_files(tmp_path: Path, bank: Path, arrays) -> None:
    folder = make_folder(tmp_path / "folder", *arrays)
    (folder / "cat" / "broken.png").write_bytes(b"")
    out = tmp_path / "o.h5"
    result = CliRunner().invoke(
        main,
        [
            "augment",
            "--input",
            str(folder),
            "--mixing-set",
            str(bank),
            "--out",
            str(out),
            "--on-error",
            "skip",
            "--jobs",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "broken.png" in result.output and "1 unreadable file skipped" in result.output
    with h5py.File(out, "r") as f:
        assert f["images"].shape[0] == N_IMAGES
        manifest = json.loads(f["ipmix/manifest"][()])
    assert any("broken.png" in entry[0] for entry in manifest["skipped"])


def test_existing_output_and_unwritable_folder(
    tmp_path: Path, built: Path, npz: Path, bank: Path
) -> None:
    before = digest_tree(built)
    code, output = run_cli(
        "augment", "--input", npz, "--mixing-set", bank, "--out", built, "--quiet"
    )
    assert code == 1 and "exists" in output and "--overwrite" in output
    assert digest_tree(built) == before
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, output = run_cli(
        "augment", "--input", npz, "--mixing-set", bank, "--out", blocker / "o.h5", "--quiet"
    )
    assert code == 1 and "cannot write" in output and str(blocker / "o.h5") in output
