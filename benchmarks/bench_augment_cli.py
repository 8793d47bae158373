"""Whole ``ipmix augment`` runs on one core, side by side with the engine alone and with the
authors' way of doing IPMix (``benchmarks/reference/ipmix_reference.py``: one sample at a time
in a PyTorch DataLoader, Pillow ops), as ratios measured in the same run.

    python benchmarks/bench_augment_cli.py [--cases cifar,imagenet] [--rounds 2]
        [--cifar-images 50000] [--imagenet-images 4000] [--copies 1,4] [--root DIR]
    python benchmarks/bench_augment_cli.py --scaling [--images 50000] [--copies 10]

One core means one: the script pins itself, and so every command it starts, to one CPU, so
the command's helper threads (fsync, commit) share that core too. For each case, per round:

* the reference on ``--reference-images`` samples, timed from its first batch on (its
  start-up excluded, as a training loop would amortise it), the same mixing pictures (a
  256 px fractal bank, loaded per sample as the reference does), JPEGs decoded per sample;
* the engine alone in memory (``augment_batch`` / ``augment_images`` on decoded images);
* ``ipmix augment --jobs 1`` in a fresh process: the wall time of the whole command,
  interpreter start, imports, numba's cache load, decoding, checksums and writing included.
  At 32 px and at 224 px with one copy twice: with ipmix's caches off
  (``IPMIX_DIGEST_CACHE=off IPMIX_MIXING_CACHE=off IPMIX_SCAN_CACHE=off``: the input hashed or
  every file's header read, the bank decoded and resized, as on a first run), and with them
  warm (the same input and bank seen before: what every later run, resume and dry run pays).

The package's bytecode is compiled first and every command may write it (a shell with
``PYTHONDONTWRITEBYTECODE`` would otherwise recompile the edited modules on every start).

Rounds alternate the three and each figure is the best over rounds (the machine may be
shared; the best is the least disturbed). Inputs are made in code and kept in ``--root``: 32
px smooth images for CIFAR, a folder of 300-500 px JPEGs in class folders for ImageNet.

``--scaling`` instead measures the 2-core figures of the earlier issue: the engine on one and
on two threads, and the whole command with ``--jobs 2``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from fractals import FractalOptions  # noqa: E402
from ipmix_cli import kernel_caches  # noqa: E402
from ipmix_cli.augment.config import IPMixConfig  # noqa: E402
from ipmix_cli.augment.engine import augment_batch, augment_images, warmup  # noqa: E402
from ipmix_cli.augment.mixing_set import MixingSet  # noqa: E402
from ipmix_cli.jobs.bank_job import BankSpec, generate_bank  # noqa: E402
from ipmix_cli.sources import open_mixing_set  # noqa: E402
from ipmix_cli.sources.decode import decode_image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_imagenet  # noqa: E402
from reference import ipmix_reference  # noqa: E402

BLOCK = 1024


def smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """Natural-looking-enough inputs: upsampled low-resolution noise (cheap to make)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (n, size // 4, size // 4, 3), dtype=np.uint8)
    return np.ascontiguousarray(low.repeat(4, axis=1).repeat(4, axis=2))


def engine_rate(
    images: np.ndarray, mixing: MixingSet, config: IPMixConfig, threads: int = 1
) -> float:
    """Images/s of ``augment_batch`` over ``images`` in blocks, on ``threads`` threads (the
    kernel releases the GIL)."""
    sources = np.arange(len(images), dtype=np.int64)
    augment_batch(images[:256], sources[:256], 0, mixing, config, 0)

    def block(start: int) -> None:
        part = slice(start, start + BLOCK)
        augment_batch(images[part], sources[part], 0, mixing, config, 0)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(block, range(0, len(images), BLOCK)))
    return len(images) / (time.perf_counter() - started)


CACHES_OFF = {"IPMIX_DIGEST_CACHE": "off", "IPMIX_MIXING_CACHE": "off", "IPMIX_SCAN_CACHE": "off"}


def cli_run(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run ``ipmix augment`` in a fresh interpreter: (wall seconds, reported images/s, line);
    ``env``: variables to set for it."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ipmix_cli", "augment", *args, "--overwrite"],
        capture_output=True,
        text=True,
        env={**environment, **(env or {})},
    )
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"ipmix augment {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    line = done.stdout.strip().splitlines()[-1]
    found = re.search(r", ([\d,]+(?:\.\d+)?) images/s", line)
    if found is None:
        raise SystemExit(f"ipmix augment {' '.join(args)}: no rate in its last line: {line!r}")
    reported = float(found.group(1).replace(",", ""))
    return wall, reported, line


def remove_output(entry: Path) -> None:
    entry.unlink(missing_ok=True)
    shutil.rmtree(entry.with_suffix(".shards"), ignore_errors=True)


def reference_rate(items, bank: Path, preset: dict, batch: int) -> float:
    """Samples/s of the reference DataLoader from its first batch on."""
    labels = np.zeros(len(items), dtype=np.int64)
    batches = iter(ipmix_reference.loader(items, labels, bank, preset, batch_size=batch))
    first = len(next(batches)[1])
    started = time.perf_counter()
    done = sum(len(labels) for _, labels in batches)
    assert first + done == len(items)
    return done / (time.perf_counter() - started)


