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
