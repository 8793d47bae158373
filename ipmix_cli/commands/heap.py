"""The command-wide garbage-collector setting both long commands share."""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the cyclic garbage collector off the objects that exist when a command starts.

    The imports leave ~130,000 objects (numba's type system, mostly) that live as long as the
    process. Every full collection walks them (~0.05 s over a short job), and so do the
    interpreter's last collections at exit (~0.3 s, a third of a 1,000-image job). They are
    frozen for the command (``gc.freeze``; objects made later are collected as usual), given
    back when it returns (a library caller's heap is left as it was), and frozen again at exit.
    Nothing is changed when something else already froze objects."""
    freeze_at_exit()
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@functools.lru_cache(maxsize=1)
def freeze_at_exit() -> None:
    atexit.register(gc.freeze)
