"""``--classes FILE``: which class folders an image-folder input uses, in which label order,
and (optionally) a human label for each.

Why a file: a folder's classes are otherwise its sorted subfolder names, which is what
torchvision's ``ImageFolder`` does, but a user often needs the order of an existing model's
head, a subset (100 of ImageNet's 1000 classes), or readable names next to WordNet ids.

Accepted forms (the label id is the position, from 0):

* text, one class folder per line; blank lines and lines starting with ``#`` are ignored. A
  line may carry a human label after the folder name, separated by a tab, or by a space when
  the first word is the folder (ImageNet's ``LOC_synset_mapping.txt``:
  ``n01440764 tench, Tinca tinca``). A line that is exactly a folder's name is that folder,
  spaces included.
* JSON: a list of folder names; an object ``{folder: label id}`` (ids 0..K-1, each once); or
  an object ``{folder: human label}`` in label order.

Every name must be a class folder of the input: a typo is an error at the start naming the
file and line, not a silently missing class. Folders the map does not list are left out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ipmix_cli.errors import SourceError

__all__ = ["ClassMap", "read_class_map"]

_MAX_BYTES = 64 << 20  # far above any real class list; a wrong file is refused before reading


@dataclass(frozen=True)
class ClassMap:
    """The parsed file: ``entries`` are ``(line or position, text, label)`` to be resolved
    against the input's class folders by :meth:`resolve`."""

    path: Path
    entries: tuple[tuple[int, str, str | None], ...]
    exact: bool  # JSON: names are folder names as written; text: may carry a label after it

    def resolve(self, folders: list[str]) -> tuple[list[str], list[str]]:
        """``(folder names in label order, human labels)`` for an input whose class folders are
        ``folders``; a human label defaults to the folder name."""
        available = set(folders)
        names: list[str] = []
        labels: list[str] = []
        for where, text, label in self.entries:
            name = text
            if not self.exact and text not in available:
                head, sep, tail = text.partition("\t")
                if not sep:
                    head, sep, tail = text.partition(" ")
                if sep and head in available:
                    name, label = head, tail.strip() or None
            if name not in available:
                near = ", ".join(sorted(folders)[:3])
                raise SourceError(
                    self.path,
                    f"{self._where(where)}: no class folder {name!r} in the input "
                    f"({len(folders)} class folders, e.g. {near})",
                )
            if name in names:
                raise SourceError(
                    self.path, f"{self._where(where)}: class {name!r} is listed twice"
                )
            names.append(name)
            labels.append(label if label is not None else name)
        return names, labels

    def _where(self, where: int) -> str:
        return f"entry {where}" if self.exact else f"line {where}"


def read_class_map(path: str | os.PathLike[str]) -> ClassMap:
    """Parse ``path`` (text or JSON; see the module docstring); errors name the file."""
    p = Path(path).absolute()
    try:
        if p.is_dir():
            raise SourceError(
                p, "--classes needs a file (one class per line, or JSON), not a folder"
            )
        if p.stat().st_size > _MAX_BYTES:
            raise SourceError(p, "--classes file is larger than 64 MiB; is it the right file?")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise SourceError(p, "--classes file does not exist") from None
    except OSError as error:
        raise SourceError(p, f"cannot read --classes file ({error.strerror or error})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SourceError(p, f"--classes file is not UTF-8 text (byte {error.start})") from None
    if text.lstrip().startswith(("[", "{")):
        entries = _json_entries(p, text)
        exact = True
    else:
        entries = tuple(
            (number, line.strip(), None)
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#")
        )
        exact = False
    if not entries:
        raise SourceError(p, "--classes file lists no classes")
    return ClassMap(p, entries, exact)


def _json_entries(path: Path, text: str) -> tuple[tuple[int, str, str | None], ...]:
    try:
        data = json.loads(text)
    except ValueError as error:
        raise SourceError(path, f"--classes file is not valid JSON ({error})") from None
    if isinstance(data, list):
        if not all(isinstance(name, str) for name in data):
            raise SourceError(path, "a JSON --classes list must hold folder names (strings)")
        return tuple((i, name, None) for i, name in enumerate(data))
    if not isinstance(data, dict):
        raise SourceError(path, "--classes JSON must be a list of names or an object")
    values = list(data.values())
    if all(isinstance(v, str) for v in values):
        return tuple((i, name, label) for i, (name, label) in enumerate(data.items()))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if sorted(values) != list(range(len(values))):
            raise SourceError(path, f"--classes label ids must be 0..{len(values) - 1}, each once")
        ordered = sorted(data.items(), key=lambda item: item[1])
        return tuple((i, name, None) for name, i in ordered)
    raise SourceError(
        path, "a JSON --classes object maps each folder to a label id or to a human label"
    )
