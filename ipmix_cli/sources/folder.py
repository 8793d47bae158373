"""``ROOT/<class>/<image>`` folders (torchvision's ImageFolder layout).

Class names sorted give label ids 0..C-1; files are sorted by path relative to the class folder
(nested sub-folders included). Hidden entries and OS litter are ignored, as are plain files
directly in ``ROOT`` (README, licences); any other non-image file inside a class folder is an
error (or skipped with ``on_error="skip"``).

The scan checks each file's header only (:mod:`ipmix_cli.sources.headers`), in worker processes
for large folders, and fingerprints the folder by path, size, modification time, format and
size of each file (``fingerprint="full"`` hashes contents instead). Each image is decoded once,
by the worker that augments it; one that turns out broken there is handled by the job.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ipmix_cli.cores import resolve_jobs
from ipmix_cli.errors import DecodeError, IpmixError, SourceError
from ipmix_cli.fs import scan_cache
from ipmix_cli.fs.digest_cache import sha256_file
from ipmix_cli.fs.readahead import read_ahead
from ipmix_cli.fs.user_cache import file_status
from ipmix_cli.sources.base import Progress, Source, is_hidden, is_ipmix_output
from ipmix_cli.sources.class_map import ClassMap
from ipmix_cli.sources.decode import decode_image, is_image_name
from ipmix_cli.sources.headers import (
    HEAD_BYTES,
    TAIL_BYTES,
    pixel_limit,
    probe_image,
    too_large,
)

FINGERPRINTS = ("stat", "full")
PARALLEL_FROM = 2048  # files: below this a pool costs more than it saves
_CHUNK = 512


def _probe_file(path: str, full: bool) -> tuple[Any, ...]:
    """Check one image file: ``((h, w), None, key, record)`` or ``((-1, -1), error, "", None)``.

    ``key`` is what the fingerprint records for the file: its size, modification time, format
    and size (``stat``), or its size and content hash (``full``). ``record`` is what
    :mod:`ipmix_cli.fs.scan_cache` may remember of it (``stat`` only)."""
    try:
        header = probe_image(path)
        size = (header.height, header.width)
        if full:
            return size, None, f"{header.nbytes}\t{sha256_file(path)}", None
        key = _stat_key(header.nbytes, header.mtime_ns, header.format, *size)
        return size, None, key, (header.status, *size, header.format)
    except IpmixError as error:
        return (-1, -1), error.problem, "", None
    except OSError as error:
        return (-1, -1), f"cannot read file ({error.strerror or error})", "", None


def _stat_key(nbytes: int, mtime_ns: int, fmt: str, height: int, width: int) -> str:
    return f"{nbytes}\t{mtime_ns}\t{fmt}\t{height}x{width}"


def _remembered(path: str, record: scan_cache.Record, limit: int | None) -> tuple[Any, ...] | None:
    """``_probe_file``'s answer for a file whose status is still ``record``'s, else None.

    A record whose size is over the decoder's pixel ``limit`` (:func:`headers.pixel_limit`)
    is not trusted either: a cache written before the scan refused such files, or under a
    higher limit, must not let a decompression bomb through; the file is checked again, and
    refused."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if file_status(st) != record[0] or not stat.S_ISREG(st.st_mode):
        return None
    _, height, width, fmt = record
    if too_large(height, width, limit) is not None:
        return None
    return (height, width), None, _stat_key(st.st_size, st.st_mtime_ns, fmt, height, width), record


def _probe_many(
    root: str, relpaths: list[str], full: bool, known: scan_cache.Records | None = None
) -> tuple[np.ndarray, list, str, scan_cache.Records | None]:
    """A chunk's results, compact so the parent does little per file: the (h, w) of each file
    (-1 where it failed), ``(position, reason)`` of the failures, the fingerprint lines of the
    others, joined, and the scan-cache records of the files checked well (``known``: the
    remembered ones, a file whose status is unchanged not being opened; None: no cache)."""
    paths = [os.path.join(root, rel) for rel in relpaths]
    results: list[Any] = [None] * len(paths)
    remembered = known.lookup(relpaths) if known is not None else {}
    limit = pixel_limit()
    for i, rel in enumerate(relpaths):
        if rel in remembered:
            results[i] = _remembered(paths[i], remembered[rel], limit)
    todo = [i for i, result in enumerate(results) if result is None]
    # The scan reads a header and a tail per file, in order: the disk fetches the next
    # files' while this one is parsed (a whole-file hash reads the whole file).
    ranges = ((0, 0),) if full else ((0, HEAD_BYTES), (-TAIL_BYTES, TAIL_BYTES))
    with read_ahead([paths[i] for i in todo], ranges) as ahead:
        for i in todo:
            results[i] = _probe_file(paths[i], full)
            if ahead is not None:
                ahead.consumed()
    sizes = np.array([size for size, _, _, _ in results], dtype=np.int32).reshape(-1, 2)
    errors = [(i, error) for i, (_, error, _, _) in enumerate(results) if error is not None]
    text = "".join(
        f"{rel}\t{key}\n"
        for rel, (_, error, key, _) in zip(relpaths, results, strict=True)
        if error is None
    )
    if known is None:  # nothing to remember: the cache is off, or the fingerprint is full
        return sizes, errors, text, None
    now = time.time_ns()
    fresh = (
        (rel, record)
        for rel, (_, _, _, record) in zip(relpaths, results, strict=True)
        if record is not None and scan_cache.remembers(record[0], now)
    )
    return sizes, errors, text, scan_cache.Records.from_items(fresh)