def pillow_rate(files: list[Path]) -> float:
    """Images/s of Pillow's open + RGB conversion alone: the reference's own decode."""
    from PIL import Image

    started = time.perf_counter()
    for f in files:
        with Image.open(f) as img:
            img.convert("RGB").load()
    return len(files) / (time.perf_counter() - started)


def make_bank(root: Path) -> Path:
    """A 256 px bank of 200 pictures, as the README makes (fewer pictures: the cost per
    sample does not depend on the count)."""
    bank = root / "bank256"
    if not (bank / "manifest.json").exists():
        generate_bank(BankSpec(bank, 200, 0, FractalOptions(size=256)), jobs=-1)
    return bank


def report(title: str, figures: dict[str, float], reference: float) -> None:
    print(title)
    for name, rate in figures.items():
        print(f"  {name:<58s} {rate:9,.0f} images/s  {rate / reference:6.1f}x")


def cifar_case(root: Path, bank: Path, args: argparse.Namespace) -> None:
    n = args.cifar_images
    data = root / f"cifar-{n}.npz"
    images = smooth_images(n, 32, 0)
    if not data.exists():
        np.savez(data, images=images, labels=np.arange(n) % 10)
    config = IPMixConfig.preset("cifar")
    mixing = MixingSet.from_pictures(open_mixing_set(bank), config)
    out = root / "cifar-out.h5"
    common = ["--input", str(data), "--out", str(out), "--mixing-set", str(bank)]
    common += ["--preset", "cifar", "--jobs", "1"]
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        ref = reference_rate(images[: args.reference_images * 4], bank, ipmix_reference.CIFAR,
                             128)  # fmt: skip
        engine = engine_rate(images[:20_480], mixing, config)
        remove_output(out)
        cold, _, _ = cli_run(common, CACHES_OFF)
        remove_output(out)
        cli_run(common)  # the input's digest and the prepared bank are remembered now
        remove_output(out)
        wall, _, _ = cli_run(common)
        for name, value in (
            ("reference (per-sample DataLoader + Pillow), 1 core", ref),
            ("engine alone, in memory, 1 core", engine),
            ("ipmix augment --jobs 1, whole command, caches off", n / cold),
            ("ipmix augment --jobs 1, whole command, caches warm", n / wall),
        ):
            best[name] = max(best.get(name, 0.0), value)
    reference = best["reference (per-sample DataLoader + Pillow), 1 core"]
    report(f"32 px, CIFAR preset, {n:,} images, 256 px bank, one core (best of "
           f"{args.rounds}):", best, reference)  # fmt: skip


