"""Finding and verifying metric weight files that ship inside installed wheels.

The wheels' own Python code imports heavy or undeclared packages (torchvision, cv2, IPython), so
their files are located with ``importlib.util.find_spec`` (which does not import the package)
and read directly. Every file is checked by sha256 first: a metric computed with silently
different weights would be a wrong number that looks right.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

from gqtok.errors import ModelError


class MetricUnavailable(Exception):
    """A metric cannot be computed offline here; the message says why and how to fix it."""


class WeightsMismatch(ModelError):
    """A weight file exists but is not the published one (corrupt, tampered, other version)."""


def package_dir(package: str, pin: str) -> Path:
    """Folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MetricUnavailable(
            f"{pin} is not installed (pip install --no-deps {pin}, or scripts/install_metrics.sh)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=16)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    """sha256 of a file, cached per (path, size, mtime) so large files are hashed once."""
    st = path.stat()
    return _digest(path, st.st_size, st.st_mtime_ns)


def verify(path: Path, expected: str) -> Path:
    """Return path if its sha256 starts with ``expected`` (a full digest or a hub-style prefix)."""
    if not path.is_file():
        raise MetricUnavailable(f"{path} is missing")
    digest = sha256_file(path)
    if not digest.startswith(expected.lower()):
        raise WeightsMismatch(
            f"sha256 {digest} does not match the published {expected}; refusing to use it",
            str(path),
        )
    return path
