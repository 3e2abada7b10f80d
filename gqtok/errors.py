"""Error types of gqtok, each tied to the CLI exit code documented in the README.

Every error carries a one-line message that names the offending file and the problem,
so the CLI can print it verbatim and scripts can branch on the exit code.
"""

from __future__ import annotations


class GqtokError(Exception):
    """Base class: a failure that the user can act on (not a bug)."""

    exit_code: int = 1

    def __init__(self, message: str, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class InputError(GqtokError):
    """An input image (or other input file) is missing, unreadable or refused."""

    exit_code = 3


class DecompressionBombError(InputError):
    """An input image has more pixels than the configured limit."""


class FormatError(GqtokError):
    """A .gq file is corrupt, truncated or not a .gq file at all."""

    exit_code = 4


class UnsupportedVersionError(FormatError):
    """A .gq file was written by a newer, unknown format version."""


class ModelError(GqtokError):
    """A model is unavailable, cannot be loaded, or does not match a file."""

    exit_code = 5


class OutputError(GqtokError):
    """An output cannot be written (exists without --overwrite, unwritable folder...)."""

    exit_code = 6


class UsageError(GqtokError):
    """Options or an environment that cannot work together (exit code 2, like a usage error)."""

    exit_code = 2


EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if empty), for one-line errors
    built from library exceptions whose messages span several lines."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
