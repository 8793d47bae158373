"""ipmix: fast, reproducible IPMix augmentation pre-materialised into HDF5 shards."""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version

STARTED = time.perf_counter()
"""When this process imported ipmix: the dry run counts the start-up a real run pays."""

try:
    __version__ = version("ipmix")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
