"""Importing ipmix touches nothing on disk; the stale-cache check runs when a command starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

IMPORT_EVERYTHING = """
import importlib, pkgutil, sys
import ipmix_cli, fractals
for package in (ipmix_cli, fractals):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.split(".")[-1] in ("torch", "tf", "jax", "__main__"):
            continue  # frameworks are optional; __main__ would run the CLI
        importlib.import_module(info.name)
"""


@pytest.fixture()
def copy_of_the_code(tmp_path: Path) -> Path:
    for package in ("ipmix_cli", "fractals"):
        shutil.copytree(
            ROOT / package,
            tmp_path / package,
            ignore=shutil.ignore_patterns("*.nb*", "kernel-sources.*"),
        )
    return tmp_path


def _planted(root: Path) -> list[Path]:
    """Fake numba cache files (as a stale cache would be) in every kernel package."""
    planted = []
    for folder in ("ipmix_cli/augment", "ipmix_cli/augment/ops", "fractals"):
        cache = root / folder / "__pycache__"
        cache.mkdir(exist_ok=True)
        for name in ("kernel.f-1.py311.nbi", "kernel.f-1.py311.1.nbc"):
            (cache / name).write_bytes(b"stale")
            planted.append(cache / name)
    return planted


def _run(root: Path, code: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(root), "NUMBA_CACHE_DIR": ""}
    env.pop("NUMBA_CACHE_DIR")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_importing_every_module_leaves_the_disk_alone(copy_of_the_code: Path) -> None:
    planted = _planted(copy_of_the_code)
    _run(copy_of_the_code, IMPORT_EVERYTHING)
    assert all(p.read_bytes() == b"stale" for p in planted)
    assert not list(copy_of_the_code.rglob("kernel-sources.*"))  # no stamp written either


def test_a_command_start_drops_caches_whose_sources_changed(copy_of_the_code: Path) -> None:
    _run(copy_of_the_code, "from ipmix_cli import kernel_caches; kernel_caches.refresh()")
    planted = _planted(copy_of_the_code)
    _run(copy_of_the_code, "from ipmix_cli import kernel_caches; kernel_caches.refresh()")
    assert all(p.exists() for p in planted)  # sources unchanged since the stamp: kept
    geometry = copy_of_the_code / "ipmix_cli" / "augment" / "ops" / "geometry.py"
    geometry.write_text(geometry.read_text() + "\n# edited\n")
    _run(copy_of_the_code, "from ipmix_cli import kernel_caches; kernel_caches.refresh()")
    augment = [p for p in planted if "ipmix_cli" in p.parts]
    assert not any(p.exists() for p in augment)  # an op changed: the recipe's caches go
    assert all(p.exists() for p in planted if "fractals" in p.parts)  # fractals' stay


SKIPPED_PROBE = """
import sys
from ipmix_cli import kernel_caches
from ipmix_cli.augment.config import IPMixConfig
from ipmix_cli.augment.engine import warmup

assert kernel_caches.skip_blas_probe()
warmup(IPMixConfig.preset("cifar"))  # the first kernel load: numba's registries
assert "scipy.linalg" not in sys.modules, "numba imported scipy.linalg at start-up"
assert "scipy.linalg.cython_blas" not in sys.modules  # the block is lifted again
import scipy.linalg.cython_blas  # and scipy, where installed, imports as usual
"""


def test_a_command_start_spares_numba_the_scipy_import() -> None:
    pytest.importorskip("scipy.linalg")  # without scipy there is nothing to spare
    result = subprocess.run(
        [sys.executable, "-c", SKIPPED_PROBE], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_command_heap_is_frozen_only_while_it_runs(monkeypatch) -> None:
    import atexit
    import gc

    from ipmix_cli.commands import heap

    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    heap.freeze_at_exit.cache_clear()
    assert gc.get_freeze_count() == 0
    with heap.frozen_heap():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0  # a library caller gets its heap back
    assert registered == [gc.freeze]  # and the process's exit skips the final collections
    with heap.frozen_heap():
        pass
    assert registered == [gc.freeze]  # once
    heap.freeze_at_exit.cache_clear()
