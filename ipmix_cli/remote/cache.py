"""The local cache a reader fetches whole shards into: verified, size-limited, shared by processes.

``ShardReader("s3://bucket/run/out.h5")`` reads an output in a bucket through this cache. Each
shard is fetched whole on first use, checked against the entry's record (size, then the shard
checksum recomputed from the data) and then memory-mapped exactly like a local shard: reading
a warm cache costs what reading a local output costs. Design choices and why:

* **Content-addressed names.** A shard is cached as
  ``<cache_dir>/<bucket>/<key folder>/<stem>.<checksum>.h5`` and the entry object as
  ``<stem>.<etag>-<size>.h5``: an entry replaced in the bucket (a new ETag from one HEAD) is
  fetched again, and its shards, whose checksums changed, can never be served from a stale copy.
  Only verified files ever appear under a final name: downloads go to a temporary name
  (``.<name>.<bytes>.<pid>.<token>.part``) and are renamed with ``os.replace``; a download
  that fails, or whose bytes are not what the entry records, leaves nothing behind.
* **Processes share one folder.** DataLoader workers (and several jobs on one machine) use the
  same cache: a per-file ``flock`` (on one of :data:`LOCK_STRIPES` lock files under
  ``.locks``, never deleted, so no lock-file races) makes sure a shard is downloaded once, not
  once per worker; the waiting process then finds it cached.
* **LRU by mtime, under a limit.** A hit touches the file; before a download, the oldest files
  are evicted (under the cache-wide lock ``.locks/cache``) until what is cached plus what is
  being downloaded (counted at its final size) plus the new shard fits ``cache_limit``. A file
  another thread or process is downloading or opening at that moment is skipped. The limit
  covers the whole folder (every output cached there), so readers sharing a folder should
  share a limit. A limit below the largest shard is refused when the reader is made.
* **Evicted while mapped is fine.** Linux keeps a mapped or open file's data until it is
  unmapped, so a process reading a shard another process evicted reads on; the next open
  fetches it again (and the reader parses it afresh: a new file is a new identity).
* **Prefetch.** :class:`RemoteShards` runs :data:`PREFETCH_THREADS` daemon threads that fetch
  the next shards of the epoch plan in first-touch order, at most ``ahead`` bytes past the last
  shard read (never more than the cache can hold beside the shard being read), so the first
  batch of a shard does not wait on the network. A batch needing shards that are not here
  fetches them in parallel.

Defaults: ``cache_dir`` is ``$IPMIX_CACHE_DIR``, else ``$XDG_CACHE_HOME/ipmix/s3``, else
``~/.cache/ipmix/s3``; ``cache_limit`` is :data:`DEFAULT_LIMIT_FRACTION` (80 %) of the free
space at the cache folder when the reader is opened plus what the folder holds already, so a
demanding user (an output larger than the disk) gets a cache that never fills the disk.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import secrets
import shutil
import threading
import time
import warnings
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ipmix_cli.errors import IpmixError, OutputError, RemoteError, ShardError
from ipmix_cli.fs.user_cache import cache_root
from ipmix_cli.remote.store import ObjectInfo, ObjectStore
from ipmix_cli.remote.url import ObjectURL, stays_inside

try:  # POSIX; elsewhere only the threads of one process are kept apart
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

T = TypeVar("T")

DEFAULT_LIMIT_FRACTION = 0.8
"""Default ``cache_limit``: this share of the free space at the cache folder (plus what the
folder already holds) when a reader is opened."""

PREFETCH_THREADS = 4
"""Downloads in flight per reader process (prefetch and a batch's missing shards)."""

PREFETCH_AHEAD_BYTES = 2 << 30
"""Bytes of shards fetched ahead of the last one read (at least ``2 * PREFETCH_THREADS``
shards; never more than the cache limit leaves beside the largest shard)."""

LOCK_STRIPES = 512
"""Lock files under ``<cache_dir>/.locks`` that per-file locks are spread over."""

STALE_PART_S = 600.0
"""A temporary download untouched this long is abandoned (its process died or hung)."""

IDLE_S = 5.0
"""Seconds a prefetch thread waits for work before it exits (it is restarted on demand), so a
reader that is dropped leaves no thread behind."""

ROOM_WAIT_S = 60.0
"""How long a download waits for room while other downloads fill the cache (then it goes
ahead: a process stopped mid-download must not block everyone)."""

TOUCH_S = 1.0
"""At most one mtime update a second per shard read (the LRU order)."""

LOCKS = ".locks"
_PART = ".part"
_PART_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<size>\d+)\.(?P<pid>\d+)\.[0-9a-f]+\.part$")


