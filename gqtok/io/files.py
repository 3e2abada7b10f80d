"""File input and output that never leaves a half-written result behind.

Outputs appear all at once (temp file + rename), so an interrupted batch cannot leave a
truncated .gq or image that later looks valid; every OS failure becomes a one-line error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from gqtok.errors import InputError, OutputError

# File name endings that folder inputs (batch encode, eval, export, training data) pick up.
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def read_input_bytes(path_or_dash: str | os.PathLike[str], name: str | None = None) -> bytes:
    """Read a whole input ("-" is stdin) with OS errors turned into InputError naming
    ``name`` (default: the path)."""
    if os.fspath(path_or_dash) == "-":
        try:
            return sys.stdin.buffer.read()
        except OSError as e:
            raise InputError(f"cannot read ({_reason(e)})", name or "<stdin>") from None
    path = os.fspath(path_or_dash)
    name = name or path
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError("no such file", name) from None
    except IsADirectoryError:
        raise InputError("is a folder, not a file", name) from None
    except PermissionError:
        raise InputError("permission denied", name) from None
    except OSError as e:
        raise InputError(f"cannot read ({_reason(e)})", name) from None


def same_file_guard(inp: Path, out: Path) -> None:
    """Refuse an output that is the input itself (also via symlinks or hard links)."""
    try:
        same = os.path.samefile(inp, out)
    except OSError:  # one of them does not exist: they cannot be the same file
        return
    if same:
        raise OutputError("would overwrite the input", str(out))


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """Open a fresh hidden temp file; os.open with 0o666 lets the umask set normal permissions."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name in {folder}")


def _sync_folder(folder: Path) -> None:
    """Persist the rename itself; not possible everywhere (Windows), so best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move a finished temp file to its name. Without ``overwrite`` a hard link publishes it,
    which fails if the name exists, so two writers racing for one name cannot both win."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputError("exists (use --overwrite)", str(path)) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if path.exists() or path.is_symlink():  # no hard links here (FAT, some mounts)
            raise OutputError("exists (use --overwrite)", str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def atomic_write(
    path: Path, write: Callable[[Path], None], *, overwrite: bool = False
) -> None:
    """Have ``write`` fill a temp file beside ``path``, then publish it under that name: the
    name holds its old content or all of the new, never a part, and no temp file is left."""
    path = Path(path)
    name = str(path)
    if path.is_dir():
        raise OutputError("is a folder", name)
    if not overwrite and (path.exists() or path.is_symlink()):
        raise OutputError("exists (use --overwrite)", name)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(folder, path.name)
        os.close(fd)
    except OSError as e:
        raise OutputError(f"cannot create a file in {str(folder)!r} ({_reason(e)})", name) from None
    try:
        mode = os.stat(tmp).st_mode & 0o777  # what the umask gave the fresh file
        write(tmp)
        if os.stat(tmp).st_mode & 0o777 != mode:  # the writer replaced it (safetensors: 0600)
            os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _publish(tmp, path, overwrite)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write ({_reason(e)})", name) from None
        raise
    _sync_folder(folder)


def atomic_write_bytes(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write data so that path holds either its old content or all of the new, never a part."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data), overwrite=overwrite)
