"""Run ipmix's independent tasks on a dask.distributed cluster through joblib's dask backend.

Users who outgrow one machine already run dask (by hand, or on SLURM through dask-jobqueue), and
joblib, which ipmix uses for local processes, has a dask backend. So the bulk of the tasks goes
through ``joblib.Parallel(return_as="generator_unordered")`` on that backend: results arrive in
completion order (one progress step per finished task), and when a worker dies the scheduler
reruns its tasks on the others. Only two things use the client directly, because joblib cannot
express them: pinning the first task of each host to one worker (below) and a version check.

First task per host: numba compiles every kernel on first use and caches it on disk. Many worker
processes starting at once would each compile the same kernels (about a minute of CPU and 0.45 GB
each) and write the same cache files concurrently; numba writes them atomically, but its index
updates are not locked, and replace-while-read on a network file system is where such schemes
break. So one task runs alone on one worker first
(it compiles and writes the cache), then one task on one worker of every other host (each loads,
or compiles its own host-local cache), and only then everything else, which finds a warm cache.

Tasks must be pure functions of their arguments that write their own output atomically into a
folder every worker sees at the same path: a task that runs twice (a worker presumed dead that
was only slow) then rewrites identical bytes, which is harmless.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import logging
import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import joblib

from ipmix_cli import __version__
from ipmix_cli.errors import DaskError, one_line
from ipmix_cli.versions import byte_versions

if TYPE_CHECKING:  # dask is an optional extra: import it only when the dask backend is used
    from distributed import Client

T = TypeVar("T")
R = TypeVar("R")

CONNECT_TIMEOUT_S = 30.0
"""How long to try reaching ``--scheduler`` before giving up with an error."""

TASK_RETRIES = 1
"""Extra attempts for a task that raised (a transient NFS error, say). A dead worker's tasks are
rerun by the scheduler regardless (up to ``distributed.scheduler.allowed-failures`` times)."""


def _distributed() -> Any:
    """The ``distributed`` module, or a one-line error saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise DaskError(
            "--backend dask needs dask.distributed: pip install 'ipmix[dask]' "
            "(on this machine and on every worker)"
        ) from None
    return distributed


@contextlib.contextmanager
def connect(scheduler: str) -> Iterator[Client]:
    """Connect to a running scheduler and make it the default client for the ``with`` block.

    ``run_unordered(..., backend="dask")`` uses the default client, as joblib's dask backend
    does, so library callers can equally open their own ``distributed.Client``.
    """
    distributed = _distributed()
    try:
        client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=True)
    except (OSError, ValueError, TypeError) as error:  # TimeoutError is an OSError
        raise DaskError(
            f"cannot reach the dask scheduler at {scheduler} ({one_line(error)})"
        ) from None
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Processes started inside the block inherit an ignored SIGINT. A terminal's Ctrl-C goes to
    the whole process group; this way only the parent gets it, stops the job with the usual
    one-line "rerun with --resume" and shuts the local cluster down, instead of every worker
    dumping a KeyboardInterrupt traceback."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not ours to change
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def local_cluster(n_workers: int) -> Iterator[Client]:
    """A throw-away cluster of ``n_workers`` single-threaded worker processes on loopback.

    One thread per process, like loky: the kernels hold the GIL for part of each task, and h5py
    serialises within a process. No dashboard and no fixed port, so runs never collide.
    """
    distributed = _distributed()
    try:
        with _children_ignore_sigint():
            cluster = distributed.LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                # The scheduler's small HTTP server (health, metrics) would take port 8787, or
                # warn when that is taken; any free loopback port will do.
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                # Task errors reach the caller as exceptions; what the scheduler and workers log
                # besides, such as comm races while a Ctrl-C'd cluster shuts down (logged at
                # CRITICAL, with a traceback), is noise on a CLI's stderr: silence all of it.
                silence_logs=logging.CRITICAL + 1,
            )
    except (OSError, RuntimeError) as error:  # e.g. a worker process that cannot start
        raise DaskError(f"cannot start a local dask cluster ({one_line(error)})") from None
    with _quiet_dask_logs(), cluster, distributed.Client(cluster, set_as_default=False) as client:
        yield client


@contextlib.contextmanager
def _quiet_dask_logs() -> Iterator[None]:
    """Silence dask's console output until the local cluster is fully closed.

    ``silence_logs`` only lasts until the cluster's own close, but a Ctrl-C'd scheduler still
    logs comm races (at CRITICAL, with a traceback) while it shuts down, and a client torn down
    mid-close reports "IOLoop is closed" from its finaliser. Neither says anything the user can
    act on, so both stay quiet until this block ends, after the cluster is gone.
    """
    handlers = [
        h for h in logging.getLogger("distributed").handlers if isinstance(h, logging.StreamHandler)
    ]
    levels = [h.level for h in handlers]
    for handler in handlers:
        handler.setLevel(logging.CRITICAL + 1)
    previous_hook = sys.unraisablehook

    def drop_closed_loop_reports(unraisable: Any) -> None:
        if not (
            isinstance(unraisable.exc_value, RuntimeError)
            and "IOLoop is closed" in str(unraisable.exc_value)
        ):
            previous_hook(unraisable)

    sys.unraisablehook = drop_closed_loop_reports
    try:
        yield
    finally:
        gc.collect()  # run the finalisers of a half-closed client while the hook is in place
        sys.unraisablehook = previous_hook
        for handler, level in zip(handlers, levels, strict=True):
            handler.setLevel(level)