def imagenet_case(root: Path, bank: Path, args: argparse.Namespace) -> None:
    n = args.imagenet_images
    folder = bench_imagenet.make_folder(root / f"imagenet-{n}", n, 40)
    files = sorted(folder.rglob("*.JPEG"))
    config = IPMixConfig.preset("imagenet")
    mixing = MixingSet.from_pictures(open_mixing_set(bank), config)
    sample = files[:: max(1, len(files) // args.reference_images)][: args.reference_images]
    decoded = [decode_image(f) for f in sample]
    out = root / "imagenet-out.h5"
    copies = [int(c) for c in args.copies.split(",")]
    best: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        best[name] = max(best.get(name, 0.0), value)

    for _ in range(args.rounds):
        keep("reference (per-sample DataLoader + Pillow, JPEG per sample), 1 core",
             reference_rate(sample, bank, ipmix_reference.IMAGENET, 32))  # fmt: skip
        started = time.perf_counter()
        [decode_image(f) for f in sample]
        decode = len(sample) / (time.perf_counter() - started)
        idx = np.arange(len(decoded))
        started = time.perf_counter()
        augment_images(decoded, idx, 0, mixing, config, 0)
        engine = len(decoded) / (time.perf_counter() - started)
        keep("JPEG decode alone (ipmix's decoder, Pillow's pixels), 1 core", decode)
        keep("JPEG decode alone, Pillow (the reference's decoder), 1 core", pillow_rate(sample))
        keep("engine alone, decoded images in memory, 1 core", engine)
        keep("engine + one JPEG decode per image, 1 core", 1 / (1 / engine + 1 / decode))
        for c in copies:
            command = ["--input", str(folder), "--out", str(out), "--mixing-set", str(bank),
                       "--preset", "imagenet", "--jobs", "1", "--copies", str(c)]  # fmt: skip
            if c == 1:
                remove_output(out)
                cold, _, _ = cli_run(command, CACHES_OFF)
                keep("ipmix augment --jobs 1 --copies 1, whole command, caches off", n / cold)
            remove_output(out)
            wall, _, _ = cli_run(command)
            keep(f"ipmix augment --jobs 1 --copies {c}, whole command, rows/s", n * c / wall)
    reference = best["reference (per-sample DataLoader + Pillow, JPEG per sample), 1 core"]
    report(f"224 px, ImageNet preset, {n:,} JPEGs of 300-500 px, 256 px bank, one core "
           f"(best of {args.rounds}):", best, reference)  # fmt: skip
    decode = best["JPEG decode alone (ipmix's decoder, Pillow's pixels), 1 core"]
    left = 1e3 / (10 * reference) - 1e3 / decode
    print(
        f"  with one copy per image, decoding each JPEG once caps the whole command at "
        f"{decode / reference:.1f}x; 10x leaves {left:.3f} ms an image for all the rest"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="cifar,imagenet")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cifar-images", type=int, default=50_000)
    parser.add_argument("--imagenet-images", type=int, default=4_000)
    parser.add_argument("--reference-images", type=int, default=300)
    parser.add_argument("--copies", default="1,4", help="ImageNet --copies values to run")
    parser.add_argument("--root", type=Path, default=Path("/tmp/ipmix-bench-cli"))
    parser.add_argument("--cpu", type=int, default=None, help="the CPU to pin to")
    parser.add_argument("--scaling", action="store_true", help="the 2-core figures instead")
    parser.add_argument("--images", type=int, default=50_000, help="--scaling: input images")
    parser.add_argument("--copies-scaling", type=int, default=10, dest="scaling_copies")
    parser.add_argument("--backends", default="threads", help="--scaling: backends to run")
    args = parser.parse_args()
    if args.scaling:
        args.copies = args.scaling_copies
        return scaling(args)
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})  # inherited by every command started below
    import torch

    torch.set_num_threads(1)
    args.root.mkdir(parents=True, exist_ok=True)
    package = Path(__file__).resolve().parent.parent
    writable = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    folders = [str(package / "ipmix_cli"), str(package / "fractals")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *folders], check=True, env=writable)
    bank = make_bank(args.root)
    for config in (IPMixConfig.preset("cifar"), IPMixConfig.preset("imagenet")):
        warmup(config)
    warm = args.root / "warm.npz"
    np.savez(warm, images=smooth_images(64, 32, 1), labels=np.zeros(64, np.int64))
    cli_run(["--input", str(warm), "--out", str(args.root / "warm.h5"), "--mixing-set",
             str(bank), "--jobs", "1"])  # fmt: skip
    print(f"pinned to CPU {cpu}; numba's cache warm")
    if "cifar" in args.cases:
        cifar_case(args.root, bank, args)
    if "imagenet" in args.cases:
        imagenet_case(args.root, bank, args)


def scaling(args: argparse.Namespace) -> None:
    """The 2-core figures: the whole command against the engine on one and two threads."""
    backends = args.backends.split(",")
    config = IPMixConfig.preset("cifar")
    warmup(config)
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        root = Path(tmp)
        bank = root / "bank"
        generate_bank(BankSpec(bank, 200, 0, FractalOptions(size=64, points=20_000)), jobs=-1)
        images = smooth_images(args.images, 32, 0)
        np.savez(root / "data.npz", images=images, labels=np.arange(args.images) % 10)
        np.savez(root / "warm.npz", images=images[:64], labels=np.arange(64) % 10)
        mixing = MixingSet.from_pictures(open_mixing_set(bank), config)
        common = ["--mixing-set", str(bank), "--preset", "cifar", "--jobs", "2"]
        for backend in backends:  # fills numba's cache for every worker kind
            cli_run(
                ["--input", str(root / "warm.npz"), "--out", str(root / "warm.h5")]
                + common
                + ["--backend", backend]
            )
        total = args.images * args.copies
        print(
            f"{args.images:,} images of 32x32 x {args.copies} copies = {total:,} rows "
            f"({total * 3072 / 1e9:.2f} GB), CIFAR preset, 2 cores"
        )
        rows: dict[str, list[float]] = {}
        for round_ in range(1, args.rounds + 1):
            single = engine_rate(images[:20_480], mixing, config)
            double = engine_rate(images[:40_960], mixing, config, threads=2)
            figures = {"engine 1 core": single, "engine 2 threads (ceiling)": double}
            for backend in backends:
                out = root / f"out-{backend}.h5"
                remove_output(out)  # not timed: --overwrite would delete the last run's GBs
                wall, reported, _ = cli_run(
                    [
                        "--input",
                        str(root / "data.npz"),
                        "--out",
                        str(out),
                        "--copies",
                        str(args.copies),
                        *common,
                        "--backend",
                        backend,
                    ]
                )
                figures[f"ipmix augment --backend {backend}, whole command"] = total / wall
                figures[f"ipmix augment --backend {backend}, job as reported"] = reported
            print(f"round {round_}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in figures.items()))
            for name, value in figures.items():
                rows.setdefault(name, []).append(value / single)
        print("medians over rounds, as multiples of the single-core engine figure:")
        for name, ratios in rows.items():
            print(f"  {name}: {statistics.median(ratios):.2f}x")
        print("target: the whole command >= 1.5x")


if __name__ == "__main__":
    kernel_caches.refresh()  # as every command does: never time kernels of older sources
    main()
