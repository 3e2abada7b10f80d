"""Model cards: the JSON that describes a gqtok model file, read without loading any tensor.

A model file is a safetensors file whose metadata holds the card under ``gqtok.card`` (a
``.json`` sidecar with the same card is written for people). The safetensors header is parsed
here directly (8-byte little-endian length, then JSON), so listing and checking models needs
neither torch nor reading the weights.

Every card is checked against one schema (``CARD_SCHEMA``, described in docs/format.md) when
it is read and again before a model is built or saved, so a tampered card ends in a one-line
ModelError naming the file and the field, and code that reads a card may trust its types.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from gqtok.errors import ModelError
from gqtok.format import schema as sc
from gqtok.format.container import (
    MAX_CODEBOOK_DIM,
    MAX_CODEBOOK_SIZE,
    MIN_CODEBOOK_SIZE,
    check_codebook,
    check_model_id,
)
from gqtok.quant.config import ModelOptions

CARD_KEY = "gqtok.card"
CARD_VERSION = 1
DEFAULT_LAYOUT = {"unet": "bchw", "vit": "blc"}
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
MAX_CARD_BYTES = 1 << 24  # a card is a few KB; a sidecar is not read beyond this


def _true(v: Any, at: str) -> None:
    if v is not True:
        raise sc.SchemaError(at, "must be true (GQ needs the encoder's log-variances)")


UNET_SCHEMA = sc.obj(
    optional={
        "ch": sc.integer(1, 4096),
        "ch_mult": sc.array(sc.integer(1, 64), 1, 8),
        "num_res_blocks": sc.integer(1, 16),
        "attn_resolutions": sc.array(sc.integer(1, 1 << 16), 0, 8),
        "resolution": sc.integer(1, 1 << 16),
        "in_channels": sc.integer(3, 3),
        "out_ch": sc.integer(3, 3),
        "z_channels": sc.integer(1, 1024),
        "double_z": _true,
        "stem": sc.integer(1, 16),
    }
)
VIT_SCHEMA = sc.obj(
    optional={
        "image_size": sc.integer(1, 8192),
        "patch_size": sc.integer(1, 1024),
        "width": sc.integer(1, 8192),
        "layers": sc.integer(1, 128),
        "heads": sc.integer(1, 1024),
        "mlp_ratio": sc.number(0, 64, above=True),
        "z_channels": sc.integer(1, 1024),
        "double_z": _true,
        "dim_ffn_output": sc.integer(1, 1 << 16),
        "tile_batch": sc.integer(1, 1024),
    }
)
NETWORK_SCHEMAS = {"unet": UNET_SCHEMA, "vit": VIT_SCHEMA}
CARD_SCHEMA = sc.obj(
    required={"network": sc.obj()},
    optional={
        "gqtok_model": sc.integer(1, CARD_VERSION),
        "name": sc.string(extra=check_model_id),
        "arch": sc.string(choices=tuple(DEFAULT_LAYOUT)),
        "layout": sc.string(choices=("bchw", "blc")),
        "quantizer": sc.obj(
            optional={
                "dim": sc.integer(1, MAX_CODEBOOK_DIM),
                "size": sc.integer(MIN_CODEBOOK_SIZE, MAX_CODEBOOK_SIZE),
                "seed": sc.integer(0, (1 << 64) - 1),
                "beta": sc.number(),
            }
        ),
        "entropy": sc.obj(
            optional={
                "kind": sc.string(choices=("uniform", "frequency")),
                "smoothing": sc.number(0, above=True),
                "fingerprint": sc.hexdigits(16),
            }
        ),
        "clamp": sc.nullable(sc.array(sc.number(), 2, 2)),
        "weights_sha256": sc.hexdigits(64),
        "storage_dtype": sc.string(choices=("float16", "float32")),
        "origin": sc.obj(),
        "quality": sc.obj(),
        "training": sc.obj(),
        "token_stats": sc.obj(),
    },
)


def validate_card(card: Any) -> dict[str, Any]:
    """``card`` if it fits CARD_SCHEMA and its fields agree with each other (SchemaError
    naming the field otherwise): the network of its architecture, a codebook within the .gq
    limits whose G divides the latent channels, and an increasing clamp range."""
    sc.validate(card, CARD_SCHEMA)
    arch = card.get("arch", "unet")
    net = card["network"]
    sc.validate(net, NETWORK_SCHEMAS[arch], "network")
    if arch == "vit":
        size, patch = net.get("image_size", 256), net.get("patch_size", 8)
        if size % patch:
            raise sc.SchemaError("network.patch_size", f"must divide image_size {size}")
        if net.get("width", 768) % net.get("heads", 12):
            raise sc.SchemaError("network.heads", "must divide width")
    q = card.get("quantizer", {})
    dim, size = q.get("dim", 16), q.get("size", 65536)
    try:
        check_codebook(dim, size)
    except ValueError as exc:
        raise sc.SchemaError("quantizer", str(exc)) from None
    if net.get("z_channels", 16) % dim:
        raise sc.SchemaError("quantizer.dim", f"must divide network.z_channels, got {dim}")
    clamp = card.get("clamp")
    if clamp is not None and not clamp[0] < clamp[1]:
        raise sc.SchemaError("clamp", "must be [low, high] with low < high")
    return card


def check_card(card: Any, source: str | None = None) -> dict[str, Any]:
    """``card`` if valid, else a one-line ModelError naming the source and the field."""
    try:
        return validate_card(card)
    except sc.SchemaError as exc:
        raise ModelError(f"bad model card: {exc}", source) from None


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (empty if none); ValueError if malformed."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise ValueError(f"header of {n} bytes exceeds {MAX_HEADER_BYTES}")
        raw = f.read(n)
    if len(raw) != n:
        raise ValueError("truncated safetensors header")
    header = sc.parse_json(raw, MAX_HEADER_BYTES)
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("safetensors metadata is not a JSON object")
    return meta


def _read_limited(path: Path) -> bytes:
    """A sidecar's bytes, at most one more than a card may have (parse_json refuses those)."""
    with open(path, "rb") as f:
        return f.read(MAX_CARD_BYTES + 1)


