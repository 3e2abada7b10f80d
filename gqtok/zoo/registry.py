"""Known models by name: the bundled default and the paper's released checkpoints on the Hub.

A table and nothing else: importing it loads neither torch nor the Hub client, so ``gqtok
models`` and ``--help`` stay instant. Downloading is gqtok.zoo.hub, conversion gqtok.zoo.convert.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from gqtok.quant.config import QuantizerConfig
from gqtok.zoo.paths import cache_dir

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
