"""What the CLI shows people: safe text, one-line errors, the progress bar, tables on stdout.

Text that comes from files or paths (model ids, card names, file names) goes through
``clean`` before it reaches rich or the terminal: control characters (newline, ESC, ...)
become visible escapes, so a name cannot break a line, a table or the terminal's colours, and
rich markup in it (``[/]``) is escaped. Each failure is one line: ``error: <file>: <problem>``.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

from gqtok.errors import EXIT_PARTIAL, GqtokError, first_line

if TYPE_CHECKING:
    from rich.progress import Progress

err = Console(stderr=True, highlight=False)

# C0 and C1 controls, DEL, Unicode line/paragraph separators and bidirectional overrides
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_live: Progress | None = None  # the bar on screen, if any: lines are printed above it


def _visible(match: re.Match[str]) -> str:
    c = match.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def clean(value: object, markup: bool = True) -> str:
    """``value`` as text that is safe to print: control characters as visible escapes and,
    for rich (``markup``), square brackets escaped."""
    text = _UNSAFE.sub(_visible, str(value))
    return escape(text) if markup else text


def say(text: str) -> None:
    """One plain line on stderr (above the progress bar while one is shown)."""
    line = clean(text, markup=False)
    if _live is not None:
        _live.console.print(line, markup=False, highlight=False, soft_wrap=True)
    else:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def warn(text: str) -> None:
    err.print(f"[yellow]warning:[/] {clean(text)}", soft_wrap=True)


def show(renderable: Any, *lines: str) -> None:
    """A table (or text) on stdout, then plain notes under it."""
    out = Console(highlight=False)
    out.print(renderable)
    for line in lines:
        out.print(clean(line), soft_wrap=True)


def file_error(
    exc: BaseException, name: str, kind: type[GqtokError] = GqtokError, doing: str = "failed"
) -> GqtokError:
    """Any exception of one file's step as a GqtokError that names the file: gqtok's own errors
    keep their message and code (the file name added where they lack one), anything else
    (ValueError, MemoryError... from a library) becomes ``kind``: "<doing> (<what>)"."""
    if isinstance(exc, GqtokError):
        if not name or exc.path is not None or str(exc).startswith(f"{name}:"):
            return exc
        named = copy.copy(exc)
        named.path = name
        named.args = (f"{name}: {exc}",)
        return named
    if isinstance(exc, MemoryError):
        what = "out of memory"
    elif isinstance(exc, OSError) and exc.strerror:
        what = exc.strerror
    else:
        what = f"{type(exc).__name__}: {first_line(exc)}"
    return kind(f"{doing} ({what})", name)


def report(e: GqtokError) -> None:
    say(f"error: {e}")


def fail(
    exc: BaseException, name: str | None = None, kind: type[GqtokError] = GqtokError,
    doing: str = "failed",
) -> typer.Exit:
    """Report an error that ends the command; returns the Exit to raise (its exit code)."""
    e = file_error(exc, name or "", kind, doing)
    report(e)
    return typer.Exit(e.exit_code)


class Failures:
    """The failed files of a batch: each is reported as one line when it happens, the run goes
    on, and ``exit`` ends it with the file's own code (one input) or 1 (a batch)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.errors: list[GqtokError] = []

    def __len__(self) -> int:
        return len(self.errors)

    def add(
        self, exc: BaseException, name: str, kind: type[GqtokError] = GqtokError,
        doing: str = "failed",
    ) -> None:
        e = file_error(exc, name, kind, doing)
        self.errors.append(e)
        if not self.quiet:
            report(e)

    def exit(self, total: int, what: str = "file(s)") -> None:
        if not self.errors:
            return
        if total == 1:
            raise typer.Exit(self.errors[0].exit_code)
        if not self.quiet:
            say(f"{len(self.errors)} of {total} {what} failed")
        raise typer.Exit(EXIT_PARTIAL)


class Bar:
    """The progress bar of every command: transient, on stderr, only on a terminal; ``advance``
    per item, ``to`` for a library that reports counts. Does nothing when disabled."""

    def __init__(self, label: str, total: int | None, enabled: bool = True) -> None:
        self._prog: Progress | None = None
        if enabled and (total is None or total > 0) and err.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._prog = Progress(
                TextColumn(f"[bold]{clean(label)}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[name]}"),
                console=err,
                transient=True,
            )
            self._task = self._prog.add_task(label, total=total, name="")

    def __enter__(self) -> Bar:
        global _live
        if self._prog is not None:
            self._prog.start()
            _live = self._prog
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        global _live
        if self._prog is not None:
            self._prog.stop()
            _live = None

    def advance(self, name: str = "", n: int = 1) -> None:
        if self._prog is not None:
            self._prog.update(self._task, advance=n, name=clean(Path(name).name))

    def to(self, done: int, total: int) -> None:
        if self._prog is not None:
            self._prog.update(self._task, completed=done, total=total)
