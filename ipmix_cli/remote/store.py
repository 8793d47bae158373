"""One bucket's objects through fsspec/s3fs: whole-object puts and gets, listings, metadata.

Configured the standard AWS way and nowhere else: credentials, region and ``AWS_ENDPOINT_URL``
(an S3-compatible store on premises) come from the environment and ``~/.aws`` as for the aws
CLI, so a job needs no ipmix-specific settings and a dask worker on another host finds the
bucket through its own environment.

Why our own retries: botocore's and s3fs's retry ladders compound (a refused connection took
8 s before the first error), and they retry a request, not a whole object: a download that
broke half-way must start again from the first byte. Here every operation is tried at most
``IPMIX_S3_TRIES`` times (default 4) with exponential back-off from ``IPMIX_S3_BACKOFF`` seconds
(default 0.5), only for failures that can pass (connection, timeout, 5xx, throttling); a
missing object, a refusal or missing credentials fail at once. Every failure is one
:class:`~ipmix_cli.errors.RemoteError` line naming the object.

S3 makes an object visible under its key only once its upload completed (a multipart upload
too), so an upload killed half-way leaves nothing under the final name; an abandoned multipart
upload is invisible but billed until a lifecycle rule aborts it (``docs/distributed.md``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ipmix_cli.errors import RemoteError, one_line
from ipmix_cli.remote.url import ObjectURL

T = TypeVar("T")

DEFAULT_TRIES = 4
DEFAULT_BACKOFF_S = 0.5
HEAD_THREADS = 16  # metadata requests in flight when a resume looks at thousands of shards
_STORES: dict[tuple[int, str], Any] = {}
_STORES_LOCK = threading.Lock()


def _new_lock_in_child() -> None:
    """A forked child (a DataLoader worker) gets a fresh lock: another thread of the parent
    (a reader's prefetch) may have held it at the fork, and nobody would release it there."""
    global _STORES_LOCK
    _STORES_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


def tries() -> int:
    return max(1, int(os.environ.get("IPMIX_S3_TRIES", DEFAULT_TRIES)))


def backoff_s() -> float:
    return max(0.0, float(os.environ.get("IPMIX_S3_BACKOFF", DEFAULT_BACKOFF_S)))


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or a HEAD says of one object."""

    size: int
    etag: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


def _s3fs() -> Any:
    try:
        import s3fs
    except ImportError:
        raise RemoteError("s3:// locations need s3fs: pip install 'ipmix[s3]'") from None
    return s3fs


def filesystem() -> Any:
    """This process's s3fs file system (one per process: s3fs runs its requests on an event
    loop thread, which a forked child does not inherit). Listings are not cached: a resume
    and a reader must see the bucket as it is now."""
    key = (os.getpid(), os.environ.get("AWS_ENDPOINT_URL", ""))
    with _STORES_LOCK:
        fs = _STORES.get(key)
        if fs is None:
            fs = _s3fs().S3FileSystem(
                skip_instance_cache=True,
                use_listings_cache=False,
                config_kwargs={
                    # one attempt: botocore's `max_attempts` counts retries (1 gave 2
                    # requests and a random back-off of up to a second), `total_max_attempts`
                    # counts requests
                    "retries": {"total_max_attempts": 1, "mode": "standard"},
                    "connect_timeout": 10,
                    "read_timeout": 60,
                },
            )
            fs.retries = 1  # s3fs's own ladder off: ours retries whole objects
            fs.loop.set_exception_handler(_quiet_abandoned_requests)
            _STORES[key] = fs
        return fs


def _quiet_abandoned_requests(loop: Any, context: dict[str, Any]) -> None:
    """When a connection drops, aiohttp leaves the request's body-writing task with its own
    copy of the error, which asyncio prints as a multi-line "Task exception was never
    retrieved" on stderr. The failure itself reaches us through the request (and becomes one
    line); only these orphaned copies are dropped, anything else goes to asyncio's handler."""
    error = context.get("exception")
    if isinstance(error, (ConnectionError, OSError, TimeoutError)) or (
        error is not None and type(error).__module__.startswith("aiohttp")
    ):
        return
    loop.default_exception_handler(context)


