"""The one way CLI commands write results, so every output follows the same rules:

* ``-`` is standard output;
* an output that is one of the command's inputs (also through a link) is refused;
* an existing file is refused unless ``--overwrite``;
* files appear atomically (temp file, then rename or, without ``--overwrite``, a hard link
  that cannot replace a file created meanwhile), so no half-written result is ever left.

Every refusal or failure is an OutputError (exit code 6) that names the output.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gqtok.cli import stdio
from gqtok.errors import OutputError

Content = bytes | str | Callable[[Path], None]  # a callable fills the temp file it is given


def check_output(dst: str | Path, overwrite: bool, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse ``dst`` now, before any work, if writing it later would be refused."""
    if str(dst) == "-":
        if stdio.stdout_closed():
            raise OutputError(os.strerror(errno.EBADF), "<stdout>")
        return
    path = Path(dst)
    if path.is_dir():
        raise OutputError("is a folder", str(dst))
    if not (path.exists() or path.is_symlink()):
        return  # nothing there: it can be neither an input nor an existing file
    from gqtok.io.files import same_file_guard

    for src in inputs:
        if str(src) != "-":
            same_file_guard(Path(src), path)
    if not overwrite:
        raise OutputError("exists (use --overwrite)", str(dst))


def check_folder(dst: str | Path) -> None:
    """Refuse now an output whose folder cannot be created or written in, for commands that
    write only after a long run; creates the folder."""
    if str(dst) == "-":
        return
    folder = Path(dst).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise OutputError(f"cannot write in {str(folder)!r} ({reason})", str(dst)) from None


def write_output(
    dst: str | Path, content: Content, overwrite: bool, inputs: Iterable[str | Path] = ()
) -> None:
    """Write one result to ``dst`` under the rules of this module."""
    if str(dst) == "-":
        if callable(content):
            raise ValueError("a file-filling callback cannot write to stdout")
        stdio.write(content)
        return
    from gqtok.io.files import atomic_write, atomic_write_bytes

    check_output(dst, overwrite, inputs)
    if callable(content):
        atomic_write(Path(dst), content, overwrite=overwrite)
    else:
        data = content.encode() if isinstance(content, str) else content
        atomic_write_bytes(Path(dst), data, overwrite=overwrite)


def emit(record: dict[str, Any], to_stderr: bool = False) -> None:
    """One JSON record, one line: on stdout, or stderr where stdout carries image data."""
    line = json.dumps(record) + "\n"
    if to_stderr:
        from gqtok.cli.ui import say

        say(line.rstrip("\n"))
    else:
        stdio.write(line)