def _decode_problems(root: str, relpaths: list[str]) -> list[tuple[str, str]]:
    """``(file, reason)`` of every file in ``relpaths`` that does not decode."""
    problems = []
    for rel in relpaths:
        try:
            decode_image(os.path.join(root, rel))
        except IpmixError as error:
            problems.append((rel, error.problem))
    return problems


def _in_chunks(
    function: Callable[..., list[Any]],
    root: str,
    relpaths: list[str],
    n_jobs: int,
    on_progress: Callable[[int], None] | None,
    *args: Any,
    known: scan_cache.Records | None = None,
) -> list[Any]:
    """``function(root, chunk, *args)`` over chunks of ``relpaths``, results in order,
    ``on_progress(files)`` after each chunk; in worker processes when there are enough files
    (the header check is Python, so threads would queue on the GIL). With ``known``, each call
    also gets the scan-cache records of its chunk's files (only those: a task is pickled)."""
    chunks = [relpaths[i : i + _CHUNK] for i in range(0, len(relpaths), _CHUNK)]
    workers = min(resolve_jobs(n_jobs), len(chunks))
    results: list[Any] = []  # one entry per chunk
    # Lazily, and as arrays: a pool's feeder queues every task at once, and a folder of one
    # class with a million files would otherwise hold a million records as Python objects.
    items = ((chunk, () if known is None else (known.select(chunk),)) for chunk in chunks)
    with _scan_pool(workers if len(relpaths) >= PARALLEL_FROM else 1) as pool:
        call = _Call(function, root, args)
        parts: Iterable[Any] = map(call, items) if pool is None else pool.imap(call, items)
        for chunk, part in zip(chunks, parts, strict=True):
            results.append(part)
            if on_progress is not None:
                on_progress(len(chunk))
    return results


class _Call:
    """``function(root, chunk, *args, *extra)`` of an item ``(chunk, extra)``, as a picklable
    one-argument callable."""

    def __init__(self, function: Callable[..., list[Any]], root: str, args: tuple) -> None:
        self.function, self.root, self.args = function, root, args

    def __call__(self, item: tuple[list[str], tuple]) -> list[Any]:
        chunk, extra = item
        return self.function(self.root, chunk, *self.args, *extra)


@contextlib.contextmanager
def _scan_pool(workers: int) -> Iterator[Any]:
    """Worker processes for a scan, or ``None`` for one worker. Forked where the platform
    allows it: a fork starts in milliseconds and needs no import, where a fresh interpreter
    (loky, spawn) costs ~1 s per worker, as long as the scan of 10,000 files itself. The
    children only run the header check on modules already imported; the job starts its
    numba warm-up thread after the scan, so no lock of that thread is inherited."""
    if workers <= 1:
        yield None
        return
    import multiprocessing

    method = "fork" if sys.platform == "linux" else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        yield pool


