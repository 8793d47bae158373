"""The one error type the fractal library raises on purpose.

``fractals`` sits below ``ipmix_cli`` and cannot import its error classes, yet the CLI must tell
a problem the user caused (a bad option, an index out of range, a damaged manifest) from a bug,
and print the former as one line without a traceback. Every such problem is therefore a
:class:`FractalError`. It is a ``ValueError`` too, so callers that already catch ``ValueError``
(and tests written against it) keep working.
"""

from __future__ import annotations

__all__ = ["FractalError", "describe"]


class FractalError(ValueError):
    """A problem with what the caller passed in, not with the library.

    The message is collapsed onto one line (the CLI prints it as-is after a file name, and a
    record can hold text with newlines).
    """

    def __init__(self, message: object) -> None:
        super().__init__(" ".join(str(message).split()))


def describe(value: object, limit: int = 60) -> str:
    """A short ``repr`` of ``value`` for an error message.

    Values come from files the user may not have written (a manifest), so they can be huge or
    span lines; an error message must stay one readable line.
    """
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
