"""The versions of everything output bytes depend on, recorded in every manifest.

Bytes are the same on every CPU for the same versions; a new numpy, numba, Pillow, HDF5, zlib or
libdeflate may change them (Pillow's resampling, zlib's and libdeflate's deflate: the fractal
bank's PNGs are deflated by libdeflate, through the ``deflate`` package). Recording the
versions lets a user tell why two outputs differ, and lets ``--resume`` refuse to mix shards
made by different versions.
"""

from __future__ import annotations

import functools
import hashlib
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
    import simplejpeg

    return {
        "ipmix": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "pillow": PIL.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "deflate": deflate_version(),
        "simplejpeg": simplejpeg.__version__,
    }


def deflate_version() -> str:
    """The ``deflate`` package's version and a fingerprint of its libdeflate's output.

    The package does not say which libdeflate it runs (its wheels bundle one, a build from
    source may link the system's), so the fingerprint, the digest of a fixed probe compressed
    at levels 1 and 9, tells two libdeflates apart when their bytes differ.
    """
    import deflate

    probe = b"".join(
        hashlib.sha256(i.to_bytes(4, "little")).digest()[: i % 29] + b"ifs-plasma" * (i % 4)
        for i in range(800)
    )
    out = hashlib.sha256()
    for level in (1, 9):
        out.update(deflate.zlib_compress(probe, level))
    return f"{deflate.__version__} (output {out.hexdigest()[:12]})"
