"""The fixed cost of one ``ipmix augment`` command: 1,000 CIFAR-sized images, warm caches.

Run: ``python benchmarks/bench_startup.py`` (about half a minute; ``--bank-size 256
--bank-count 1000`` for the bank ``ipmix fractals generate`` makes by default, ~1.5 min to build).

Builds a 1,000-image 32x32 ``.npz`` and a fractal bank in a temporary folder, runs the command
once to warm numba's cache (and write the ``.pyc`` files an installed package has: the child
processes run without ``PYTHONDONTWRITEBYTECODE`` unless ``--no-pyc``), then times ``--runs``
fresh processes of ``python -m ipmix_cli augment ... --quiet --overwrite`` and prints their
median wall time. Then it runs the command as many times again under a probe that wraps the
job's steps with timers (the bytes written are the same) and prints the median of each step:

* interpreter: ``python -c pass``;
* imports: everything ``ipmix augment`` imports before it starts (numba, h5py, the kernels);
* numba cache load + first dispatch: the warm-up thread (``ipmix_cli.augment.engine.warmup``),
  which overlaps the input opening below;
* source open, mixing-set preparation (decode, fingerprint, resize for the output size);
* compute + commit: from the first shard's dispatch until every shard is durable;
* entry file + clean-up; exit: from the last ``atexit`` handler until the process is gone.

Timings on a shared machine are noisy: the minimum is printed next to each median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROBE = r"""
import atexit, functools, json, sys, time
BORN = float(sys.argv.pop(1))  # the parent's clock just before it started this process
T0 = time.time()
marks = {}
atexit.register(lambda: print("PROBE " + json.dumps({"marks": marks, "start": T0 - BORN,
                                                      "last_atexit": time.time() - BORN}),
                              file=sys.stderr))

def wrap(owner, name, label):
    f = getattr(owner, name, None)
    if f is None:
        return
    @functools.wraps(f)
    def timed(*args, **kwargs):
        t = time.time()
        try:
            return f(*args, **kwargs)
        finally:
            marks[label] = marks.get(label, 0.0) + time.time() - t
    setattr(owner, name, timed)

t = time.time()
import ipmix_cli.cli as cli
import ipmix_cli.commands.augment as command
import ipmix_cli.jobs.augment_job as job
marks["imports"] = time.time() - t
wrap(job, "warmup", "numba cache load + first dispatch")
wrap(job, "open_source", "source open")
wrap(job, "open_mixing_set", "mixing set: decode")
wrap(job, "_fingerprint_mixing", "mixing set: fingerprint")
wrap(job.MixingSet, "from_pictures", "mixing set: resize")
wrap(job, "commit_all", "compute + commit")
wrap(job, "write_entry", "entry file + clean-up")
wrap(job, "remove_tree", "entry file + clean-up")
sys.argv = ["ipmix", *sys.argv[1:]]
cli.main()
"""

STEPS = [
    "interpreter",
    "imports",
    "numba cache load + first dispatch",
    "source open",
    "mixing set: decode",
    "mixing set: fingerprint",
    "mixing set: resize",
    "compute + commit",
    "entry file + clean-up",
    "exit",
]


def _env(pyc: bool) -> dict[str, str]:
    env = dict(os.environ)
    if pyc:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _command(folder: Path) -> list[str]:
    return [
        "augment",
        "--input", str(folder / "c1k.npz"),
        "--out", str(folder / "out.h5"),
        "--mixing-set", str(folder / "bank"),
        "--preset", "cifar",
        "--quiet",
        "--overwrite",
    ]  # fmt: skip


def _timed(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """Run in ``cwd`` (the inputs' folder, as a user would): ``-m`` puts the working directory
    first on ``sys.path``, so run from the repository it would import the source tree whatever
    ``PYTHONPATH`` says."""
    started = time.perf_counter()
    result = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr}")
    return wall, result.stderr


def _probe(folder: Path, env: dict[str, str]) -> dict[str, float]:
    born = time.time()
    wall, stderr = _timed(
        [sys.executable, "-c", PROBE, repr(born), *_command(folder)], env, folder
    )  # fmt: skip
    line = next(x for x in stderr.splitlines() if x.startswith("PROBE "))
    probe = json.loads(line[len("PROBE ") :])
    steps = dict(probe["marks"])
    steps["exit"] = wall - probe["last_atexit"]
    steps["wall"] = wall
    return steps


def _build(folder: Path, images: int, bank_count: int, bank_size: int, env: dict) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        folder / "c1k.npz",
        images=rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8),
        labels=rng.integers(0, 10, images, dtype=np.int64),
    )
    subprocess.run(
        [sys.executable, "-m", "ipmix_cli", "fractals", "generate", "--out",
         str(folder / "bank"), "--count", str(bank_count), "--size", str(bank_size), "--quiet"],
        env=env, cwd=folder, check=True,
    )  # fmt: skip


def _describe_bank(bank: Path) -> str:
    from PIL import Image

    pictures = sorted((bank / "fractals").glob("*.png"))
    if not pictures:
        return str(bank)
    with Image.open(pictures[0]) as first:
        return f"{len(pictures)} x {first.size[0]} px"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes timed per figure")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--bank-count", type=int, default=200)
    parser.add_argument("--bank-size", type=int, default=64)
    parser.add_argument("--no-pyc", action="store_true", help="keep PYTHONDONTWRITEBYTECODE")
    parser.add_argument("--dir", type=Path, help="reuse (or build) the inputs here")
    args = parser.parse_args()
    env = _env(not args.no_pyc)
    with tempfile.TemporaryDirectory(prefix="ipmix-startup-") as tmp:
        folder = (args.dir or Path(tmp)).absolute()
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "c1k.npz").exists() or not (folder / "bank").exists():
            _build(folder, args.images, args.bank_count, args.bank_size, env)
        command = [sys.executable, "-m", "ipmix_cli", *_command(folder)]
        _timed(command, env, folder)  # warm numba's cache and the .pyc files
        walls = [_timed(command, env, folder)[0] for _ in range(args.runs)]
        interpreter = [
            _timed([sys.executable, "-c", "pass"], env, folder)[0] for _ in range(args.runs)
        ]
        probes = [_probe(folder, env) for _ in range(args.runs)]
        bank = _describe_bank(folder / "bank")
    print(
        f"ipmix augment, {args.images} images 32x32, bank of {bank}, "
        f"{'no ' if args.no_pyc else ''}.pyc, {args.runs} runs"
    )
    print(f"wall: median {statistics.median(walls):.3f} s, min {min(walls):.3f} s")
    print(f"{'step':36s} {'median s':>9s} {'min s':>7s}")
    for step in STEPS:
        values = interpreter if step == "interpreter" else [p.get(step, 0.0) for p in probes]
        print(f"{step:36s} {statistics.median(values):9.3f} {min(values):7.3f}")
    probed = [p["wall"] for p in probes]
    print(f"{'wall under the probe':36s} {statistics.median(probed):9.3f} {min(probed):7.3f}")
    print("(numba's load runs on a thread beside source open and mixing-set preparation)")


if __name__ == "__main__":
    main()