def default_cache_dir() -> Path:
    """``$IPMIX_CACHE_DIR``, else ``$XDG_CACHE_HOME/ipmix/s3``, else ``~/.cache/ipmix/s3``."""
    given = os.environ.get("IPMIX_CACHE_DIR")
    if given:
        return Path(given).expanduser()
    return cache_root() / "s3"


def _tag(text: str, limit: int = 80) -> str:
    """``text`` as a file-name fragment (letters, digits, ``-`` and ``_`` only)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:limit] or "x"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


@contextlib.contextmanager
def _flock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` while the block runs; yields ``False`` (the block
    runs unlocked) when ``blocking`` is off and someone else holds it. Each call opens the file
    anew, so threads of one process exclude each other too."""
    if fcntl is None:  # pragma: no cover
        yield True
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


class ShardCache:
    """A folder of whole objects fetched from buckets, at most ``limit`` bytes (see the module
    notes). Picklable: it is a folder and a number; locks are taken per call."""

    def __init__(self, root: str | os.PathLike[str] | None = None, limit: int | None = None):
        folder = Path(root).expanduser() if root is not None else default_cache_dir()
        self.root = folder.absolute()
        try:
            (self.root / LOCKS).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(
                self.root, f"cannot make the shard cache folder: {error.strerror or error}"
            ) from None
        if limit is None:
            free = shutil.disk_usage(self.root).free
            limit = int(DEFAULT_LIMIT_FRACTION * (free + self.usage()))
        elif isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ValueError(f"cache_limit must be a number of bytes >= 1, got {limit!r}")
        self.limit = int(limit)

    def __repr__(self) -> str:
        return f"ShardCache({str(self.root)!r}, limit={self.limit})"

    # -- names -----------------------------------------------------------------------------
    def folder_of(self, url: ObjectURL) -> Path:
        """The cache's copy of the folder holding object ``url``."""
        parts = [url.bucket, *posixpath.dirname(url.key).split("/")]
        parts = [p for p in parts if p]
        if any(p in (".", "..") or p == LOCKS for p in parts) or url.key.startswith("/"):
            raise RemoteError(str(url), "this key cannot be cached (a '.', '..' or '.locks' part)")
        return self.root.joinpath(*parts)

    def shard_path(self, url: ObjectURL, checksum: str) -> Path:
        """Where the verified copy of shard ``url`` with ``checksum`` lives."""
        stem, ext = posixpath.splitext(url.name)
        return self.folder_of(url) / f"{stem}.{_tag(checksum)}{ext}"

    def entry_path(self, url: ObjectURL, info: ObjectInfo) -> Path:
        """Where entry object ``url`` lives, for the version ``info`` (a HEAD) describes."""
        stem, ext = posixpath.splitext(url.name)
        return self.folder_of(url) / f"{stem}.{_tag(info.etag, 48)}-{info.size}{ext}"

    def _stripe(self, path: Path) -> Path:
        relative = os.path.relpath(path, self.root).encode("utf-8", "surrogateescape")
        return self.root / LOCKS / f"{zlib.crc32(relative) % LOCK_STRIPES:03d}"

    # -- what is here ----------------------------------------------------------------------
    def _scan(self) -> list[tuple[float, int, Path, int | None]]:
        """Every file in the cache as ``(mtime, bytes, path, pid)``: ``pid`` is the
        downloading process of a temporary file (counted at its final size), else ``None``."""
        found: list[tuple[float, int, Path, int | None]] = []
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if not (folder == self.root and entry.name == LOCKS):
                            stack.append(Path(entry.path))
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                part = _PART_NAME.match(entry.name)
                if part is not None:
                    size = max(st.st_size, int(part["size"]))
                    found.append((st.st_mtime, size, Path(entry.path), int(part["pid"])))
                else:
                    found.append((st.st_mtime, st.st_size, Path(entry.path), None))
        return found

    def usage(self) -> int:
        """Bytes in the cache (downloads in flight at their final size)."""
        return sum(size for _, size, _, _ in self._scan())

    def _make_room(self, incoming: int, keep: Path) -> bool:
        """Evict least recently used files until ``incoming`` more bytes fit the limit (call
        with the cache lock held); whether they fit. Abandoned temporary files go first; a
        file someone is downloading or opening right now is skipped."""
        files = self._scan()
        total = sum(size for _, size, _, _ in files)
        if total + incoming <= self.limit:
            return True
        now = time.time()
        finals = []
        for mtime, size, path, pid in files:
            if pid is None:
                if path != keep:
                    finals.append((mtime, size, path))
            elif now - mtime > STALE_PART_S or (
                pid != os.getpid() and now - mtime > 30 and not _alive(pid)
            ):
                with contextlib.suppress(OSError):
                    path.unlink()
                    total -= size
        for _, size, path in sorted(finals, key=lambda f: f[0]):
            if total + incoming <= self.limit:
                return True
            with _flock(self._stripe(path), blocking=False) as free:
                if not free:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    total -= size
        return total + incoming <= self.limit

    def touch(self, path: Path) -> None:
        """Mark ``path`` as just used (it may be gone: evicted by another process)."""
        with contextlib.suppress(OSError):
            os.utime(path)

    # -- fetching --------------------------------------------------------------------------
    def fetch(
        self,
        store: ObjectStore,
        key: str,
        path: Path,
        size: int,
        verify: Callable[[Path], None] | None = None,
        use: Callable[[Path], T] | None = None,
    ) -> T | Path:
        """Object ``key`` of ``store`` (``size`` bytes) at ``path``: already cached (touched),
        or downloaded under a temporary name, checked (size, then ``verify(temporary)``, which
        raises on bad bytes) and renamed. ``use(path)`` runs (and its result is returned) while
        the file's lock is held, so nobody evicts the file before ``use`` has opened it."""
        url = store.url(key)
        with _flock(self._stripe(path)):
            try:
                have = os.stat(path).st_size
            except FileNotFoundError:
                have = None
            if have == size:
                self.touch(path)
            else:
                if have is not None:  # a damaged copy: never served
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                self._download(store, url, path, size, verify)
            return use(path) if use is not None else path

    def _download(
        self,
        store: ObjectStore,
        url: ObjectURL,
        path: Path,
        size: int,
        verify: Callable[[Path], None] | None,
    ) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(
                path.parent, f"cannot make a cache folder: {error.strerror or error}"
            ) from None
        part = path.with_name(f".{path.name}.{size}.{os.getpid()}.{secrets.token_hex(4)}{_PART}")
        try:
            deadline = time.monotonic() + ROOM_WAIT_S
            while True:  # no room while other downloads are in flight: wait for them
                with _flock(self.root / LOCKS / "cache"):
                    if self._make_room(size, path) or time.monotonic() > deadline:
                        part.touch()  # the reservation: counted at `size` by every evictor
                        break
                time.sleep(0.02)
            store.get_file(url.key, part)
            got = part.stat().st_size
            if got != size:
                raise RemoteError(
                    str(url), f"downloaded {got} bytes, expected {size} (object replaced?)"
                )
            if verify is not None:
                verify(part)
            os.replace(part, path)
        except OSError as error:  # the local disk (the store's own errors are RemoteErrors)
            raise OutputError(
                path, f"cannot write to the shard cache: {error.strerror or error}"
            ) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    def fetch_entry(self, store: ObjectStore, key: str, use: Callable[[Path], T]) -> T:
        """``use(local copy)`` of the entry object ``key``: fetched unless the version the
        bucket holds now (ETag and size, one HEAD) is cached already."""
        url = store.url(key)
        info = store.head(key)
        if info is None:
            raise RemoteError(str(url), "output entry object does not exist")
        path = self.entry_path(url, info)

        def check(part: Path) -> None:
            again = store.head(key)
            if again is None or (again.etag, again.size) != (info.etag, info.size):
                raise RemoteError(str(url), "the entry object changed while downloading it")

        return self.fetch(store, key, path, info.size, check, use)  # type: ignore[return-value]