def _walk_class(
    root: str, cls: str, exclude: Mapping[str, str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """One class folder's image files (relative paths, sorted) and its other files with the
    reason they are left out."""
    images, problems = [], []
    for rel in FolderSource._walk(Path(root), cls):
        if rel in exclude:
            problems.append((rel, exclude[rel]))
        elif is_image_name(rel):
            images.append(rel)
        else:
            ext = os.path.splitext(rel)[1] or "(none)"
            problems.append((rel, f"not an image file (extension {ext} is not an image type)"))
    return images, problems


def _scan_class(
    root: str,
    item: tuple[str, scan_cache.Records | None],
    exclude: Mapping[str, str],
    full: bool,
) -> tuple[Any, ...]:
    """Walk one class folder and check its files' headers: the unit of a parallel scan.
    ``item``: the class and the scan-cache records under it."""
    cls, known = item
    images, problems = _walk_class(root, cls, exclude)
    return images, problems, _probe_many(root, images, full, known)


def _likely_files(root: Path, classes: list[str]) -> int:
    """A cheap guess at the folder's size (the first class's entries times the classes),
    to decide whether a scan is worth worker processes before walking everything."""
    try:
        with os.scandir(root / classes[0]) as entries:
            first = sum(1 for _ in entries)
    except OSError:
        return 0
    return first * len(classes)


def _scan_by_class(
    root: str,
    classes: list[str],
    exclude: Mapping[str, str],
    full: bool,
    workers: int,
    progress: Progress | None,
    guess: int,
    known: scan_cache.Records | None,
) -> tuple[list[str], list[int], list[Any], list[tuple[str, str]]]:
    """Walk and check the class folders in worker processes, one class per task, so the walk
    is spread over the cores as well as the header checks (a serial walk first would leave
    one core idle for a tenth of the scan). Results come back in class order. The bar's total
    starts as ``guess`` (from the first class) and is corrected as classes finish."""
    relpaths: list[str] = []
    labels: list[int] = []
    parts: list[Any] = []
    problems: list[tuple[str, str]] = []
    if progress is not None:
        progress.start(guess)
    with _scan_pool(min(workers, len(classes))) as pool:
        call = functools.partial(_scan_class, root, exclude=exclude, full=full)
        items = [(cls, None if known is None else known.within(cls)) for cls in classes]
        for label, (images, bad, part) in enumerate(pool.imap(call, items)):
            relpaths += images
            labels += [label] * len(images)
            problems += bad
            parts.append(part)
            if progress is not None:
                retotal = getattr(progress, "retotal", None)  # optional in the protocol
                if retotal is not None:  # files so far, extrapolated over the classes left
                    retotal(len(relpaths) * len(classes) // (label + 1))
                progress.update(len(images))
    return relpaths, labels, parts, problems


def _remember(root: str, known: scan_cache.Records, parts: list[Any]) -> None:
    """Keep this scan's records for the next one, if they differ from what was remembered
    (files gone, changed or new): the cache file is rewritten only then."""
    records = scan_cache.Records.concat(part for _, _, _, part in parts)
    if not records.same_as(known):
        scan_cache.save_records(root, records)


class FolderSource(Source):
    """``ROOT/<class>/<image>`` folders (torchvision ImageFolder layout)."""

    format = "folder"

    def __init__(
        self,
        root: Path,
        *,
        on_error: str = "fail",
        fingerprint: str = "stat",
        n_jobs: int = 1,
        progress: Progress | None = None,
        exclude: Mapping[str, str] | None = None,
        class_map: ClassMap | None = None,
    ) -> None:
        super().__init__(root)
        if fingerprint not in FINGERPRINTS:
            raise SourceError(root, f"unknown fingerprint {fingerprint!r} (stat or full)")
        self.fingerprint_method = fingerprint
        entries = list(os.scandir(root))
        if not any(not is_hidden(e.name) for e in entries):
            raise SourceError(root, "folder is empty")
        classes = sorted(
            e.name
            for e in entries
            if not is_hidden(e.name) and e.is_dir() and not is_ipmix_output(root, e.name)
        )
        if not classes:
            n_top = sum(1 for e in entries if e.is_file() and is_image_name(e.name))
            hint = f" (found {n_top} image files at the top level)" if n_top else ""
            raise SourceError(
                root, f"no class subfolders{hint}; expected ROOT/<class name>/<image files>"
            )
        self.class_map_file: str | None = None
        if class_map is not None:  # before the walk: a typo in the map fails at once
            classes, self.class_labels = class_map.resolve(classes)
            self.class_map_file = str(class_map.path)
        exclude = dict(exclude or {})
        full = fingerprint == "full"
        workers = resolve_jobs(n_jobs)
        guess = _likely_files(root, classes) if workers > 1 and len(classes) >= 2 * workers else 0
        # None: nothing remembered or to remember (the cache is off; a full fingerprint reads
        # every file anyway).
        known = scan_cache.load_records(str(root)) if not full and scan_cache.enabled() else None
        if guess >= PARALLEL_FROM:
            relpaths, labels, parts, problems = _scan_by_class(
                str(root), classes, exclude, full, workers, progress, guess, known
            )
        else:
            relpaths, labels, problems = [], [], []
            for label, cls in enumerate(classes):
                rels, bad = _walk_class(str(root), cls, exclude)
                relpaths += rels
                labels += [label] * len(rels)
                problems += bad
            if relpaths and progress is not None:
                progress.start(len(relpaths))
            on_progress = None if progress is None else progress.update
            parts = _in_chunks(
                _probe_many, str(root), relpaths, n_jobs, on_progress, full, known=known
            )
        if not relpaths:
            raise SourceError(root, f"no image files in the {len(classes)} class subfolders")
        all_sizes = np.concatenate([sizes for sizes, _, _, _ in parts])
        if known is not None:
            _remember(str(root), known, parts)
        offset = 0
        for sizes, errors, _, _ in parts:
            problems.extend((relpaths[offset + i], error) for i, error in errors)
            offset += len(sizes)
        ok = all_sizes[:, 0] >= 0
        kept_sizes = all_sizes[ok]
        kept_labels = np.array(labels, dtype=np.int64)[ok]
        kept_rels = [rel for rel, good in zip(relpaths, ok.tolist(), strict=True) if good]
        lines = [text for _, _, text, _ in parts]
        problems.sort()  # path order, so "fail" always names the same (first) file
        if problems and on_error == "fail":
            rel, reason = problems[0]
            if len(problems) > 1:
                reason += f" (and {len(problems) - 1} more; on_error='skip' skips them)"
            raise DecodeError(root / rel, reason)
        self.skipped = [(str(root / rel), reason) for rel, reason in problems]
        if not kept_rels:
            raise SourceError(root, f"no readable images ({len(problems)} files skipped)")

        self.class_names = classes
        self._relpaths = "\0".join(kept_rels)  # one str: cheap to pickle
        self.labels = kept_labels
        first = kept_sizes[0]
        uniform = bool((kept_sizes == first).all())  # not np.unique: a 50 ms sort at 40k files
        self.image_size = (int(first[0]), int(first[1])) if uniform else None
        self._cache_sizes = np.ascontiguousarray(kept_sizes, dtype=np.int32)
        self._fingerprint = self._fingerprint_from(lines, len(kept_rels))

    def undecodable(
        self, n_jobs: int = 1, progress: Progress | None = None
    ) -> list[tuple[str, str]]:
        """``(relative path, reason)`` of every kept file that does not decode: the full check,
        run only when a worker has found a file the header check passed but that is broken."""
        if progress is not None:
            progress.start(len(self))
        on_progress = None if progress is None else progress.update
        parts = _in_chunks(_decode_problems, str(self.path), self.relpaths, n_jobs, on_progress)
        return [problem for part in parts for problem in part]

    def image_of_other_size(self, size: tuple[int, int]) -> tuple[str, tuple[int, int]] | None:
        sizes = self.__dict__.get("_cache_sizes")
        if sizes is None:  # unpickled in a worker: the scan's sizes stayed with the parent
            return super().image_of_other_size(size)
        other = np.flatnonzero((sizes != np.asarray(size, dtype=np.int32)).any(axis=1))
        if not other.size:
            return None
        i = int(other[0])
        return str(self.file_path(i)), (int(sizes[i, 0]), int(sizes[i, 1]))

    @staticmethod
    def _walk(root: Path, cls: str) -> list[str]:
        """Non-hidden files under ``root/cls``, as sorted posix paths relative to ``root``
        (ipmix outputs written in there are not part of the data set)."""
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root / cls):
            here = Path(dirpath)
            dirnames[:] = [d for d in dirnames if not is_hidden(d) and not is_ipmix_output(here, d)]
            rel_dir = here.relative_to(root).as_posix()
            found.extend(
                f"{rel_dir}/{f}"
                for f in filenames
                if not is_hidden(f) and not is_ipmix_output(here, f)
            )
        return sorted(found)

    @property
    def relpaths(self) -> list[str]:
        """Kept files, relative to the root, in index order (posix separators)."""
        cached = self.__dict__.get("_cache_relpaths")
        if cached is None:
            cached = self._relpaths.split("\0")
            self._cache_relpaths = cached
        return cached

    def file_path(self, i: int) -> Path:
        """Absolute path of image ``i``."""
        return self.path / self.relpaths[self._index(i)]

    def read(self, i: int) -> np.ndarray:
        return decode_image(self.file_path(i))

    def file_paths(self, indices: Iterable[int]) -> list[str]:
        return [str(self.file_path(i)) for i in indices]

    def _fingerprint_from(self, lines: list[str], files: int) -> dict[str, Any]:
        digest = hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
        per_file = (
            "<bytes>\\t<file sha256>"
            if self.fingerprint_method == "full"
            else "<bytes>\\t<mtime ns>\\t<format>\\t<H>x<W>"
        )
        out = {
            "format": self.format,
            "path": str(self.path),
            "files": files,
            "method": f"sha256 over '<relative path>\\t{per_file}\\n' per kept file",
            "sha256": digest,
        }
        if self.class_map_file is not None:  # the labels follow the map's order, not the paths'
            out["classes"] = list(self.class_names)
        return out

    def _compute_fingerprint(self) -> dict[str, Any]:  # pragma: no cover - set by the scan
        raise AssertionError("a folder's fingerprint is made by its scan")

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"fingerprint": self.fingerprint_method}
        if self.class_map_file is not None:
            options["classes"] = self.class_map_file
        return options
