"""What each CLI command does, as plain functions: build a spec, run the job, print.

One module per command group: ``fractals`` (generate, render), ``augment``, ``output``
(inspect, verify, preview) and ``demo``. Kept apart from ``cli.py`` so option parsing stays
thin and every command is callable from Python with the same behaviour; progress bars and
summary lines live here, never in the jobs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunOptions:
    """How to run a job, as opposed to what it makes: none of these changes the output bytes."""

    jobs: int = -1
    backend: str | None = None
    scheduler: str | None = None
    resume: bool = False
    overwrite: bool = False
    dry_run: bool = False
    quiet: bool = False
    no_space_check: bool = False
