"""DATA OUT: the HDF5 shard format of ``ipmix augment`` outputs, written and read back.

The format is a public interface (``docs/format.md``). One module per job:

* ``layout``: names, dataset names, version, the copy-major row formula;
* ``manifest``: the typed :class:`Manifest` an entry file records, and its reader;
* ``checksum``: what a shard checksum covers and how to recompute it;
* ``attrs``: how values are stored as HDF5 attributes;
* ``shard_info``: one shard's own record, and the resume check;
* ``write``: writing one shard atomically (pending until committed);
* ``entry``: the entry file joining the shards with virtual datasets;
* ``read``: checking an output and opening it for reading;
* ``audit``: ``verify`` and ``inspect`` (``ipmix verify`` and ``ipmix inspect``).

A new codec or dataset goes into ``layout`` (its name), ``write`` (how it is stored), the
readers (``ipmix_cli.readers.shard_io``) and ``docs/format.md``.
"""

from ipmix_cli.shards.audit import VerifyReport, inspect, verify
from ipmix_cli.shards.checksum import CHECKSUM_ORDER, compute_checksum, shard_checksum
from ipmix_cli.shards.entry import write_entry
from ipmix_cli.shards.layout import (
    ENTRY_KIND,
    FORMAT_VERSION,
    JSD_DATASETS,
    SHARD_KIND,
    STANDARD_DATASETS,
    copy_and_source,
    row_of,
    shard_dir,
    shard_filename,
    shard_path,
)
from ipmix_cli.shards.manifest import Manifest, ShardRecord, read_manifest
from ipmix_cli.shards.read import Output, check_output, open_output
from ipmix_cli.shards.shard_info import ShardInfo, read_shard_info, shard_is_valid
from ipmix_cli.shards.write import (
    DEFAULT_CHUNK_BYTES,
    PendingShard,
    write_shard,
    write_shard_pending,
)

__all__ = [
    "CHECKSUM_ORDER",
    "DEFAULT_CHUNK_BYTES",
    "ENTRY_KIND",
    "FORMAT_VERSION",
    "JSD_DATASETS",
    "SHARD_KIND",
    "STANDARD_DATASETS",
    "Manifest",
    "Output",
    "PendingShard",
    "ShardInfo",
    "ShardRecord",
    "VerifyReport",
    "check_output",
    "compute_checksum",
    "copy_and_source",
    "inspect",
    "open_output",
    "read_manifest",
    "read_shard_info",
    "row_of",
    "shard_checksum",
    "shard_dir",
    "shard_filename",
    "shard_is_valid",
    "shard_path",
    "verify",
    "write_entry",
    "write_shard",
    "write_shard_pending",
]
