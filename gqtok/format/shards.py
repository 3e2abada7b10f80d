"""The token shard format of gqtok exports: layout, checksums, reading (docs/tokens.md).

Kept apart from the exporter so that reading shards (data loaders, ``gqtok import``) needs
neither the network nor the image pipeline: a shard is a safetensors file of flat token arrays
with offsets and shapes, plus JSON metadata, and ``manifest.json`` lists the shards.

What is read is checked before it is used: the manifest and a shard's metadata against one
schema each (MANIFEST_SCHEMA, SHARD_SCHEMA), a shard's arrays against each other and against
the model record it carries (every grid fits its offsets, its shape and its image size, and
every token is below K), and every shard of an export against the manifest's record. Damage
of any kind is a one-line InputError naming the file and the field.
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
from gqtok.format import schema as sc
from gqtok.format.container import (
    COLOR_LENGTHS,
    COLOR_VALUES,
    MAX_CODEBOOK_DIM,
    MAX_CODEBOOK_SIZE,
    MAX_SIDE,
    MIN_CODEBOOK_SIZE,
    check_codebook,
    check_model_id,
    check_scale,
)

FORMAT_NAME = "gqtok-tokens"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
META_KEY = "gqtok.tokens"
NPY_ARRAYS = (
    "tokens", "tokens_flip", "offsets", "shapes", "sizes", "image_sizes", "colors", "index",
    "paths",
)
MAX_MANIFEST_BYTES = 1 << 28  # a manifest lists shards; far below this even for huge exports
MAX_PATH_CHARS = 4096


def _no_nul(path: str) -> None:
    if "\x00" in path:
        raise ValueError("contains a NUL character")


_COUNT = sc.integer(0, 1 << 62)
PATH = sc.string(max_len=MAX_PATH_CHARS, extra=_no_nul)
# A shard is named by a bare file name inside the export folder: no separators, no drive.
SHARD_FILE = sc.string(pattern=r"[A-Za-z0-9_.-]{1,200}\.safetensors", max_len=212)
MODEL_RECORD = sc.obj(
    required={
        "id": sc.string(extra=check_model_id),
        "weights_sha256": sc.hexdigits(64),
        "downsample": sc.integer(1, 4096),
        "groups": sc.integer(1, 0xFFFF),
    },
    optional={
        "arch": sc.string(choices=("unet", "vit")),
        "layout": sc.string(choices=("bchw", "blc")),
    },
)
CODEBOOK_RECORD = sc.obj(
    required={
        "dim": sc.integer(1, MAX_CODEBOOK_DIM),
        "size": sc.integer(MIN_CODEBOOK_SIZE, MAX_CODEBOOK_SIZE),
        "seed": sc.integer(0, (1 << 64) - 1),
        "beta": sc.number(),
    },
    optional={"fingerprint": sc.hexdigits(16)},
)
RECORD = {
    "model": MODEL_RECORD,
    "codebook": CODEBOOK_RECORD,
    "dtype": sc.string(choices=("uint16", "uint32")),
}
SKIPPED = sc.array(sc.obj(optional={"index": _COUNT, "path": PATH, "error": sc.string()}))
MANIFEST_SCHEMA = sc.obj(
    required={
        "format": sc.string(choices=(FORMAT_NAME,)),
        "version": sc.integer(1, FORMAT_VERSION),
        **RECORD,
        "shards": sc.array(
            sc.obj(
                required={"file": SHARD_FILE},
                optional={
                    "start": _COUNT,
                    "planned": _COUNT,
                    "count": _COUNT,
                    "skipped": SKIPPED,
                    "npy": sc.array(sc.string()),
                },
            )
        ),
    },
    optional={
        "gqtok_version": sc.string(),
        "protocol": sc.obj(),
        "sources": sc.obj(),
        "shard_size": sc.integer(1, 1 << 62),
        "plan": sc.string(),
        "images": _COUNT,
        "skipped": _COUNT,
        "complete": sc.boolean,
        # written by exports over several processes (gqtok.export, docs/distributed.md)
        "world_size": sc.integer(1, 1 << 30),
        "rank": sc.integer(0, 1 << 30),
    },
)
SHARD_SCHEMA = sc.obj(
    required={**RECORD, "paths": sc.array(PATH)},
    optional={
        "format": sc.integer(1, FORMAT_VERSION),
        "protocol": sc.obj(),
        "plan": sc.string(),
        "shard": _COUNT,
        "start": _COUNT,
        "planned": _COUNT,
        "planned_paths_sha256": sc.string(),
        "skipped": SKIPPED,
        "checksum": sc.hexdigits(64),
    },
)


def validate_record(record: Any) -> dict[str, Any]:
    """``record`` (a manifest or shard metadata) if its model, codebook and dtype records are
    well-formed and agree with each other; SchemaError naming the field otherwise."""
    sc.validate(record, sc.obj(required=RECORD))
    cb = record["codebook"]
    try:
        check_codebook(cb["dim"], cb["size"])
    except ValueError as exc:
        raise sc.SchemaError("codebook", str(exc)) from None
    if record["dtype"] != token_dtype(cb["size"]).name:
        raise sc.SchemaError("dtype", f"must be {token_dtype(cb['size']).name} for K={cb['size']}")
    return record


def check_record(record: Any, name: str | None = None, what: str = "token record") -> dict:
    """``record`` if valid (see validate_record), else a one-line InputError."""
    try:
        return validate_record(record)
    except sc.SchemaError as exc:
        raise InputError(f"bad {what}: {exc}", name) from None


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
    # (width, height) of the image before the protocol's scale (export --quality): the grid
    # decodes to width x height, then resamples to this, as a .gq file of that quality does
    image_size: tuple[int, int] | None = None
    # the colour correction of its .gq file (gqtok.io.color; coded larger only), or ()
    color: tuple[int, ...] = ()


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
    if any(e.image_size is not None for e in entries):
        out["image_sizes"] = np.array(
            [e.image_size or (e.width, e.height) for e in entries], dtype=np.int32
        ).reshape(-1, 2)
    if any(e.color for e in entries):  # a row of zeros: no correction (the identity map)
        width = max(len(e.color) for e in entries)  # zero taps: no filter (version 5)
        out["colors"] = np.array(
            [e.color + (0,) * (width - len(e.color)) for e in entries], dtype=np.int16
        ).reshape(-1, width)
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
    """A shard as read back: its tensors and metadata (checked by ``read_shard``)."""

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
            image = tuple(int(s) for s in t["image_sizes"][i]) if "image_sizes" in t else None
            color = tuple(int(v) for v in t["colors"][i]) if "colors" in t else ()
            if not any(color[COLOR_VALUES:]):  # no filter taps: the affine map alone
                color = color[:COLOR_VALUES] if any(color) else ()
            out.append(Entry(gi, paths[i], t["tokens"][a:b].reshape(shape), w, h, flip, image,
                             color))  # fmt: skip
        return out


def _array(t: dict[str, np.ndarray], key: str, dtype: str, ndim: int) -> np.ndarray:
    if key not in t:
        raise ValueError(f"{key}: tensor is missing")
    a = t[key]
    if a.dtype != np.dtype(dtype) or a.ndim != ndim:
        raise ValueError(f"{key}: must be a {ndim}-D {dtype} tensor, got {a.ndim}-D {a.dtype}")
    return a


def check_arrays(tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """ValueError naming the tensor unless the arrays describe ``len(paths)`` grids that fit
    their offsets, shapes and sizes under the record's model, with every token below K."""
    n = len(meta["paths"])
    dtype, k = meta["dtype"], meta["codebook"]["size"]
    groups, f = meta["model"]["groups"], meta["model"]["downsample"]
    tokens = _array(tensors, "tokens", dtype, 1)
    offsets = _array(tensors, "offsets", "int64", 1)
    shapes = _array(tensors, "shapes", "int32", 2)
    sizes = _array(tensors, "sizes", "int32", 2)
    index = _array(tensors, "index", "int64", 1)
    if offsets.shape != (n + 1,) or shapes.shape != (n, 3) or sizes.shape != (n, 2):
        raise ValueError(f"offsets, shapes and sizes must describe the {n} grids of paths")
    if index.shape != (n,):
        raise ValueError(f"index: must have {n} entries, one per path")
    if n and (index.min() < 0 or (np.diff(index) <= 0).any()):
        raise ValueError("index: must be non-negative and increasing")
    if offsets[0] != 0 or (np.diff(offsets) < 0).any() or offsets[-1] != tokens.size:
        raise ValueError(f"offsets: must rise from 0 to the {tokens.size} tokens")
    if n:
        if (shapes[:, 0] != groups).any() or (shapes[:, 1:] < 1).any():
            raise ValueError(f"shapes: must be (NG={groups}, h, w) with h, w >= 1")
        if (sizes < 1).any() or (sizes > MAX_SIDE).any():
            raise ValueError(f"sizes: width and height must be in 1..{MAX_SIDE}")
        cells = shapes.astype(np.int64)
        if (cells.prod(axis=1) != np.diff(offsets)).any():
            raise ValueError("shapes: a grid's size differs from its offsets")
        grid = -(-sizes.astype(np.int64)[:, ::-1] // f)  # (h, w) = ceil((height, width) / f)
        if (grid != cells[:, 1:]).any():
            raise ValueError(f"sizes: a grid is not ceil(size / {f}) of its image size")
    if "image_sizes" in tensors:
        _check_image_sizes(_array(tensors, "image_sizes", "int32", 2), sizes, meta)
    if "colors" in tensors:
        colors = _array(tensors, "colors", "int16", 2)
        if "image_sizes" not in tensors:
            raise ValueError("colors: only an export with image_sizes has them")
        if colors.shape[0] != n or colors.shape[1] not in COLOR_LENGTHS:
            raise ValueError(
                f"colors: must have {' or '.join(map(str, COLOR_LENGTHS))} values per grid"
            )
    if tokens.size and int(tokens.max()) >= k:
        raise ValueError(f"tokens: values must be below the codebook size K={k}")
    if "tokens_flip" in tensors:
        flip = _array(tensors, "tokens_flip", dtype, 1)
        if flip.size != tokens.size:
            raise ValueError("tokens_flip: must have as many tokens as tokens")
        if flip.size and int(flip.max()) >= k:
            raise ValueError(f"tokens_flip: values must be below the codebook size K={k}")


def _check_image_sizes(image: np.ndarray, sizes: np.ndarray, meta: dict[str, Any]) -> None:
    """The sizes before the protocol's scale: one row per grid, only under a scale, each the
    grid's own size (rounding kept it) or one a .gq file may code at that size (version 4)."""
    if "scale" not in meta["protocol"]:
        raise ValueError("image_sizes: only an export with a scale has them")
    if image.shape != sizes.shape:
        raise ValueError("image_sizes: must have one (width, height) per grid")
    if (image < 1).any() or (image > MAX_SIDE).any():
        raise ValueError(f"image_sizes: width and height must be in 1..{MAX_SIDE}")
    for (w, h), (cw, ch) in zip(image.tolist(), sizes.tolist(), strict=True):
        if (w, h) != (cw, ch):
            try:
                check_scale(w, h, cw, ch)
            except ValueError as e:
                raise ValueError(f"image_sizes: {e}") from None


def read_shard(path: str | Path, verify: bool = True) -> Shard:
    """Load a shard; with ``verify`` its checksum must match. Any damage is an InputError:
    metadata outside SHARD_SCHEMA, arrays that do not fit each other (check_arrays)."""
    from safetensors import safe_open

    name = str(path)
    try:
        with safe_open(name, framework="np") as f:
            text = (f.metadata() or {}).get(META_KEY)
            if text is None:
                raise ValueError(f"no {META_KEY} metadata")
            meta = sc.parse_json(text, MAX_MANIFEST_BYTES)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a mapping
    except Exception as e:  # noqa: BLE001 - any unreadable shard is bad input
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputError(f"not a readable token shard ({type(e).__name__}: {why})", name) from None
    try:
        sc.validate(meta, SHARD_SCHEMA)
        validate_record(meta)
    except sc.SchemaError as exc:
        raise InputError(f"bad token shard metadata: {exc}", name) from None
    if verify and meta.get("checksum") != checksum(tensors):
        raise InputError("token shard checksum mismatch (corrupt file)", name)
    try:
        check_arrays(tensors, meta)
    except ValueError as exc:
        raise InputError(f"bad token shard: {exc}", name) from None
    return Shard(tensors, meta)


def read_manifest(folder: str | Path, name: str = MANIFEST) -> dict[str, Any]:
    """The manifest of an export folder, checked against MANIFEST_SCHEMA (InputError).
    ``name`` reads one rank's progress file instead, which has the manifest's schema."""
    path = Path(folder) / name
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_MANIFEST_BYTES + 1)
        manifest = sc.parse_json(text, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise InputError(f"no {name}: not a gqtok token export", str(folder)) from None
    except (OSError, ValueError) as e:
        raise InputError(f"unreadable manifest ({e})", str(path)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise InputError("not a gqtok token export manifest", str(path))
    try:
        sc.validate(manifest, MANIFEST_SCHEMA)
        validate_record(manifest)
    except sc.SchemaError as exc:
        raise InputError(f"bad token manifest: {exc}", str(path)) from None
    return manifest


def iter_entries(folder: str | Path) -> Iterator[Entry]:
    """Every exported image of an export folder, in source order; each shard must carry the
    manifest's model, codebook and dtype records (InputError otherwise)."""
    manifest = read_manifest(folder)
    for rec in manifest["shards"]:
        shard = read_shard(Path(folder) / rec["file"])
        for key in RECORD:
            if shard.meta[key] != manifest[key]:
                raise InputError(
                    f"shard's {key} record differs from manifest.json's (not of this export)",
                    str(Path(folder) / rec["file"]),
                )
        yield from shard.entries()
