"""The same output bytes on a CPU without AVX, AVX2, AVX-512 or FMA.

Why: the promise is that a seed gives the same files on every machine, not only for every
worker count and backend. What usually breaks it is a libm whose code path depends on the CPU
(glibc picks FMA/AVX2/AVX-512 variants of exp, log, pow, sin, cos at load time), numba kernels
compiled for the host's instruction set, and numpy's SIMD dispatch. This test runs small but
complete jobs (an augment through every recipe path at 32 px, the ImageNet preset at 64 px with
RandomResizedCrop from varied-size pictures, and fractal banks in PNG and HDF5 with several
fractals per image, jitter and blur) twice as real subprocesses: once as the machine is, once
with glibc's FMA/AVX variants disabled, numba generating code for a generic x86-64 and numpy's
SIMD dispatch held at its baseline. Every byte of every output file must agree, manifests
included.

The second run needs every kernel compiled again for the generic CPU, in its own numba cache so
that generic code never reaches the normal one; that compile overlaps the first run. About a
minute and a half on a 2-core machine, warm normal cache or not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def _numpy_dispatch_features() -> list[str]:
    """The SIMD features numpy dispatches to at run time beyond its baseline (on x86-64 numpy
    2.x: X86_V3, X86_V4, AVX512_ICL, AVX512_SPR). numpy refuses to disable baseline features
    or features it does not know, so the list comes from numpy itself."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__
    return list(__cpu_dispatch__)


def generic_cpu_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = "glibc.cpu.hwcaps=-AVX512F,-AVX2,-FMA,-AVX"
    env["NUMBA_CPU_NAME"] = "generic"  # numba then also drops every CPU feature
    features = _numpy_dispatch_features()
    if features:
        env["NPY_DISABLE_CPU_FEATURES"] = " ".join(features)
    env["NUMBA_CACHE_DIR"] = str(cache_dir)
    return env


def integer_image(height: int, width: int, salt: int) -> np.ndarray:
    """Structured pictures from integer arithmetic only: the inputs themselves are the same on
    every machine."""
    y, x, c = np.mgrid[0:height, 0:width, 0:3]
    value = (x * (3 + salt % 7) + y * (5 + salt % 4) + c * 85 + salt * 37) % 256
    value = np.where(((x // 3 + y // 5 + salt) % 3) == 0, 255 - value, value)
    noise = (x * 7919 + y * 104729 + c * 1299709 + salt * 15485863) % 23
    return ((value + noise) % 256).astype(np.uint8)


def make_inputs(root: Path) -> None:
    mixing = root / "mixing"
    mixing.mkdir()
    for i in range(8):
        Image.fromarray(integer_image(40 + 6 * i, 52 - 2 * i, 300 + i)).save(mixing / f"{i}.png")
    images = np.stack([integer_image(32, 32, i) for i in range(240)])
    np.savez(root / "data.npz", images=images, labels=np.arange(240) % 10)
    for i in range(16):
        folder = root / "folder" / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        picture = integer_image(50 + 13 * (i % 5), 45 + 17 * (i % 4), 700 + i)
        Image.fromarray(picture).save(folder / f"{i:02d}.png")


QUIET = ["--jobs", "1", "--quiet"]
COMMANDS = [
    # every recipe path at 32 px: both chain kinds, all 15 ops, the four pixel rules, both views
    ["augment", "--input", "data.npz", "--mixing-set", "mixing", "--out", "cifar.h5",
     "--jsd", "--all-ops", "--seed", "5", "--shard-size", "100", *QUIET],
    # the ImageNet preset: RandomResizedCrop (its log-uniform aspect) on varied sizes, mixed
    # patch sources, the 224-px code path at 64 px
    ["augment", "--input", "folder", "--mixing-set", "mixing", "--out", "imagenet.h5",
     "--preset", "imagenet", "--size", "64", "--copies", "3", "--jsd", "--all-ops", *QUIET],
    # banks: several fractals per image with jittered instances and blur (PNG), one fractal
    # per image on plasma, graded, with blur (HDF5)
    ["fractals", "generate", "--out", "bank_png", "--count", "40", "--size", "48", "--points",
     "3000", "--fractals-per-image", "3", "--instances", "2", "--blur", "--format", "png",
     "--seed", "4", *QUIET],
    ["fractals", "generate", "--out", "bank_h5", "--count", "40", "--size", "64", "--points",
     "4000", "--instances", "3", "--blur", "--render", "graded", "--format", "h5", "--seed", "9",
     *QUIET],
]  # fmt: skip


def run_all(cwd: Path, env: dict[str, str]) -> None:
    for args in COMMANDS:
        done = subprocess.run(
            [sys.executable, "-m", "ipmix_cli", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)


def output_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_output_bytes_do_not_depend_on_the_cpus_simd_fma_or_libm(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    make_inputs(work)
    inputs = {p.name for p in work.iterdir()}
    generic = generic_cpu_env(tmp_path / "numba-generic")

    # The generic-CPU compile is most of the time: the same jobs in a side folder fill the
    # generic cache while the normal run goes (on a second core), and the compared generic run
    # then loads its kernels from that cache.
    side = tmp_path / "side"
    side.mkdir()
    make_inputs(side)
    with ThreadPoolExecutor(1) as pool:
        warming = pool.submit(run_all, side, generic)
        run_all(work, dict(os.environ))
        warming.result()
    first = tmp_path / "first"
    first.mkdir()
    for p in sorted(work.iterdir()):
        if p.name not in inputs:  # same working directory and relative paths for the rerun
            shutil.move(p, first / p.name)

    run_all(work, generic)
    second = tmp_path / "second"
    second.mkdir()
    for p in sorted(work.iterdir()):
        if p.name not in inputs:
            shutil.move(p, second / p.name)

    a, b = output_files(first), output_files(second)
    assert sorted(a) == sorted(b)
    assert len(a) >= 50  # shards, entries, manifests, PNGs
    differ = [name for name in a if a[name] != b[name]]
    assert differ == []