def _default_client(distributed: Any) -> Client | None:
    try:
        return distributed.default_client()
    except ValueError:  # no client opened in this process
        return None


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """Hash of the ipmix code that shapes the output bytes, taken once per process.

    Taken at the first call, it describes what this process loaded rather than what is on disk
    now: a long-lived worker that imported ipmix before the code was edited or upgraded (same
    version number, other code) is caught by the comparison in :func:`check_workers`.
    """
    root = Path(__file__).resolve().parents[2]  # holds ipmix_cli/ and fractals/
    digest = hashlib.sha256()
    for package in ("fractals", "ipmix_cli"):
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def worker_environment() -> dict[str, str]:
    """Versions that decide the output bytes; compared between the client and each worker."""
    return {"ipmix code": code_digest(), **byte_versions()}


def check_workers(client: Client) -> None:
    """Fail early, with a readable message, if a worker cannot import ipmix or runs another
    version of it; warn when a library that shapes the bytes (HDF5, zlib...) differs."""
    try:
        remote = client.run(worker_environment)
    except Exception as error:  # an unpicklable/unimportable function surfaces as anything
        raise DaskError(
            f"dask workers cannot run ipmix ({one_line(error)}); install ipmix {__version__} "
            "with the same dependencies on every worker"
        ) from None
    local = worker_environment()
    for worker, versions in sorted(remote.items()):
        if versions["ipmix"] != local["ipmix"]:
            raise DaskError(
                f"dask worker {worker} runs ipmix {versions['ipmix']} but this machine runs "
                f"{local['ipmix']}; install the same version on every worker"
            )
        if versions.get("ipmix code") != local["ipmix code"]:
            raise DaskError(
                f"dask worker {worker} runs other ipmix code than this machine (same version "
                f"{local['ipmix']}): restart the workers after upgrading or editing ipmix, and "
                "install the same build on every host"
            )
        differ = [
            f"{name} {versions.get(name)} (here {value})"
            for name, value in local.items()
            if versions.get(name) != value and name not in ("ipmix", "ipmix code")
        ]
        if differ:
            warnings.warn(
                f"dask worker {worker} has {', '.join(differ)}: its output may differ in bytes "
                "from a local run",
                stacklevel=2,
            )


def one_worker_per_host(client: Client) -> list[str]:
    """One worker address per host, hosts in a stable order; waits for a first worker.

    Waiting has no time limit on purpose: on SLURM the workers may sit in the queue for a
    while, and the progress bar already shows that nothing is done yet.
    """
    client.wait_for_workers(1)
    chosen: dict[str, str] = {}
    for address, info in sorted(client.scheduler_info(n_workers=-1)["workers"].items()):
        chosen.setdefault(info.get("host", address), address)
    return list(chosen.values())


def _pinned(
    client: Client, function: Callable[[T], R], tasks: Sequence[T], workers: Sequence[str]
) -> Iterator[R]:
    """Run ``tasks[i]`` on ``workers[i]`` (or elsewhere if that worker dies), as they finish."""
    distributed = _distributed()
    futures = [
        client.submit(
            function,
            task,
            workers=[worker],
            allow_other_workers=True,
            pure=False,
            retries=TASK_RETRIES,
        )
        for task, worker in zip(tasks, workers, strict=False)
    ]
    for future in distributed.as_completed(futures, loop=client.loop):
        yield future.result()


def _run(client: Client, function: Callable[[T], R], tasks: list[T]) -> Iterator[R]:
    hosts = one_worker_per_host(client)  # waits for a first worker, so the check sees one
    check_workers(client)
    yield from _pinned(client, function, tasks[:1], hosts[:1])
    yield from _pinned(client, function, tasks[1 : len(hosts)], hosts[1:])
    rest = tasks[len(hosts) :]
    if not rest:
        return
    # Built inside the config block (Parallel binds its backend in __init__), iterated outside
    # it so the caller's code between results does not run under a dask joblib config.
    # pre_dispatch="all": the scheduler queues every task, so workers that join later (SLURM
    # jobs leaving the queue) get work too; each task is a few hundred bytes.
    with joblib.parallel_config(backend="dask", client=client, retries=TASK_RETRIES):
        parallel = joblib.Parallel(
            n_jobs=-1, return_as="generator_unordered", batch_size=1, pre_dispatch="all"
        )
    yield from parallel(joblib.delayed(function)(task) for task in rest)


def run_unordered_dask(
    function: Callable[[T], R], tasks: Sequence[T], n_workers: int
) -> Iterator[R]:
    """Yield ``function(task)`` for every task, in completion order, computed on dask workers.

    Uses the default ``distributed.Client`` when one is open (see :func:`connect`); otherwise
    starts a local cluster of ``n_workers`` processes for the duration of the call.
    """
    task_list = list(tasks)
    if not task_list:
        return  # nothing to do: do not start (or even contact) a cluster
    distributed = _distributed()
    try:
        client = _default_client(distributed)
        if client is not None:
            yield from _run(client, function, task_list)
        else:
            with local_cluster(n_workers) as client:
                yield from _run(client, function, task_list)
    except distributed.KilledWorker as error:
        raise DaskError(
            f"{error.allowed_failures + 1} dask workers died in turn while running one task "
            "(out of memory? see the worker logs); finished work is kept: rerun with --resume"
        ) from None
