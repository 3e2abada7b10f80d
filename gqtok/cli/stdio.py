"""Standard streams the way coreutils treat them: closed, full or broken, never a traceback.

``guard()`` runs first in ``main``: a stream closed at start (``>&-``, ``<&-``) gets /dev/null
on its descriptor, so no file opened later can take fd 0-2 and receive stray output, and a
stand-in that fails with "Bad file descriptor" when the command really uses it. stdout is
wrapped so that a failed write raises ``StdoutError``, which derives from BaseException: the
per-file error handling of batch commands (``except Exception``) cannot mistake a closed pipe
or a full disk on stdout for one file's failure, and the whole command stops (``main`` maps it:
a broken pipe exits 141 without a word, like a coreutils tool killed by SIGPIPE; any other
error is one line and exit code 6). stderr failures are ignored: there is nowhere to report them.
"""

from __future__ import annotations

import errno
import io
import os
import sys
from collections.abc import Callable
from typing import Any

EXIT_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a coreutils tool on a closed pipe


class StdoutError(BaseException):
    """Writing standard output failed; ends the command (see the module docstring)."""

    def __init__(self, code: int | None) -> None:
        self.errno = code
        super().__init__(os.strerror(code) if code else "write error")


class _Closed(io.TextIOBase):
    """Stands in for a standard stream that was closed when gqtok started."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _fail(self, *_: Any) -> Any:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    read = readline = write = _fail

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    @property
    def buffer(self) -> _Closed:
        return self


class _Wrapped:
    """A standard stream whose write errors go to ``failed`` (raise, or ignore)."""

    def __init__(self, stream: Any, failed: Callable[[OSError], None]) -> None:
        self._stream = stream
        self._failed = failed

    def write(self, data: Any) -> int:
        try:
            return self._stream.write(data)
        except OSError as e:
            self._failed(e)
            return len(data)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as e:
            self._failed(e)

    @property
    def buffer(self) -> _Wrapped:
        return _Wrapped(self._stream.buffer, self._failed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _raise(e: OSError) -> None:
    raise StdoutError(e.errno) from None


def _ignore(e: OSError) -> None:
    pass


def _reserve(fd: int) -> bool:
    """Put /dev/null on a closed standard descriptor; True if it was closed."""
    try:
        os.fstat(fd)
        return False
    except OSError:
        pass
    null = os.open(os.devnull, os.O_RDWR)
    if null != fd:
        os.dup2(null, fd)
        os.close(null)
    return True


def guard() -> None:
    """Make the standard streams safe for the rest of the run (see the module docstring)."""
    closed = {name: _reserve(fd) for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr"))}
    if closed["stdin"] or sys.stdin is None:
        sys.stdin = _Closed("<stdin>")
    if closed["stdout"] or sys.stdout is None:
        sys.stdout = _Closed("<stdout>")
    if closed["stderr"] or sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    for stream in (sys.stdout, sys.stderr):  # e.g. PYTHONIOENCODING=ascii: "\xb2", no crash
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    sys.stdout = _Wrapped(sys.stdout, _raise)
    sys.stderr = _Wrapped(sys.stderr, _ignore)  # nowhere left to report a stderr failure


def write(data: str | bytes) -> None:
    """Text or bytes to stdout, flushed (records and results must not wait in a buffer)."""
    stream = sys.stdout.buffer if isinstance(data, bytes) else sys.stdout
    stream.write(data)
    stream.flush()


def stdout_closed() -> bool:
    """stdout was closed when gqtok started: a command that would write there can fail early."""
    stream = getattr(sys.stdout, "_stream", sys.stdout)
    return isinstance(stream, _Closed)


def silence() -> None:
    """After a stdout failure: point fd 1 at /dev/null, so the interpreter's final flush of
    what is still buffered cannot fail again and print "Exception ignored"."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    except OSError:
        pass
