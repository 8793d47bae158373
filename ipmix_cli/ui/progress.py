"""Progress reporting shared by every long-running command (bar with rate and ETA)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(
    total: int, description: str, unit: str = "img", enabled: bool = True, initial: int = 0
) -> tqdm:
    """A tqdm bar on stderr that shows count, rate and ETA.

    ``initial``: work already done (reused by a resume); it fills the bar but is not counted
    in the rate, which so only reflects work done in this run.
    """
    return tqdm(
        total=total,
        initial=initial,
        desc=description,
        unit=unit,
        unit_scale=False,
        dynamic_ncols=True,
        file=sys.stderr,
        disable=not enabled,
        smoothing=0.1,
    )


class LazyBar:
    """A progress bar that appears only once the job has started (:meth:`start`), so a job
    refused by its checks prints its one-line error and nothing else. A context manager that
    closes the bar, if there is one."""

    def __init__(self, description: str, unit: str = "img", enabled: bool = True) -> None:
        self.description, self.unit, self.enabled = description, unit, enabled
        self.bar: tqdm | None = None

    def start(self, total: int, done: int = 0) -> None:
        self.bar = progress_bar(total, self.description, self.unit, self.enabled, initial=done)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def retotal(self, total: int) -> None:
        """Correct the total of a bar started on a guess (a scan learns the file count as it
        walks), keeping the count and rate."""
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def __enter__(self) -> LazyBar:
        return self

    def close(self) -> None:
        """Close the bar now (the next stage's bar takes its line); idempotent."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __exit__(self, *exc: object) -> None:
        self.close()
