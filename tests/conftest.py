"""Test-session set-up shared by every test module."""

from __future__ import annotations

from pathlib import Path

import pytest

from fractals import FractalOptions
from ipmix_cli import kernel_caches
from ipmix_cli.jobs.bank_job import BankSpec, generate_bank


def pytest_sessionstart(session: object) -> None:
    """Drop numba caches whose kernel sources changed, as every command does at start (import
    never touches the disk), so the tests run the kernels as they are in the tree."""
    kernel_caches.refresh()


@pytest.fixture(scope="session")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small fractal bank (8 pictures, 48 px) for the tests that only need a mixing set;
    shared by the session, read-only (a module that needs another defines its own ``bank``)."""
    out = tmp_path_factory.mktemp("bank") / "bank"
    generate_bank(
        BankSpec(out=out, count=8, seed=5, options=FractalOptions(size=48, points=4000)), jobs=1
    )
    return out
