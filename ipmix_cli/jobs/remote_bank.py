"""A fractal bank in a bucket: ``ipmix fractals generate --format h5 --out s3://bucket/bank``,
and ``--mixing-set s3://bucket/bank`` read back by ``ipmix augment``.

The bank is rendered as for a local one into a staging folder (:func:`stage_root`, one per
URL; an interrupted render resumes there with ``--resume``), then goes up as two objects:
``bank/fractals.h5``, then ``bank/manifest.json`` last, so a reader that finds the manifest
finds the images. Only the HDF5 format: a PNG bank is one object per image, thousands of
requests to write and to read for what one object holds. Rendered on this machine (not on
dask workers, whose chunks would land on their own disks): a bank takes seconds to minutes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from ipmix_cli.bank.format import H5_NAME, MANIFEST
from ipmix_cli.errors import BankError, SourceError
from ipmix_cli.fs.atomic import atomic_path
from ipmix_cli.fs.tree import remove_tree
from ipmix_cli.jobs.bank_job import BankSpec, BankSummary, generate_bank
from ipmix_cli.remote.store import ObjectStore
from ipmix_cli.remote.upload import stage_root
from ipmix_cli.remote.url import ObjectURL


def _staging(url: ObjectURL, kind: str) -> Path:
    digest = hashlib.sha256(str(url).encode()).hexdigest()[:16]
    return (stage_root() / kind / digest / url.name).absolute()


def check_remote_bank(spec: BankSpec, url: ObjectURL, backend: str) -> None:
    """What can be refused about a bank for a bucket before anything runs."""
    spec.validate()
    if spec.image_format != "h5":
        raise BankError(
            str(url), "a bank in a bucket must be --format h5 (one object, not one per image)"
        )
    if backend == "dask":  # the workers would write their chunks to their own disks
        raise BankError(
            str(url),
            "a bank for a bucket is rendered by this machine's workers; drop --backend dask "
            "and --scheduler (or render to a shared folder)",
        )


def generate_remote_bank(
    spec: BankSpec,
    url: ObjectURL,
    jobs: int = -1,
    overwrite: bool = False,
    resume: bool = False,
    on_progress: Callable[[int], None] | None = None,
    backend: str = "threads",
    preview: Callable[[Path], None] | None = None,
) -> BankSummary:
    """Render ``spec`` (its ``out`` is ``url``) locally and upload it; ``preview(folder)`` is
    called on the local bank before its staging goes."""
    check_remote_bank(spec, url, backend)
    if overwrite and resume:
        raise BankError(f"{url}: choose one of --overwrite and --resume")
    store = ObjectStore(url.bucket)
    prefix = url.key.rstrip("/")
    store.check_writable(f"{prefix}/{MANIFEST}")
    there = store.list(prefix)
    if there and not overwrite:
        raise BankError(
            str(url), f"{len(there)} objects are there already; pass --overwrite to replace them"
        )
    local = _staging(url, "bank")
    local.parent.mkdir(parents=True, exist_ok=True)
    summary = generate_bank(
        dataclasses.replace(spec, out=local),
        jobs=jobs,
        overwrite=not resume,
        resume=resume,
        on_progress=on_progress,
        backend=backend,
    )
    if preview is not None:
        preview(local)
    store.delete(there)
    store.put_file(local / H5_NAME, f"{prefix}/{H5_NAME}")
    store.put_file(local / MANIFEST, f"{prefix}/{MANIFEST}")  # last: the bank is complete
    remove_tree(local)
    return dataclasses.replace(summary, out=url)  # type: ignore[arg-type]


def fetch_bank(url: ObjectURL) -> Path:
    """A local copy of the bank at ``url`` (a bank prefix with ``fractals.h5``, or one HDF5
    object), fetched once into the staging area and reused while the objects are unchanged
    (their ETags name the copy). Errors name the object."""
    store = ObjectStore(url.bucket)
    prefix = url.key.rstrip("/")
    keys = [f"{prefix}/{H5_NAME}", f"{prefix}/{MANIFEST}"]
    heads = store.heads(keys)
    if heads[keys[0]] is None:
        single = store.head(prefix)
        if single is None:
            raise SourceError(str(url), f"no bank there (no {H5_NAME} object under it)")
        keys, heads = [prefix], {prefix: single}
    tags = json.dumps({k: (h.etag, h.size) for k, h in heads.items() if h is not None})
    local = _staging(url, "mixing") / hashlib.sha256(tags.encode()).hexdigest()[:16]
    done = local / ".complete"
    if not done.exists():
        local.mkdir(parents=True, exist_ok=True)
        for key in keys:
            if heads[key] is None:
                continue
            target = local / (H5_NAME if key == prefix else os.path.basename(key))
            with atomic_path(target) as tmp:
                store.get_file(key, tmp)
        done.write_bytes(b"")
        for older in local.parent.iterdir():  # copies of objects since replaced
            if older != local:
                remove_tree(older)
    return local / H5_NAME if keys == [prefix] else local