# -- verifying a download --------------------------------------------------------------------
def mapped_checksum(path: Path, method: str) -> str | None:
    """The shard checksum of ``path`` (what
    :func:`~ipmix_cli.shards.checksum.shard_checksum` computes) with the raw image rows hashed
    straight from a memory map of the file, where they lie as the reader maps them; ``None``
    when that does not apply (coded or compressed images, not crc32): then use
    ``shard_checksum``.

    Why: h5py serialises every call behind one lock and copies each dataset out, so four
    prefetch threads verifying through it stalled each other and the downloads (a cold epoch
    ran at 60 % of the network's speed); ``zlib.crc32`` over the map releases the GIL and
    copies nothing. The bytes hashed are the ones the reader's memory map reads."""
    import mmap

    import h5py

    from ipmix_cli.readers.shard_io import _direct_layout
    from ipmix_cli.shards.checksum import CHECKSUM_ORDER, _header, _le

    if method != "crc32":
        return None
    size = os.stat(path).st_size
    with h5py.File(path, "r") as f:
        plan: list[tuple[bytes, Any]] = []
        for name in CHECKSUM_ORDER:
            if name not in f:
                continue
            dset = f[name]
            if dset.dtype == np.uint8 and dset.ndim == 4:
                segments = _direct_layout(dset, size)
                if segments is None:
                    return None
                row = int(np.prod(dset.shape[1:], dtype=np.int64))
                spans = [(offset, rows * row) for _, offset, rows in segments]
                plan.append((_header(name, dset.dtype, dset.shape), spans))
            elif dset.dtype.kind in "iu" and dset.ndim == 1:
                data = dset[()]
                plan.append((_header(name, dset.dtype, dset.shape), _le(data)))
            else:
                return None
    value = 0
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        try:
            for header, data in plan:
                value = zlib.crc32(header, value)
                if isinstance(data, list):
                    for offset, length in data:
                        value = zlib.crc32(view[offset : offset + length], value)
                else:
                    value = zlib.crc32(data, value)
        finally:
            view.release()
    return f"crc32:{value:08x}"


