"""How numbers read in what a person sees: "1 shard", "2 copies", "96.6 KB", "3.4 images/s".

Kept in one place so every summary line, dry run and error says counts the same way, and so a
new message cannot reintroduce "1 shards" by formatting its own.
"""

from __future__ import annotations

IRREGULAR = {"copy": "copies", "class": "classes", "is": "are", "was": "were"}
"""Words whose plural is not ``word + "s"``."""


def plural(n: int, word: str) -> str:
    """``word`` as it goes with ``n``: ``plural(1, "shard")`` is "shard", 2 gives "shards"
    (and "copy" gives "copies")."""
    if n == 1:
        return word
    return IRREGULAR.get(word, word + "s")


def count(n: int, word: str) -> str:
    """``n`` and its word: "1 shard", "12 shards", "1 copy", "4 copies"."""
    return f"{n} {plural(n, word)}"


def human_bytes(n: float) -> str:
    """``n`` bytes in decimal units, as a person reads them (``1.2 GB``, ``3.4 TB``)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def rate(done: float, seconds: float, unit: str = "images") -> str | None:
    """``done`` per second as "1234 images/s" (one decimal under 10, so a slow first run that
    compiled its kernels reads "0.3 images/s", not "0 images/s"); ``None`` when nothing was
    done or no time passed: a run that did no work has no rate to report."""
    if done <= 0 or seconds <= 0:
        return None
    per_second = done / seconds
    return f"{per_second:.1f} {unit}/s" if per_second < 10 else f"{per_second:.0f} {unit}/s"
