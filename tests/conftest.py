"""Test-session set-up shared by every test module."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from fractals import FractalOptions
from ipmix_cli import kernel_caches
from ipmix_cli.jobs.bank_job import BankSpec, generate_bank

_USER_CACHE = tempfile.mkdtemp(prefix="ipmix-test-cache-")
os.environ["XDG_CACHE_HOME"] = _USER_CACHE
os.environ.pop("IPMIX_CACHE_DIR", None)
"""The user caches (mixing sets, digests, s3 shards) of this test process and the commands it
starts: never the user's own ``~/.cache/ipmix``, and not shared by parallel test workers.
Numba's kernel cache is unaffected (it lives beside the package's sources)."""


def pytest_sessionstart(session: object) -> None:
    """Drop numba caches whose kernel sources changed, as every command does at start (import
    never touches the disk), so the tests run the kernels as they are in the tree."""
    kernel_caches.refresh()


def pytest_sessionfinish(session: object) -> None:
    shutil.rmtree(_USER_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small fractal bank (8 pictures, 48 px) for the tests that only need a mixing set;
    shared by the session, read-only (a module that needs another defines its own ``bank``)."""
    out = tmp_path_factory.mktemp("bank") / "bank"
    generate_bank(
        BankSpec(out=out, count=8, seed=5, options=FractalOptions(size=48, points=4000)), jobs=1
    )
    return out
