"""Hold a Ctrl-C back while a numba kernel that returns arrays runs in the main thread.

CPython runs a signal's Python handler at the next Python instruction of the main thread. When
the main thread is inside a jitted kernel, that next instruction belongs to numba's own wrapper
turning the results into Python objects (it unpickles dtypes and classes), and a
``KeyboardInterrupt`` raised there breaks it: a namedtuple result made it call a NULL class (a
segmentation fault), an array result ends in a chain of ``SystemError``s. Held back, the signal
is handled by its usual handler right after the kernel has returned, where it raises an
ordinary ``KeyboardInterrupt`` (or does whatever that handler does).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Run the body with SIGINT recorded rather than handled, then hand a recorded SIGINT to
    the handler that was in place before. Outside the main thread (where no Python handler
    ever runs) and where the handler was not installed from Python, the body runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)
