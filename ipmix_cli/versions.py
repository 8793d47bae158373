"""The versions of everything output bytes depend on, recorded in every manifest.

Bytes are the same on every CPU for the same versions; a new numpy, numba, Pillow, HDF5 or zlib
may change them (Pillow's resampling, zlib's deflate). Recording the versions lets a user tell
why two outputs differ, and lets ``--resume`` refuse to mix shards made by different versions.
"""

from __future__ import annotations

import functools
import platform
import zlib

from ipmix_cli import __version__


@functools.lru_cache(maxsize=1)
def byte_versions() -> dict[str, str]:
    """``{"ipmix": ..., "python": ..., "numpy": ..., ...}`` for this process."""
    import h5py
    import numba
    import numpy
    import PIL

    return {
        "ipmix": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "pillow": PIL.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
    }
