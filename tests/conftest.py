"""Test-session set-up shared by every test module."""

from __future__ import annotations

from ipmix_cli import kernel_caches


def pytest_sessionstart(session: object) -> None:
    """Drop numba caches whose kernel sources changed, as every command does at start (import
    never touches the disk), so the tests run the kernels as they are in the tree."""
    kernel_caches.refresh()
