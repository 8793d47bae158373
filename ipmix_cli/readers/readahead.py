"""Read ahead in a background thread: the next batches are read while the caller trains."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(iterable: Iterable[Any], size: int = 2) -> Iterator[Any]:
    """Iterate ``iterable`` in a background thread, up to ``size`` items ahead.

    Reading releases the GIL during file I/O, so the next batches are read while the caller
    trains on the current one. Errors are re-raised in the caller; stopping early (``break``,
    garbage collection) stops the thread.
    """
    if size < 1:
        yield from iterable
        return
    items: queue.Queue[Any] = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in iterable:
                if not put(item):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            put(_Failure(error))
            return
        put(_DONE)

    thread = threading.Thread(target=work, name="ipmix-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
