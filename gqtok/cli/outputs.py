"""The one way CLI commands write results, so every output follows the same rules:

* ``-`` is standard output;
* an output that is one of the command's inputs (also through a link) is refused;
* an existing file is refused unless ``--overwrite``;
* files appear atomically (temp file, then rename or, without ``--overwrite``, a hard link
  that cannot replace a file created meanwhile), so no half-written result is ever left.

Every refusal or failure is an OutputError (exit code 6) that names the output.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gqtok.errors import OutputError

Content = bytes | str | Callable[[Path], None]  # a callable fills the temp file it is given


def _stdout(data: str | bytes) -> None:
    stream = sys.stdout.buffer if isinstance(data, bytes) else sys.stdout
    stream.write(data)
    stream.flush()


def check_output(dst: str | Path, overwrite: bool, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse ``dst`` now, before any work, if writing it later would be refused."""
    if str(dst) == "-":
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


def write_output(
    dst: str | Path, content: Content, overwrite: bool, inputs: Iterable[str | Path] = ()
) -> None:
    """Write one result to ``dst`` under the rules of this module."""
    if str(dst) == "-":
        if callable(content):
            raise ValueError("a file-filling callback cannot write to stdout")
        _stdout(content)
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
        _stdout(line)