def _endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL") or "the default AWS endpoint"


def _transient(error: BaseException) -> bool:
    """Whether trying again may help: the network, timeouts, the server's 5xx and throttling."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    name = type(error).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError", "NoRegionError"):
        return False
    if name in (
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ResponseStreamingError",
        "IncompleteReadError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ClientConnectorError",
        "ClientOSError",
        "TimeoutError",
    ):
        return True
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = response.get("Error", {}).get("Code", "")
        return status >= 500 or code in ("SlowDown", "RequestTimeout", "Throttling")
    return isinstance(error, (ConnectionError, TimeoutError))


WRITE_BLOCK = 1 << 20
"""Bytes a download writes at once (a multiple of the page size)."""


async def _get_object_to_file(fs: Any, bucket: str, key: str, local: str) -> None:
    """One GET of ``bucket/key`` written to ``local`` in aligned blocks of ``WRITE_BLOCK``;
    objects above s3fs's block size go through s3fs's parallel ranged GETs (which write whole
    aligned blocks too).

    Why not s3fs's ``get_file`` for all: it writes each piece as the socket hands it over
    (sizes like 65,000 bytes, unaligned), and the page cache then holds the file in small
    pages: a shard downloaded that way read 10 % slower through a memory map (every warm epoch
    from a shard cache) than the same bytes written in aligned blocks."""
    reply = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    body, length = reply["Body"], reply.get("ContentLength")
    if length and length > fs.default_block_size and fs.max_concurrency > 1:
        body.close()
        await fs._get_file(f"{bucket}/{key}", local)
        return
    try:
        with open(local, "wb", buffering=0) as handle:
            block = memoryview(bytearray(WRITE_BLOCK))  # reused: no copy grows or shrinks
            filled = 0
            while chunk := await body.read(WRITE_BLOCK):
                piece, at = memoryview(chunk), 0
                while at < len(piece):
                    take = min(WRITE_BLOCK - filled, len(piece) - at)
                    block[filled : filled + take] = piece[at : at + take]
                    filled, at = filled + take, at + take
                    if filled == WRITE_BLOCK:
                        _write_all(handle, block, filled)
                        filled = 0
            _write_all(handle, block, filled)
    finally:
        body.close()


def _write_all(handle: Any, data: memoryview, size: int) -> None:
    """The first ``size`` bytes of ``data`` to the unbuffered ``handle`` (a raw write may
    take fewer bytes than it is given)."""
    done = 0
    while done < size:
        done += handle.write(data[done:size])


def remote_error(url: ObjectURL | str, error: BaseException, attempts: int = 1) -> RemoteError:
    """The one line for a failed operation on ``url``."""
    name = type(error).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        problem = (
            "no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE), as for the aws CLI"
        )
    elif name == "NoRegionError":
        problem = "no AWS region configured; set AWS_DEFAULT_REGION"
    elif isinstance(error, FileNotFoundError):
        text = str(error)
        problem = "the bucket does not exist" if "bucket" in text.lower() else "object is missing"
    elif isinstance(error, PermissionError):
        problem = f"access denied ({one_line(error, 120)})"
    elif _transient(error):
        tried = f" after {attempts} tries" if attempts > 1 else ""
        problem = f"cannot reach the object store at {_endpoint()}{tried}: {one_line(error, 160)}"
    else:
        problem = f"{name}: {one_line(error, 200)}"
    return RemoteError(str(url), problem)


def retrying(url: ObjectURL | str, operation: Callable[[], T]) -> T:
    """``operation()``, tried again with back-off while its failure is transient; any failure
    left is raised as one :class:`RemoteError` line naming ``url``."""
    limit, delay = tries(), backoff_s()
    for attempt in range(1, limit + 1):
        try:
            return operation()
        except RemoteError:
            raise
        except Exception as error:  # noqa: BLE001 - every library error becomes one line
            if attempt == limit or not _transient(error):
                raise remote_error(url, error, attempt) from None
            time.sleep(delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover


class ObjectStore:
    """The objects of one bucket. Picklable (it holds only the bucket's name): a dask worker
    or a DataLoader worker rebuilds its own connection."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket

    def url(self, key: str) -> ObjectURL:
        return ObjectURL(self.bucket, key)

    @property
    def fs(self) -> Any:
        return filesystem()

    # -- checks ----------------------------------------------------------------------------
    def check_writable(self, key: str) -> None:
        """Fail now, in one line, on what would fail at the first upload: missing credentials,
        an unreachable store, a bucket that does not exist or that this identity may not
        list or write to (a tiny probe object is written and removed)."""
        url = self.url(key)
        probe = f"{key}.ipmix-probe-{os.getpid()}-{time.monotonic_ns()}"

        def check() -> None:
            try:
                self.fs.call_s3("head_bucket", Bucket=self.bucket)
            except FileNotFoundError:
                raise FileNotFoundError(f"bucket {self.bucket} does not exist") from None
            self.fs.pipe_file(f"{self.bucket}/{probe}", b"")
            self.fs.rm_file(f"{self.bucket}/{probe}")

        retrying(url, check)

    # -- whole objects ---------------------------------------------------------------------
    def put_file(self, local: Path, key: str, metadata: Mapping[str, str] | None = None) -> None:
        """Upload ``local`` as ``key`` in one object (S3 shows it only once complete)."""
        extra = {"Metadata": dict(metadata)} if metadata else {}
        retrying(
            self.url(key), lambda: self.fs.put_file(str(local), f"{self.bucket}/{key}", **extra)
        )

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        extra = {"Metadata": dict(metadata)} if metadata else {}
        retrying(self.url(key), lambda: self.fs.pipe_file(f"{self.bucket}/{key}", data, **extra))

    def get_file(self, key: str, local: Path) -> None:
        """Download ``key`` to ``local`` (the caller's temporary name), whole; a transfer that
        broke off is started again."""

        def call() -> None:
            from fsspec.asyn import sync

            fs = self.fs
            sync(fs.loop, _get_object_to_file, fs, self.bucket, key, str(local))

        retrying(self.url(key), call)

    def get_bytes(self, key: str) -> bytes:
        return retrying(self.url(key), lambda: self.fs.cat_file(f"{self.bucket}/{key}"))

    def head(self, key: str) -> ObjectInfo | None:
        """Size, ETag and user metadata of ``key``; ``None`` if there is no such object."""

        def call() -> ObjectInfo | None:
            try:
                reply = self.fs.call_s3("head_object", Bucket=self.bucket, Key=key)
            except FileNotFoundError:
                return None
            return ObjectInfo(
                int(reply["ContentLength"]),
                str(reply.get("ETag", "")),
                dict(reply.get("Metadata") or {}),
            )

        return retrying(self.url(key), call)

    def heads(self, keys: Iterable[str]) -> dict[str, ObjectInfo | None]:
        """:meth:`head` of many keys, ``HEAD_THREADS`` requests in flight."""
        keys = list(keys)
        with ThreadPoolExecutor(min(HEAD_THREADS, max(1, len(keys)))) as pool:
            return dict(zip(keys, pool.map(self.head, keys), strict=True))

    def list(self, prefix: str) -> dict[str, int]:
        """Every object under ``prefix`` (a folder-like key, recursively): key -> size."""

        def call() -> dict[str, int]:
            found = self.fs.find(f"{self.bucket}/{prefix.rstrip('/')}/", detail=True)
            start = len(self.bucket) + 1
            return {name[start:]: int(info["size"]) for name, info in found.items()}

        return retrying(self.url(prefix), call)

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def delete(self, keys: Iterable[str]) -> None:
        """Remove ``keys`` (missing ones are fine)."""
        paths = [f"{self.bucket}/{k}" for k in keys]
        if paths:
            retrying(self.url(paths[0].split("/", 1)[1]), lambda: self.fs.rm(paths))