# -- an output in a bucket -------------------------------------------------------------------
def _rename(error: IpmixError, local: Path | str, url: ObjectURL) -> IpmixError:
    """``error`` naming ``url`` instead of the cached copy ``local``."""
    text = str(local)
    problem = error.problem.replace(text, str(url))
    path = error.path
    if path is None or path == text or path.startswith(str(Path(text).parent)):
        path = str(url)
    try:
        return type(error)(path, problem)
    except TypeError:  # pragma: no cover
        return error


class RemoteShards:
    """The shards of one output in a bucket, fetched through a :class:`ShardCache` and
    prefetched in the background. Made by :func:`open_remote`; picklable (threads, locks and
    what is in flight stay in their process: a DataLoader worker starts its own)."""

    def __init__(self, url: ObjectURL, manifest: Any, cache: ShardCache, sizes: list[int]):
        self.url = url
        self.cache = cache
        self.store = ObjectStore(url.bucket)
        self.records = list(manifest.shards)
        self.urls = [url.sibling(r.file) for r in self.records]
        self.sizes = [int(s) for s in sizes]
        self.paths = [
            cache.shard_path(u, r.checksum) for u, r in zip(self.urls, self.records, strict=True)
        ]
        self.largest = max(self.sizes, default=0)
        self.threads = PREFETCH_THREADS
        self.ahead = max(
            0,
            min(
                max(PREFETCH_AHEAD_BYTES, 2 * self.threads * self.largest),
                cache.limit - self.largest,
            ),
        )
        self._warned = False
        self._reset()

    # -- per-process state -----------------------------------------------------------------
    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._schedule: list[int] = []
        self._position: dict[int, int] = {}
        self._cumulative = np.zeros(1, np.int64)
        self._cursor = 0
        self._done: set[int] = set()
        self._urgent: deque[int] = deque()
        self._inflight: dict[int, threading.Event] = {}
        self._errors: dict[int, BaseException] = {}
        self._workers = 0
        self._closed = False
        self._touched: dict[int, float] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in [k for k in state if k.startswith("_") and k != "_warned"]:
            del state[key]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._warned = state.get("_warned", False)
        self._reset()

    def _check_process(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's threads and locks are not ours
            self._reset()

    # -- fetching one shard ----------------------------------------------------------------
    def _verify(self, index: int) -> Callable[[Path], None]:
        from ipmix_cli.shards.checksum import method_of, shard_checksum

        record, url = self.records[index], self.urls[index]

        def verify(part: Path) -> None:
            method = method_of(record.checksum)
            try:
                got = mapped_checksum(part, method)
            except Exception:  # noqa: BLE001 - damaged: shard_checksum says how, in one line
                got = None
            try:
                if got is None:
                    got = shard_checksum(part, method or None)
            except IpmixError as error:
                raise _rename(error, part, url) from None
            if got != record.checksum:
                raise RemoteError(
                    str(url),
                    f"wrong checksum {got}, the entry records {record.checksum} (object corrupt "
                    "or replaced); not cached",
                )

        return verify

    def _fetch(self, index: int, use: Callable[[Path], T] | None = None) -> T | Path:
        return self.cache.fetch(
            self.store,
            self.urls[index].key,
            self.paths[index],
            self.sizes[index],
            self._verify(index),
            use,
        )

    def open(self, index: int, use: Callable[[Path], T]) -> T:
        """``use(local path)`` of shard ``index``: waits for its download in flight, else
        fetches it in this thread; the file stays locked while ``use`` opens it. An error the
        prefetch met for this shard (after its retries) is raised here, once."""
        self._check_process()
        with self._cond:
            event = self._inflight.get(index)
        if event is not None:
            event.wait()
        with self._cond:
            error = self._errors.pop(index, None)
        if error is not None:
            raise error
        path = self.paths[index]
        try:
            return self._fetch(index, use)  # type: ignore[return-value]
        except ShardError as error:  # what `use` found wrong in the cached copy
            raise _rename(error, path, self.urls[index]) from None

    # -- prefetch --------------------------------------------------------------------------
    def schedule(self, order: Iterable[int], opened: Iterable[int] = ()) -> None:
        """Fetch shards ``order`` (first-touch order of the rows about to be read) in the
        background, ``ahead`` bytes past the last one read; replaces the previous plan.
        ``opened`` shards are mapped by the reader already: nothing to fetch (a warm epoch
        costs the threads nothing)."""
        self._check_process()
        order = [int(k) for k in order]
        position: dict[int, int] = {}
        for p, k in enumerate(order):
            position.setdefault(k, p)
        sizes = np.array([self.sizes[k] for k in order], dtype=np.int64)
        with self._cond:
            self._schedule = order
            self._position = position
            self._cumulative = np.concatenate(([0], np.cumsum(sizes)))
            self._cursor = 0
            self._done = set(opened)
            self._errors.clear()
            self._closed = False
            self._start_workers()
            self._cond.notify_all()

    def warn_if_too_small(self, order: Sequence[int], shuffled: bool) -> None:
        """Warn once when a shuffled epoch needs more shards than the cache holds: each batch
        of a shuffled epoch reads rows from every shard of its block, so they must all fit."""
        if self._warned or not shuffled:
            return
        need = sum(self.sizes[k] for k in set(order))
        if need > self.cache.limit:
            self._warned = True
            warnings.warn(
                f"{self.url}: a shuffled epoch reads {len(set(order))} shards ({need:,} bytes) "
                f"but the cache holds {self.cache.limit:,} bytes, so shards will be downloaded "
                "again and again; raise cache_limit",
                stacklevel=4,
            )

    def reading(self, shards: Sequence[int], missing: Sequence[int]) -> None:
        """A batch reads ``shards`` (distinct, ascending), of which ``missing`` are not open in
        this process: the prefetch moves past them, they are touched (LRU), and the missing
        ones beyond the first (which the reader fetches itself) go to the threads at once."""
        self._check_process()
        now = time.monotonic()
        for k in shards:
            if now - self._touched.get(k, 0.0) > TOUCH_S:
                self._touched[k] = now
                self.cache.touch(self.paths[k])
        with self._cond:
            at = max((self._position.get(k, -1) for k in shards), default=-1) + 1
            wake = at > self._cursor
            if wake:
                self._cursor = at
            room = self.cache.limit - self.largest
            for k in missing[1:]:
                room -= self.sizes[k]
                if room < 0:
                    break
                if k not in self._inflight:
                    self._urgent.append(k)
                    wake = True
            if wake:
                self._closed = False
                self._start_workers()
                self._cond.notify_all()

    def _next(self) -> int | None:
        """The next shard to fetch (lock held): a batch's missing shard, else the first not
        yet fetched in the window ``cursor .. cursor + ahead bytes`` of the schedule."""
        while self._urgent:
            k = self._urgent.popleft()
            if k not in self._inflight:
                return k
        if not self._schedule:
            return None
        base = int(self._cumulative[self._cursor]) if self._cursor < len(self._schedule) else 0
        for p in range(self._cursor, len(self._schedule)):
            if int(self._cumulative[p + 1]) - base > self.ahead:
                return None
            k = self._schedule[p]
            if k not in self._done and k not in self._inflight:
                return k
        return None

    def _start_workers(self) -> None:
        while self._workers < self.threads:
            self._workers += 1
            threading.Thread(target=self._work, name="ipmix-s3-prefetch", daemon=True).start()

    def _work(self) -> None:
        cond = self._cond
        while True:
            with cond:
                index = None
                deadline = time.monotonic() + IDLE_S
                while not self._closed:
                    index = self._next()
                    if index is not None:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    cond.wait(left)
                if index is None:
                    self._workers -= 1
                    return
                event = self._inflight[index] = threading.Event()
            try:
                self._fetch(index)
            except BaseException as error:  # noqa: BLE001 - raised where the reader needs it
                with cond:
                    self._errors[index] = error
            finally:
                with cond:
                    self._inflight.pop(index, None)
                    self._done.add(index)
                    event.set()
                    cond.notify_all()

    def close(self) -> None:
        """Stop prefetching (downloads in flight finish; threads exit); it restarts with the
        next schedule or read."""
        if self._pid != os.getpid():
            return
        with self._cond:
            self._closed = True
            self._schedule = []
            self._urgent.clear()
            self._cond.notify_all()


def first_touch(shard_of_rows: np.ndarray) -> list[int]:
    """Distinct shards of ``shard_of_rows`` in the order the rows first touch them."""
    if not len(shard_of_rows):
        return []
    shards, first = np.unique(shard_of_rows, return_index=True)
    return shards[np.argsort(first, kind="stable")].tolist()


def open_remote(
    url: ObjectURL,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit: int | None = None,
) -> tuple[Any, RemoteShards]:
    """The manifest of the entry object ``url`` (fetched into the cache) and its
    :class:`RemoteShards`, after checking with one listing that every shard object is in the
    bucket at its recorded size, and that the cache can hold the largest shard."""
    from ipmix_cli.shards.manifest import read_manifest

    cache = ShardCache(cache_dir, cache_limit)
    store = ObjectStore(url.bucket)

    def manifest_of(path: Path) -> Any:
        try:
            return read_manifest(path)
        except IpmixError as error:
            raise _rename(error, path, url) from None

    manifest = cache.fetch_entry(store, url.key, manifest_of)
    for name in [manifest.shards_dir, *(s.file for s in manifest.shards)]:
        if name and not stays_inside(name):
            raise ShardError(str(url), f"records {name!r}, outside the output's folder")
    sizes = _shard_sizes(store, url, manifest)
    largest = max(sizes, default=0)
    if largest > cache.limit:
        where = (
            f"cache_limit {cache.limit:,} bytes"
            if cache_limit is not None
            else (
                f"the default cache limit ({DEFAULT_LIMIT_FRACTION:.0%} of the free space at "
                f"{cache.root}: {cache.limit:,} bytes)"
            )
        )
        raise ValueError(
            f"{url}: {where} cannot hold its largest shard ({largest:,} bytes); the cache must "
            "hold at least one whole shard"
        )
    return manifest, RemoteShards(url, manifest, cache, sizes)


def _shard_sizes(store: ObjectStore, url: ObjectURL, manifest: Any) -> list[int]:
    """The size of every shard object, from one listing of the shard folder (and a HEAD for
    any shard recorded outside it); a missing object or one of another size than the entry
    records is one error naming it."""
    base = posixpath.dirname(url.key)
    folder = manifest.shards_dir or f"{url.stem}.shards"
    prefix = posixpath.join(base, folder)
    listed = store.list(prefix) if manifest.shards else {}
    sizes = []
    for record in manifest.shards:
        shard = url.sibling(record.file)
        size = listed.get(shard.key)
        if size is None and not shard.key.startswith(prefix + "/"):
            info = store.head(shard.key)
            size = None if info is None else info.size
        if size is None:
            raise RemoteError(
                str(shard), f"shard is missing (it should hold {record.count} images)"
            )
        if record.bytes is not None and size != record.bytes:
            raise RemoteError(
                str(shard),
                f"shard was replaced or truncated: {size} bytes, the entry records {record.bytes}",
            )
        sizes.append(int(size))
    return sizes
