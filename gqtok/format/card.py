"""Model cards: the JSON that describes a gqtok model file, read without loading any tensor.

A model file is a safetensors file whose metadata holds the card under ``gqtok.card`` (a
``.json`` sidecar with the same card is written for people). The safetensors header is parsed
here directly (8-byte little-endian length, then JSON), so listing and checking models needs
neither torch nor reading the weights.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from gqtok.errors import ModelError
from gqtok.quant.config import ModelOptions

CARD_KEY = "gqtok.card"
CARD_VERSION = 1
DEFAULT_LAYOUT = {"unet": "bchw", "vit": "blc"}
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header


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
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("safetensors metadata is not a JSON object")
    return meta


def read_card(path: Path) -> dict[str, Any]:
    """The card of a model file: its metadata, else the ``.json`` sidecar."""
    try:
        meta = safetensors_metadata(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read model file ({exc})", str(path)) from None
    if CARD_KEY in meta:
        return json.loads(meta[CARD_KEY])
    sidecar = path.with_suffix(".json")
    if sidecar.exists():
        return json.loads(sidecar.read_text())
    raise ModelError("no gqtok model card in the file's metadata nor beside it", str(path))


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
        card = json.loads(sidecar.read_text()) if sidecar.is_file() else None
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
