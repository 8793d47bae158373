"""``ROOT/<class>/<image>`` folders (torchvision's ImageFolder layout).

Class names sorted give label ids 0..C-1; files are sorted by path relative to the class folder
(nested sub-folders included). Hidden entries and OS litter are ignored, as are plain files
directly in ``ROOT`` (README, licences); any other non-image file inside a class folder is an
error (or skipped with ``on_error="skip"``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ipmix_cli.errors import DecodeError, IpmixError, SourceError
from ipmix_cli.sources.base import Source, is_hidden, is_ipmix_output, sha256_file
from ipmix_cli.sources.decode import decode_image, is_image_name


def _probe_file(path: Path, full: bool) -> tuple[tuple[int, int] | None, str | None, int, str]:
    """Check one image file: ((h, w) or None, error or None, size in bytes, sha256 or "").

    ``full`` decodes the whole image (catches truncation) and hashes the bytes it read anyway;
    otherwise only the header is read (Pillow's lazy open) for the size.
    """
    name = str(path)
    try:
        if full:
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            image = decode_image(data, name=name)
            return (int(image.shape[0]), int(image.shape[1])), None, len(data), digest
        size = path.stat().st_size
        if size == 0:
            raise DecodeError(name, "empty file (0 bytes), not an image")
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                w, h = img.size
                orientation = img.getexif().get(0x0112, 1)
        except UnidentifiedImageError:
            raise DecodeError(name, "not an image file (Pillow cannot identify it)") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise DecodeError(name, f"corrupt image header ({error})") from None
        if orientation in (5, 6, 7, 8):  # EXIF transposes/rotates by 90 degrees
            h, w = w, h
        return (int(h), int(w)), None, int(size), ""
    except IpmixError as error:
        return None, error.problem, 0, ""
    except OSError as error:
        return None, f"cannot read file ({error.strerror or error})", 0, ""


def _probe_many(root: str, relpaths: list[str], full: bool) -> list[tuple]:
    return [_probe_file(Path(root) / rel, full) for rel in relpaths]


class FolderSource(Source):
    """``ROOT/<class>/<image>`` folders (torchvision ImageFolder layout)."""

    format = "folder"

    def __init__(
        self,
        root: Path,
        *,
        on_error: str = "fail",
        validate: bool = True,
        n_jobs: int = 1,
    ) -> None:
        super().__init__(root)
        self.validate = bool(validate)
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
        candidates: list[tuple[str, int]] = []  # (relative posix path, class id)
        problems: list[tuple[str, str]] = []
        for label, cls in enumerate(classes):
            for rel in self._walk(root, cls):
                if is_image_name(rel):
                    candidates.append((rel, label))
                else:
                    ext = os.path.splitext(rel)[1] or "(none)"
                    problems.append(
                        (rel, f"not an image file (extension {ext} is not an image type)")
                    )
        if not candidates:
            raise SourceError(root, f"no image files in the {len(classes)} class subfolders")

        results = self._probe([rel for rel, _ in candidates], validate, n_jobs)
        kept: list[tuple[str, int]] = []
        kept_sizes: list[tuple[int, int]] = []
        sizes: set[tuple[int, int]] = set()
        hash_lines: list[str] = []
        total_bytes = 0
        for (rel, label), (size, error, nbytes, digest) in zip(candidates, results, strict=True):
            if error is not None:
                problems.append((rel, error))
                continue
            kept.append((rel, label))
            kept_sizes.append(size)
            sizes.add(size)
            total_bytes += nbytes
            hash_lines.append(f"{rel}\t{nbytes}\t{digest}\n")
        problems.sort()  # path order, so "fail" always names the same (first) file
        if problems and on_error == "fail":
            rel, reason = problems[0]
            if len(problems) > 1:
                reason += f" (and {len(problems) - 1} more; on_error='skip' skips them)"
            raise DecodeError(root / rel, reason)
        self.skipped = [(str(root / rel), reason) for rel, reason in problems]
        if not kept:
            raise SourceError(root, f"no readable images ({len(problems)} files skipped)")

        self.class_names = classes
        self._relpaths = "\0".join(rel for rel, _ in kept)  # one str: cheap to pickle
        self.labels = np.fromiter((lab for _, lab in kept), dtype=np.int64, count=len(kept))
        self.image_size = next(iter(sizes)) if len(sizes) == 1 else None
        self._cache_sizes = np.array(kept_sizes, dtype=np.int32).reshape(-1, 2)
        if validate:
            self._fingerprint = self._fingerprint_from(hash_lines, total_bytes)

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

    def _probe(self, relpaths: list[str], full: bool, n_jobs: int) -> list[tuple]:
        if n_jobs == 1 or len(relpaths) < 256:
            return _probe_many(str(self.path), relpaths, full)
        import joblib

        step = max(64, len(relpaths) // (8 * max(1, abs(n_jobs))))
        chunks = [relpaths[i : i + step] for i in range(0, len(relpaths), step)]
        parts = joblib.Parallel(n_jobs=n_jobs)(
            joblib.delayed(_probe_many)(str(self.path), chunk, full) for chunk in chunks
        )
        return [item for part in parts for item in part]

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

    def _fingerprint_from(self, hash_lines: list[str], total_bytes: int) -> dict[str, Any]:
        digest = hashlib.sha256("".join(hash_lines).encode("utf-8", "surrogateescape")).hexdigest()
        return {
            "format": self.format,
            "path": str(self.path),
            "files": len(hash_lines),
            "bytes": total_bytes,
            "sha256": digest,
            "method": "sha256 over '<relative path>\\t<bytes>\\t<file sha256>\\n' per kept file",
        }

    def _compute_fingerprint(self) -> dict[str, Any]:
        lines = []
        total = 0
        for rel in self.relpaths:
            p = self.path / rel
            size = p.stat().st_size
            total += size
            lines.append(f"{rel}\t{size}\t{sha256_file(p)}\n")
        return self._fingerprint_from(lines, total)

    def _options(self) -> dict[str, Any]:
        return {"validate": self.validate}
