"""Where gqtok looks for model files and keeps its cache (environment read at call time), and
the model files found there. Cards are read from the safetensors header: no torch."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gqtok.errors import GqtokError, ModelError
from gqtok.format.card import is_decoder_file, read_card

DEFAULT_MODEL = "default"
# Earlier defaults, kept beside the current one so that every .gq file they wrote still decodes
# by the model id in its header (listed by ``gqtok models`` as "retired").
RETIRED_DIR = "retired"
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def weights_dirs() -> list[Path]:
    """Where named models are looked up, in order: $GQTOK_WEIGHTS, then the built-in models.
    Those are the repository's weights/ folder when gqtok runs from a source checkout
    (editable install, PYTHONPATH), else the copy an installed wheel carries (share/gqtok/
    weights); never both, so one model is never listed twice."""
    dirs: list[Path] = []
    env = os.environ.get("GQTOK_WEIGHTS")
    if env:
        dirs.append(Path(env))
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "weights").is_dir():
        dirs.append(checkout / "weights")
    else:
        dirs.append(installed_weights_dir())
    return dirs


@functools.lru_cache(maxsize=1)
def installed_weights_dir() -> Path:
    """share/gqtok/weights of the installed distribution, found through its file list, so
    that a ``--user`` or ``--prefix`` install finds its models too (the wheel carries them as
    data files: pyproject.toml). Falls back to the interpreter's prefix."""
    fallback = Path(sys.prefix) / "share" / "gqtok" / "weights"
    try:
        files = importlib.metadata.distribution("gqtok").files or []
    except importlib.metadata.PackageNotFoundError:
        return fallback
    tail = ("share", "gqtok", "weights")
    for f in files:
        if tuple(f.parts[-4:-1]) == tail:
            return Path(f.locate()).resolve().parent
    return fallback


def cache_dir() -> Path:
    """gqtok's own cache: $GQTOK_CACHE, else $XDG_CACHE_HOME/gqtok, else ~/.cache/gqtok."""
    env = os.environ.get("GQTOK_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "gqtok"


def list_local_models(
    on_error: Callable[[Path, GqtokError], None] | None = None,
) -> list[tuple[Path, dict[str, Any]]]:
    """(path, card) of every model file in the weights folders (and their ``retired/``
    subfolders, after them) whose card is valid (it has passed gqtok.format.card's schema, so
    its fields have the documented types and ranges).
    Decoder files (``<stem>.decoder-<name>.safetensors``) belong to a model and are not models.

    A file that cannot be read or whose card is bad is left out, never an exception; it is
    handed to ``on_error`` (path, one-line ModelError) when given, for a warning.
    """
    seen: set[Path] = set()
    found: list[tuple[Path, dict[str, Any]]] = []
    for d in (sub for top in weights_dirs() for sub in (top, top / RETIRED_DIR)):
        try:
            files = sorted(d.glob("*.safetensors")) if d.is_dir() else []
        except OSError:  # an unreadable weights folder lists nothing
            continue
        for p in files:
            if is_decoder_file(p):
                continue
            try:
                rp = p.resolve()
                if rp in seen:
                    continue
                seen.add(rp)
                found.append((p, read_card(p)))
            except GqtokError as e:
                if on_error is not None:
                    on_error(p, e)
            except Exception as e:  # noqa: BLE001 - an unreadable file is simply not listed
                if on_error is not None:
                    on_error(p, ModelError(f"cannot read model file ({e})", str(p)))
    return found


def local_models_named(
    name: str,
    weights: str = "",
    found: list[tuple[Path, dict[str, Any]]] | None = None,
) -> list[tuple[Path, dict[str, Any]]]:
    """The model files (of ``found``, default list_local_models()) whose card name or file
    stem is ``name``, in search order; with ``weights`` (hex: a full weights sha256 or a prefix
    of one, such as a .gq header's fingerprint) only those whose weights hash starts with it.
    How a file's model id and weights hash lead back to one file, wherever they are used."""
    if found is None:
        found = list_local_models()
    return [
        (p, card)
        for p, card in found
        if name in (card.get("name"), p.stem)
        and str(card.get("weights_sha256", "")).startswith(weights)
    ]


def is_retired(path: Path) -> bool:
    """True for a model file kept only so that old files decode (in a ``retired/`` folder)."""
    return path.parent.name == RETIRED_DIR
