"""The token shard format of gqtok exports: layout, checksums, reading (docs/tokens.md).

Kept apart from the exporter so that reading shards (data loaders, ``gqtok import``) needs
neither the network nor the image pipeline: a shard is a safetensors file of flat token arrays
with offsets and shapes, plus JSON metadata, and ``manifest.json`` lists the shards.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gqtok.errors import InputError

FORMAT_NAME = "gqtok-tokens"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
META_KEY = "gqtok.tokens"
NPY_ARRAYS = ("tokens", "tokens_flip", "offsets", "shapes", "sizes", "index", "paths")


def token_dtype(codebook_size: int) -> np.dtype:
    return np.dtype(np.uint16) if codebook_size <= 65536 else np.dtype(np.uint32)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def npy_names(index: int) -> dict[str, str]:
    return {k: f"shard-{index:05d}.{k}.npy" for k in NPY_ARRAYS}


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def checksum(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        a = np.ascontiguousarray(tensors[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class Entry:
    """One exported image: its tokens (NG, h, w) and what they decode to."""

    index: int
    path: str
    tokens: np.ndarray
    width: int
    height: int
    tokens_flip: np.ndarray | None = None


def shard_arrays(entries: Sequence[Entry], dtype: np.dtype, flip: bool) -> dict[str, np.ndarray]:
    """Flat token arrays + offsets/shapes/sizes/index of a shard (safetensors tensors)."""
    sizes = [e.tokens.size for e in entries]
    offsets = np.zeros(len(entries) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(sizes, dtype=np.int64)
    out = {
        "tokens": np.concatenate([e.tokens.reshape(-1) for e in entries] or [np.zeros(0)]),
        "offsets": offsets,
        "shapes": np.array([e.tokens.shape for e in entries], dtype=np.int32).reshape(-1, 3),
        "sizes": np.array([(e.width, e.height) for e in entries], dtype=np.int32).reshape(-1, 2),
        "index": np.array([e.index for e in entries], dtype=np.int64),
    }
    out["tokens"] = out["tokens"].astype(dtype)
    if flip:
        flips = [e.tokens_flip.reshape(-1) for e in entries if e.tokens_flip is not None]
        out["tokens_flip"] = np.concatenate(flips or [np.zeros(0)]).astype(dtype)
    return out


def shard_bytes(tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    from safetensors.numpy import save

    meta = {**meta, "checksum": checksum(tensors)}
    return save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


@dataclass
class Shard:
    """A shard as read back: its tensors and metadata."""

    tensors: dict[str, np.ndarray]
    meta: dict[str, Any]

    def entries(self) -> list[Entry]:
        t = self.tensors
        paths = self.meta["paths"]
        out = []
        for i, gi in enumerate(t["index"].tolist()):
            a, b = int(t["offsets"][i]), int(t["offsets"][i + 1])
            shape = tuple(int(s) for s in t["shapes"][i])
            flip = t["tokens_flip"][a:b].reshape(shape) if "tokens_flip" in t else None
            w, h = (int(s) for s in t["sizes"][i])
            out.append(Entry(gi, paths[i], t["tokens"][a:b].reshape(shape), w, h, flip))
        return out


def read_shard(path: str | Path, verify: bool = True) -> Shard:
    """Load a shard; with ``verify`` its checksum must match. Any damage is an InputError."""
    from safetensors import safe_open

    name = str(path)
    try:
        with safe_open(name, framework="np") as f:
            meta = json.loads((f.metadata() or {})[META_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a mapping
    except Exception as e:  # noqa: BLE001 - any unreadable shard is bad input
        raise InputError(f"not a readable token shard ({type(e).__name__}: {e})", name) from None
    if verify and meta.get("checksum") != checksum(tensors):
        raise InputError("token shard checksum mismatch (corrupt file)", name)
    return Shard(tensors, meta)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no manifest.json: not a gqtok token export", str(folder)) from None
    except (OSError, ValueError) as e:
        raise InputError(f"unreadable manifest ({e})", str(path)) from None
    if manifest.get("format") != FORMAT_NAME:
        raise InputError("not a gqtok token export manifest", str(path))
    return manifest


def iter_entries(folder: str | Path) -> Iterator[Entry]:
    """Every exported image of an export folder, in source order."""
    manifest = read_manifest(folder)
    for rec in manifest["shards"]:
        yield from read_shard(Path(folder) / rec["file"]).entries()