def read_card(path: Path) -> dict[str, Any]:
    """The card of a model file: its metadata, else the ``.json`` sidecar."""
    try:
        meta = safetensors_metadata(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read model file ({exc})", str(path)) from None
    if CARD_KEY in meta:
        text, where = meta[CARD_KEY], str(path)
        if not isinstance(text, str):
            raise ModelError("bad model card: metadata gqtok.card is not a string", where)
    else:
        where = str(path.with_suffix(".json"))
        try:
            text = _read_limited(Path(where))
        except FileNotFoundError:
            raise ModelError(
                "no gqtok model card in the file's metadata nor beside it", str(path)
            ) from None
        except OSError as exc:
            raise ModelError(f"cannot read model card ({exc.strerror or exc})", where) from None
    try:
        card = sc.parse_json(text, MAX_CARD_BYTES)
    except ValueError as exc:  # also UnicodeDecodeError
        raise ModelError(f"bad model card: not JSON ({exc})", where) from None
    return check_card(card, where)


def has_card(path: Path) -> bool:
    """True for a gqtok model file; False for other files (e.g. a reference state dict)."""
    if path.suffix != ".safetensors":
        return False
    try:
        meta = safetensors_metadata(path)
    except (OSError, ValueError):  # unreadable: let the loader report it
        return True
    if CARD_KEY in meta:
        return True
    sidecar = path.with_suffix(".json")
    try:
        card = sc.parse_json(_read_limited(sidecar), MAX_CARD_BYTES) if sidecar.is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(card, dict) and "network" in card  # not just any JSON beside the file


def with_quantizer(card: dict[str, Any], opts: ModelOptions) -> dict[str, Any]:
    """The card with quantizer settings overridden; a frequency table fitted to other
    settings no longer describes the tokens, so the entropy model falls back to uniform."""
    old = dict(card.get("quantizer", {}))
    new = {**old, **opts.overrides()}
    if new == old:
        return card
    out = dict(card)
    out["quantizer"] = new
    if out.get("entropy", {}).get("kind") == "frequency":
        out["entropy"] = {"kind": "uniform"}
    return out
