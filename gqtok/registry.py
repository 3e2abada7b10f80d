"""Known models by name: the paper's released checkpoints on the Hugging Face Hub.

``ensure(name)`` returns a gqtok model file for a released model: a converted copy in gqtok's
cache when there is one, else the checkpoint (a file dropped into the cache's ``downloads``
folder, or ``hf_hub_download`` through the Hub cache, honouring HF_HOME, HF_HUB_CACHE,
HF_ENDPOINT and HF_HUB_OFFLINE) converted once to safetensors, so later runs never unpickle.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelError
from .model import QuantizerConfig

HUB_REPO = "xutongda/GQModel"
# Not pinned to a commit yet: the repo could not be inspected when this table was written.
# Replace with the commit sha once the files are verified; it names the cached conversion.
HUB_REVISION = "main"


@dataclass(frozen=True)
class Entry:
    """A released model: where its checkpoint lives and the settings it was trained with."""

    name: str
    arch: str
    dim: int
    bpp: float
    repo: str | None = HUB_REPO  # None: bundled with gqtok, nothing to download
    filename: str = ""
    revision: str = HUB_REVISION
    size: int = 65536
    seed: int = 42
    beta: float = 1.0
    heads: int | None = None  # ViT only: not recoverable from the weights
    filename_verified: bool = False  # True where the upstream README names the file
    description: str = ""

    def quantizer(self) -> QuantizerConfig:
        return QuantizerConfig(self.dim, self.size, self.seed, self.beta)


def _released(name: str, arch: str, dim: int, verified: bool = False) -> Entry:
    family = "SD3-style UNet f8" if arch == "unet" else "BSQ-ViT-B/8, 256x256 tiles"
    bpp = 4 / dim
    return Entry(
        name=name,
        arch=arch,
        dim=dim,
        bpp=bpp,
        filename=f"{name}.ckpt",
        heads=12 if arch == "vit" else None,
        filename_verified=verified,
        description=f"paper release, {family}, G={dim}, {bpp:.2f} bpp before entropy coding",
    )


ENTRIES: dict[str, Entry] = {
    "default": Entry(
        name="default",
        arch="unet",
        dim=16,
        bpp=0.25,
        repo=None,
        filename="default.safetensors",
        description="bundled small CPU model (gqtok weights folder)",
    ),
    # The upstream README names only sd3unet_gq_0.25.ckpt; the other five file names are
    # assumed from the config names (configs/<name>.yaml) and may differ on the Hub.
    "sd3unet_gq_0.25": _released("sd3unet_gq_0.25", "unet", 16, verified=True),
    "sd3unet_gq_0.50": _released("sd3unet_gq_0.50", "unet", 8),
    "sd3unet_gq_1.00": _released("sd3unet_gq_1.00", "unet", 4),
    "bsqvit_gq_0.25": _released("bsqvit_gq_0.25", "vit", 16),
    "bsqvit_gq_0.50": _released("bsqvit_gq_0.50", "vit", 8),
    "bsqvit_gq_1.00": _released("bsqvit_gq_1.00", "vit", 4),
}


def released_names() -> list[str]:
    return [n for n, e in ENTRIES.items() if e.repo]


def register(entry: Entry) -> None:
    """Add or replace a known model (e.g. a mirror, or another pinned revision)."""
    ENTRIES[entry.name] = entry


def entry_for_file(filename: str) -> Entry | None:
    """The entry whose checkpoint file (or name) this is, so its settings apply to it."""
    for entry in ENTRIES.values():
        if entry.repo and filename in (entry.filename, entry.name):
            return entry
    stem = Path(filename).stem
    return ENTRIES.get(stem) if stem in ENTRIES and ENTRIES[stem].repo else None


def cache_dir() -> Path:
    """gqtok's own cache: $GQTOK_CACHE, else $XDG_CACHE_HOME/gqtok, else ~/.cache/gqtok."""
    env = os.environ.get("GQTOK_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "gqtok"


def pinned_revision(entry: Entry) -> str:
    """$GQTOK_HF_REVISION (a branch, tag or commit) pins every download; else the entry's."""
    return os.environ.get("GQTOK_HF_REVISION") or entry.revision


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def converted_path(entry: Entry) -> Path:
    return cache_dir() / "models" / f"{entry.name}-{_safe(pinned_revision(entry))}.safetensors"


def dropin_path(entry: Entry) -> Path:
    """Where a user may put a checkpoint downloaded by other means."""
    return cache_dir() / "downloads" / entry.filename


def is_available(name: str) -> bool:
    """Usable without network: bundled, converted, or its checkpoint already on disk."""
    entry = ENTRIES[name]
    if entry.repo is None:
        from .model import weights_dirs

        return any((d / entry.filename).exists() for d in weights_dirs())
    return converted_path(entry).exists() or _local_checkpoint(entry) is not None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_settings() -> dict[str, Any]:
    """Endpoint, cache and offline flag read from the environment at call time."""
    cache = os.environ.get("HF_HUB_CACHE")
    if not cache:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
        )
        cache = os.path.join(home, "hub")
    offline = _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(
        os.environ.get("TRANSFORMERS_OFFLINE")
    )
    endpoint = os.environ.get("HF_ENDPOINT") or None
    return {
        "cache_dir": os.path.expanduser(os.path.expandvars(cache)),
        "offline": offline,
        "endpoint": endpoint.rstrip("/") if endpoint else None,
    }


