"""End-to-end tests of ``ipmix fractals generate`` / ``render`` through the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hostile import ipmix, one_line_failure
from interrupts import interrupt_after_shards
from PIL import Image

from fractals import FractalOptions
from fractals.deferred_interrupt import interrupts_deferred
from ipmix_cli.cli import main
from ipmix_cli.jobs.bank_job import PARTIAL_DIR, BankSpec, generate_bank

SMALL = ["--size", "32", "--points", "3000", "--quiet"]


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_png_bank_layout_and_jobs_independence(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    code, output = run_cli(
        "fractals",
        "generate",
        "--out",
        str(one),
        "--count",
        "70",
        "--seed",
        "1",
        "--jobs",
        "1",
        *SMALL,
    )
    assert code == 0, output
    code, output = run_cli(
        "fractals",
        "generate",
        "--out",
        str(two),
        "--count",
        "70",
        "--seed",
        "1",
        "--jobs",
        "2",
        *SMALL,
    )
    assert code == 0, output
    files = tree_bytes(one)
    assert files == tree_bytes(two)
    pngs = sorted((one / "fractals").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(70)]
    assert not (one / PARTIAL_DIR).exists()
    image = np.asarray(Image.open(pngs[0]))
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    manifest = json.loads((one / "manifest.json").read_text())
    assert manifest["seed"] == 1 and manifest["count"] == 70
    assert len(manifest["records"]) == 70
    assert manifest["records"][5]["file"] == "fractals/00005.png"
    assert FractalOptions(**manifest["options"]).size == 32


def test_other_seed_gives_other_images(tmp_path: Path) -> None:
    for seed in ("1", "2"):
        code, output = run_cli(
            "fractals",
            "generate",
            "--out",
            str(tmp_path / seed),
            "--count",
            "3",
            "--seed",
            seed,
            "--jobs",
            "1",
            *SMALL,
        )
        assert code == 0, output
    a = (tmp_path / "1" / "fractals" / "00000.png").read_bytes()
    b = (tmp_path / "2" / "fractals" / "00000.png").read_bytes()
    assert a != b


def test_h5_bank_matches_png_bank(tmp_path: Path) -> None:
    code, output = run_cli(
        "fractals",
        "generate",
        "--out",
        str(tmp_path / "png"),
        "--count",
        "10",
        "--jobs",
        "1",
        *SMALL,
    )
    assert code == 0, output
    code, output = run_cli(
        "fractals",
        "generate",
        "--out",
        str(tmp_path / "h5"),
        "--count",
        "10",
        "--jobs",
        "1",
        "--format",
        "h5",
        *SMALL,
    )
    assert code == 0, output
    with h5py.File(tmp_path / "h5" / "fractals.h5", "r") as h5:
        images = h5["images"][:]
        assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8
        assert h5.attrs["seed"] == 0
        assert json.loads(h5.attrs["options"])["size"] == 32
        record = json.loads(h5["records"][3])
    for i in range(10):
        png = np.asarray(Image.open(tmp_path / "png" / "fractals" / f"{i:05d}.png"))
        np.testing.assert_array_equal(png, images[i])
    assert len(record["layers"][0]["system"]) >= 2  # the IFS maps, to re-render from


def test_interrupted_bank_resumes_to_identical_bytes(tmp_path: Path) -> None:
    spec = BankSpec(
        out=tmp_path / "full", count=150, seed=3, options=FractalOptions(size=32, points=3000)
    )
    generate_bank(spec, jobs=1)
    calls = []

    def interrupt_after_first_chunk(n: int) -> None:
        calls.append(n)
        raise KeyboardInterrupt

    broken = BankSpec(out=tmp_path / "resumed", count=150, seed=3, options=spec.options)
    with pytest.raises(KeyboardInterrupt):
        generate_bank(broken, jobs=1, on_progress=interrupt_after_first_chunk)
    assert not (broken.out / "manifest.json").exists()
    assert (broken.out / PARTIAL_DIR).is_dir()
    done = []
    summary = generate_bank(broken, jobs=1, resume=True, on_progress=done.append)
    assert summary.reused == 64 and summary.rendered == 150 - 64
    assert done[0] == 64
    assert tree_bytes(spec.out) == tree_bytes(broken.out)


def test_killed_process_resumes(tmp_path: Path) -> None:
    """A real SIGKILL mid-run: no half-written PNG under a final name, and --resume finishes."""
    out = tmp_path / "bank"
    args = [
        sys.executable,
        "-m",
        "ipmix_cli",
        "fractals",
        "generate",
        "--out",
        str(out),
        "--count",
        "640",
        "--size",
        "64",
        "--points",
        "20000",
        "--jobs",
        "1",
        "--quiet",
    ]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "fractals").glob("*.png"))) < 100:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.json").exists()
    for png in (out / "fractals").glob("*.png"):
        Image.open(png).load()  # every file under a final name is complete
    code, output = run_cli(
        "fractals",
        "generate",
        "--out",
        str(out),
        "--count",
        "640",
        "--size",
        "64",
        "--points",
        "20000",
        "--jobs",
        "1",
        "--resume",
    )
    assert code == 0, output
    assert "reused" in output
    reference = tmp_path / "reference"
    generate_bank(
        BankSpec(out=reference, count=640, seed=0, options=FractalOptions(size=64, points=20000)),
        jobs=2,
    )
    assert tree_bytes(out) == tree_bytes(reference)


def test_a_deferred_ctrl_c_is_raised_after_the_body() -> None:
    """Inside ``interrupts_deferred`` a SIGINT runs no handler (the body's Python code goes on
    undisturbed); on leaving, the usual handler raises KeyboardInterrupt; the handler is put
    back."""
    before = signal.getsignal(signal.SIGINT)
    steps = []
    with pytest.raises(KeyboardInterrupt), interrupts_deferred():
        signal.raise_signal(signal.SIGINT)
        steps.extend(range(1000))  # Python code where the handler would otherwise run
        steps.append("end")
    assert steps[-1] == "end" and len(steps) == 1001
    assert signal.getsignal(signal.SIGINT) is before
    with interrupts_deferred():
        pass  # nothing caught, nothing raised


def test_ctrl_c_while_rendering_in_the_main_thread(tmp_path: Path) -> None:
    """``--jobs 1`` renders in the command's own thread: a terminal's Ctrl-C landing inside the
    numba kernel is raised at the first Python call after it, which was numba's own boxing of
    the kernel's result, and crashed the process (SIGSEGV, no message). It must stop with the
    one-line hint and exit 130, every PNG under a final name complete."""
    out = tmp_path / "bank"
    args = ["fractals", "generate", "--out", out, "--count", "1000", "--size", "64",
            "--points", "50000", "--jobs", "1", "--quiet"]  # fmt: skip
    for attempt in range(3):  # three interrupts at different moments of a chunk
        shutil.rmtree(out, ignore_errors=True)
        written, stderr, process = interrupt_after_shards(
            args, out / "fractals", 20 + 37 * attempt, signal.SIGINT, pattern="*.png"
        )
        assert written < 1000, "the interrupt must land mid-run"
        assert process.returncode == 130, stderr
        assert "Fatal Python error" not in stderr and "Traceback" not in stderr, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("interrupted: finished work is kept"), stderr
        assert stderr.splitlines() == [last], stderr  # --quiet: no bar, so no blank line
        for png in (out / "fractals").glob("*.png"):
            Image.open(png).load()


def test_resume_refuses_changed_options(tmp_path: Path) -> None:
    spec = BankSpec(
        out=tmp_path / "b", count=100, seed=3, options=FractalOptions(size=32, points=3000)
    )
    with pytest.raises(KeyboardInterrupt):
        generate_bank(spec, jobs=1, on_progress=lambda n: (_ for _ in ()).throw(KeyboardInterrupt))
    code, output = run_cli(
        "fractals",
        "generate",
        "--out",
        str(spec.out),
        "--count",
        "100",
        "--seed",
        "4",
        "--resume",
        *SMALL,
    )
    assert code != 0
    assert "seed" in output and str(spec.out) in output


def test_preview_and_rerender(tmp_path: Path) -> None:
    bank, sheet = tmp_path / "bank", tmp_path / "sheet.png"
    code, output = run_cli(
        "fractals",
        "generate",
        "--out",
        str(bank),
        "--count",
        "12",
        "--jobs",
        "1",
        "--preview",
        str(sheet),
        *SMALL,
    )
    assert code == 0, output
    preview = Image.open(sheet)
    assert preview.width > 8 * 32 and preview.height > 32  # 8 columns, 2 rows of 32-px cells
    code, output = run_cli(
        "fractals",
        "render",
        str(bank),
        "--index",
        "4",
        "--index",
        "7",
        "--out",
        str(tmp_path / "again"),
    )
    assert code == 0, output
    for i in (4, 7):
        original = np.asarray(Image.open(bank / "fractals" / f"{i:05d}.png"))
        again = np.asarray(Image.open(tmp_path / "again" / f"{i:05d}.png"))
        np.testing.assert_array_equal(original, again)
    code, output = run_cli(
        "fractals",
        "render",
        str(bank),
        "--index",
        "4",
        "--size",
        "64",
        "--out",
        str(tmp_path / "big"),
    )
    assert code == 0, output
    assert Image.open(tmp_path / "big" / "00004.png").size == (64, 64)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--size", "8"], "--size"),
        (["--size", "abc"], "--size"),
        (["--count", "0"], "--count"),
        (["--jobs", "0"], "--jobs"),
        (["--background", "pink"], "--background"),
    ],
)
def test_bad_options_are_rejected(tmp_path: Path, args: list[str], needle: str) -> None:
    code, output = run_cli("fractals", "generate", "--out", str(tmp_path / "b"), *args)
    assert code != 0
    assert needle in output
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_existing_folder_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "bank"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, output = run_cli("fractals", "generate", "--out", str(out), "--count", "2", *SMALL)
    assert code == 1
    assert "not empty" in output and str(out) in output and "--overwrite" in output
    assert len(output.strip().splitlines()) == 1
    code, output = run_cli(
        "fractals",
        "generate",
        "--out",
        str(out),
        "--count",
        "2",
        "--jobs",
        "1",
        "--overwrite",
        *SMALL,
    )
    assert code == 0, output
    assert (out / "keep.txt").read_text() == "mine"  # only our own outputs are replaced


def test_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, output = run_cli(
        "fractals", "generate", "--out", str(blocker / "bank"), "--count", "2", *SMALL
    )
    assert code == 1
    assert str(blocker / "bank") in output and "cannot write" in output


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, output = run_cli(
            "fractals", "generate", "--out", str(locked / "bank"), "--count", "2", *SMALL
        )
    finally:
        locked.chmod(0o700)
    assert code == 1 and "cannot write" in output


def test_out_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "bank"
    target.write_text("x")
    code, output = run_cli("fractals", "generate", "--out", str(target), "--count", "2", *SMALL)
    assert code == 1 and "not a folder" in output


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code, output = run_cli("demo", "--out", str(out), "--jobs", "1", "--quiet")
    assert code == 0 and output == "", output  # --quiet: no steps, bars or summaries
    assert (out / "bank-preview.png").is_file() and (out / "augmented-preview.png").is_file()
    assert len(list((out / "bank" / "fractals").glob("*.png"))) == 64
    code, output = run_cli("demo", "--out", str(out))
    assert code == 1 and "--overwrite" in output
    shutil.rmtree(out)


@pytest.mark.parametrize(
    ("out", "message"),
    [("afile", "exists and is not a folder"), ("afile/sub", "cannot create the folder")],
)
def test_demo_out_that_cannot_be_a_folder_is_one_line(tmp_path: Path, out, message) -> None:
    """``--out`` naming a file, or a folder under a file: one line naming it, nothing made
    (both were a NotADirectoryError traceback)."""
    (tmp_path / "afile").write_text("keep")
    result = ipmix("demo", "--out", tmp_path / out, "--quiet")
    one_line_failure(result, str(tmp_path / out), message)
    assert (tmp_path / "afile").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: r["layers"][0].update(render_key="not-hex"), "'render_key' is not a 16-digit"),
        (lambda r: r["layers"][0].pop("system"), "'system'"),
        (lambda r: r["options"].update(size="big"), "size"),
        (lambda r: r.update(format="something else"), "format"),
    ],
)
def test_render_from_a_damaged_manifest_is_one_line(tmp_path: Path, damage, message) -> None:
    """A hand-edited or damaged manifest: ``fractals render`` names the problem in one line and
    exits 1, writing nothing (a real subprocess: what a user's terminal shows)."""
    bank = tmp_path / "bank"
    code, output = run_cli("fractals", "generate", "--out", str(bank), "--count", "3", *SMALL)
    assert code == 0, output
    manifest = json.loads((bank / "manifest.json").read_text())
    damage(manifest["records"][1])
    (bank / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "again"
    result = subprocess.run(
        [sys.executable, "-m", "ipmix_cli", "fractals", "render", str(bank), "--index", "1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.stderr and not list(out.glob("*.png"))
