"""DATA IN: one :class:`Source` interface over image folders, CIFAR pickles, .npz/.npy, HDF5.

Whatever the input, a source hands out ``uint8`` (H, W, 3) RGB arrays, ``int64`` labels and class
names, and it describes itself (``to_dict``, ``fingerprint``) so the output manifest can say
exactly what it was made from.

Sources are sent to worker processes (joblib/loky, dask). They are therefore small when pickled
and hold no open file: HDF5 handles, memory maps and decoded CIFAR batches live in ``_cache_*``
attributes that are dropped by ``__getstate__`` and re-created lazily, per process, on first
read. An HDF5 handle inherited through ``fork`` is never reused (the owning pid is checked).

Formats and how they are recognised (``open_source(path)``):

``folder``
    ``ROOT/<class>/<image>``; class names sorted give label ids 0..C-1; files sorted (by path
    relative to the class folder; nested sub-folders are included). Extensions are matched
    case-insensitively against :data:`ipmix_cli.sources.decode.IMAGE_EXTENSIONS`; hidden files and
    folders (leading ``.``) and ``Thumbs.db`` / ``desktop.ini`` are ignored, as are plain files
    directly in ``ROOT`` (README, licences). Any other file inside a class folder is a
    "non-image file" error (or skipped with ``on_error="skip"``).
``cifar``
    A folder holding the CIFAR "python version" pickles: CIFAR-10 ``data_batch_1..5`` +
    ``test_batch`` (+ ``batches.meta``), or CIFAR-100 ``train`` / ``test`` (+ ``meta``, fine
    labels). ``split`` picks ``"train"`` (default) or ``"test"``. Pickles are loaded with a
    restricted unpickler that only rebuilds numpy arrays, so a hostile file cannot run code.
``npz``
    ``images`` (or ``x``): (N, H, W, 3), (N, H, W, 1) or (N, H, W) uint8; ``labels`` (or ``y``):
    (N,) or (N, 1) integers; optional ``class_names`` (N_classes,) strings.
``npy``
    ``IMAGES.npy`` as above (memory-mapped), labels from ``labels_path=`` or else the sibling
    ``IMAGES_labels.npy`` (same stem plus ``_labels``); optional sibling
    ``IMAGES_class_names.txt`` (one name per line).
``hdf5``
    Datasets ``images`` (or ``x``) and ``labels`` (or ``y``) as above; class names from a
    ``class_names`` attribute on the file (or on the labels dataset). An ipmix output entry file
    is checked first (every shard present, counts match), so a missing shard is an error, never
    a run of black images.

Without class names in the input, names are ``"0" .. str(max_label)``.

Modules: :mod:`~ipmix_cli.sources.base` (the interface), ``folder``, ``cifar``, ``arrays``
(npz, npy, HDF5), ``decode`` (any image file to uint8 RGB), ``detect`` (format detection and
:func:`open_source`), ``mixing_pictures`` (loading a mixing set's pictures). A new input format
is a ``Source`` subclass in a module of its own plus a line in ``detect``.
"""

from ipmix_cli.fs.digest_cache import sha256_file
from ipmix_cli.sources.arrays import ArraySource, Hdf5Source, NpySource, NpzSource
from ipmix_cli.sources.base import Source
from ipmix_cli.sources.cifar import CifarSource
from ipmix_cli.sources.detect import FORMATS, detect_format, open_source
from ipmix_cli.sources.folder import FolderSource
from ipmix_cli.sources.mixing_pictures import open_mixing_set

__all__ = [
    "FORMATS",
    "ArraySource",
    "CifarSource",
    "FolderSource",
    "Hdf5Source",
    "NpySource",
    "NpzSource",
    "Source",
    "detect_format",
    "open_mixing_set",
    "open_source",
    "sha256_file",
]