def _hf_download(entry: Entry, local_only: bool) -> tuple[Path, str | None]:
    """(path, commit) of the checkpoint in the Hub cache, downloading unless local_only."""
    from huggingface_hub import hf_hub_download

    hub = hub_settings()
    assert entry.repo is not None
    path = Path(
        hf_hub_download(
            entry.repo,
            entry.filename,
            revision=pinned_revision(entry),
            cache_dir=hub["cache_dir"],
            endpoint=hub["endpoint"],
            local_files_only=local_only or hub["offline"],
        )
    )
    commit = path.parent.name if path.parent.parent.name == "snapshots" else None
    return path, commit


def _local_checkpoint(entry: Entry) -> Path | None:
    drop = dropin_path(entry)
    if drop.is_file():
        return drop
    try:
        return _hf_download(entry, local_only=True)[0]
    except Exception:  # noqa: BLE001 - not in the Hub cache
        return None


def _unavailable(entry: Entry, reason: str) -> ModelError:
    return ModelError(
        f"released model {entry.name!r} is not available ({reason}): run"
        f" `hf download {entry.repo} {entry.filename}` where the Hub is reachable (same"
        f" HF_HOME), or place the file at {dropin_path(entry)}, or pass --model PATH"
    )


def fetch_checkpoint(entry: Entry) -> tuple[Path, dict[str, Any]]:
    """The checkpoint file of a released model and where it came from; ModelError if none."""
    drop = dropin_path(entry)
    if drop.is_file():
        return drop, {"file": entry.filename, "from": str(drop)}
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path, commit = _hf_download(entry, local_only=False)
    except LocalEntryNotFoundError:
        why = "offline (HF_HUB_OFFLINE)" if hub_settings()["offline"] else "Hub unreachable"
        raise _unavailable(entry, f"{why} and not in the Hub cache") from None
    except (EntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{entry.repo} has no {entry.filename} at revision {pinned_revision(entry)} ({first});"
            " download the checkpoint yourself and pass --model PATH"
        ) from None
    except Exception as exc:  # noqa: BLE001 - network, disk, HTTP errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _unavailable(entry, f"download failed: {first}") from None
    origin = {"repo": entry.repo, "file": entry.filename, "revision": pinned_revision(entry)}
    if commit:
        origin["commit"] = commit
    return path, origin


def ensure(name: str, trust_pickle: bool = False) -> Path:
    """A gqtok model file for a released model (download and convert on first use)."""
    if name not in ENTRIES:
        raise ModelError(f"unknown model {name!r} (released: {', '.join(released_names())})")
    entry = ENTRIES[name]
    if entry.repo is None:
        from .model import resolve_model_path

        return resolve_model_path(entry.name)
    out = converted_path(entry)
    if out.exists():
        return out
    ckpt, origin = fetch_checkpoint(entry)
    from .checkpoint import convert_checkpoint

    convert_checkpoint(
        ckpt,
        out,
        dim=entry.dim,
        size=entry.size,
        seed=entry.seed,
        beta=entry.beta,
        heads=entry.heads,
        name=entry.name,
        trust_pickle=trust_pickle,
        origin=origin,
    )
    return out
