"""Where gqtok looks for model files and keeps its cache; environment read at call time."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_MODEL = "default"
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def weights_dirs() -> list[Path]:
    """Where named models are looked up, in order: $GQTOK_WEIGHTS, the repository's weights/
    folder, then the installed share/gqtok/weights."""
    dirs: list[Path] = []
    env = os.environ.get("GQTOK_WEIGHTS")
    if env:
        dirs.append(Path(env))
    dirs.append(Path(__file__).resolve().parents[2] / "weights")
    dirs.append(Path(sys.prefix) / "share" / "gqtok" / "weights")
    return dirs


def cache_dir() -> Path:
    """gqtok's own cache: $GQTOK_CACHE, else $XDG_CACHE_HOME/gqtok, else ~/.cache/gqtok."""
    env = os.environ.get("GQTOK_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "gqtok"
