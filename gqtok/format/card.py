"""Model cards: the JSON that describes a gqtok model file, read without loading any tensor.

A model file is a safetensors file whose metadata holds the card under ``gqtok.card`` (a
``.json`` sidecar with the same card is written for people). The safetensors header is parsed
here directly (8-byte little-endian length, then JSON), so listing and checking models needs
neither torch nor reading the weights.

Every card is checked against one schema (``CARD_SCHEMA``, described in docs/format.md) when
it is read and again before a model is built or saved, so a tampered card ends in a one-line
ModelError naming the file and the field, and code that reads a card may trust its types.

Decoder files (``<model stem>.decoder-<name>.safetensors`` beside a model file: other decoders
for the same tokens) carry a card of their own under ``gqtok.decoder``; ``find_decoders``
reads those cards, and only those, to say which decoders serve a model (no torch either).
"""

from __future__ import annotations

import glob
import re
import struct
import unicodedata
from dataclasses import dataclass, field
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
DECODER_KEY = "gqtok.decoder"
DECODER_VERSION = 1
FIDELITY = "fidelity"  # the model's own decoder: always there, never a file of its own
PERCEPTUAL = "perceptual"  # the decoder that ``realism`` blends with the fidelity decoder
DECODER_INFIX = ".decoder-"  # <model stem>.decoder-<name>.safetensors
DECODER_NAME = r"[a-z0-9][a-z0-9-]{0,31}"
MAX_DECODER_HEADER = 1 << 24  # a decoder's header: ~100 tensors and a card of a few KB


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
                "context": sc.obj(
                    required={
                        "bins": sc.integer(2, 64),
                        "fingerprint": sc.hexdigits(16),
                    },
                    optional={
                        "kind": sc.string(choices=("mlp-cells",)),
                        "hidden": sc.integer(1, 1024),
                        "dims": sc.anything,
                        "neighbours": sc.integer(1, 64),
                        "order": sc.string(),
                        "fitted": sc.obj(),
                    },
                ),
            }
        ),
        "clamp": sc.nullable(sc.array(sc.number(), 2, 2)),
        # rate control codes K < below with the named model: the same tokens (encoder,
        # quantizer and entropy models), a decoder trained on coarse codebooks
        "coarse": sc.obj(
            required={
                "below": sc.integer(MIN_CODEBOOK_SIZE + 1, MAX_CODEBOOK_SIZE),
                "model": sc.string(extra=check_model_id),
                "weights_sha256": sc.hexdigits(64),
            }
        ),
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


def safetensors_metadata(path: Path, max_bytes: int = MAX_HEADER_BYTES) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (empty if none); ValueError if malformed or
    if its header is longer than ``max_bytes``."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > max_bytes:
            raise ValueError(f"header of {n} bytes exceeds {max_bytes}")
        raw = f.read(n)
    if len(raw) != n:
        raise ValueError("truncated safetensors header")
    header = sc.parse_json(raw, max_bytes)
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
    elif DECODER_KEY in meta:
        raise ModelError(
            "a decoder file, not a model: load the model it belongs to and choose the"
            " decoder by name (--decoder NAME)",
            str(path),
        )
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
    if CARD_KEY in meta or DECODER_KEY in meta:  # a decoder file: read_card says what it is
        return True
    sidecar = path.with_suffix(".json")
    try:
        card = sc.parse_json(_read_limited(sidecar), MAX_CARD_BYTES) if sidecar.is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(card, dict) and "network" in card  # not just any JSON beside the file


def with_quantizer(card: dict[str, Any], opts: ModelOptions) -> dict[str, Any]:
    """The card with quantizer settings overridden; a frequency table fitted to other
    settings no longer describes the tokens, so the entropy model falls back to uniform, and
    the coarse-codebook link (which rate control follows from the model's own settings)
    goes."""
    old = dict(card.get("quantizer", {}))
    new = {**old, **opts.overrides()}
    if new == old:
        return card
    out = dict(card)
    out.pop("coarse", None)
    out["quantizer"] = new
    if out.get("entropy", {}).get("kind") == "frequency":
        out["entropy"] = {"kind": "uniform"}
    return out


# Decoder files: other decoders for a model's tokens (docs/format.md#decoder-files).


def entropy_label(card: dict[str, Any]) -> str:
    """How a model's tokens are coded by default, from its card: "context" (a context model:
    .gq format version 2), "static" (its frequency table: version 1) or "uniform"."""
    e = card.get("entropy", {})
    if e.get("kind") == "frequency":
        return "context" if isinstance(e.get("context"), dict) else "static"
    return "uniform"


def check_decoder_name(name: str) -> str:
    """``name`` if it can name a decoder (what a file name and ``--decoder`` hold); ValueError
    saying why otherwise."""
    if not isinstance(name, str) or not re.fullmatch(DECODER_NAME, name):
        raise ValueError(f"decoder names are 1-32 of a-z, 0-9 and '-' (not first), got {name!r}")
    return name


def _not_fidelity(name: str) -> None:
    if name == FIDELITY:
        raise ValueError(f"{FIDELITY!r} is the model's own decoder, not a file")


def _one_line(text: str) -> None:
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text):
        raise ValueError("must be one line without control characters")


DECODER_SCHEMA = sc.obj(
    required={
        "gqtok_decoder": sc.integer(1, DECODER_VERSION),
        "name": sc.string(pattern=DECODER_NAME, max_len=32, extra=_not_fidelity),
        "base_model": sc.string(extra=check_model_id),
        "base_weights_sha256": sc.hexdigits(64),
        "arch": sc.string(choices=tuple(DEFAULT_LAYOUT)),
        "network": sc.obj(),
        "weights_sha256": sc.hexdigits(64),
        "storage_dtype": sc.string(choices=("float16", "float32")),
    },
    optional={
        "description": sc.string(max_len=1000, extra=_one_line),
        "training": sc.obj(),
        "quality": sc.obj(),
    },
)


def check_decoder_card(card: Any, source: str | None = None) -> dict[str, Any]:
    """``card`` if it fits DECODER_SCHEMA with a network of its architecture, else a one-line
    ModelError naming the source and the field."""
    try:
        sc.validate(card, DECODER_SCHEMA)
        sc.validate(card["network"], NETWORK_SCHEMAS[card["arch"]], "network")
    except sc.SchemaError as exc:
        raise ModelError(f"bad decoder card: {exc}", source) from None
    return card


def read_decoder_card(path: Path) -> dict[str, Any]:
    """The card of a decoder file, from its safetensors header (at most MAX_DECODER_HEADER
    bytes, so listing decoders never reads much of a hostile file); ModelError naming it."""
    try:
        meta = safetensors_metadata(path, MAX_DECODER_HEADER)
    except OSError as exc:
        raise ModelError(f"cannot read decoder file ({exc.strerror or exc})", str(path)) from None
    except ValueError as exc:
        raise ModelError(f"cannot read decoder file ({exc})", str(path)) from None
    text = meta.get(DECODER_KEY)
    if not isinstance(text, str):
        raise ModelError(f"not a gqtok decoder file (no {DECODER_KEY} card)", str(path))
    try:
        card = sc.parse_json(text, MAX_CARD_BYTES)
    except ValueError as exc:  # also UnicodeDecodeError
        raise ModelError(f"bad decoder card: not JSON ({exc})", str(path)) from None
    return check_decoder_card(card, str(path))


def decoder_path(model_path: Path, name: str) -> Path:
    """Where the decoder ``name`` of the model file ``model_path`` lives."""
    return model_path.with_name(f"{model_path.stem}{DECODER_INFIX}{name}.safetensors")


def is_decoder_file(path: Path) -> bool:
    """True for a name of the decoder-file form (never listed or loaded as a model)."""
    return path.suffix == ".safetensors" and DECODER_INFIX in path.name


@dataclass
class DecoderScan:
    """The decoder files beside one model file: ``bound`` (name -> (file, card)) serve its
    tokens; ``refused`` (name -> (file, reason)) are there but do not fit or cannot be read,
    so they are never used, but can be reported and named when someone asks for them."""

    bound: dict[str, tuple[Path, dict[str, Any]]] = field(default_factory=dict)
    refused: dict[str, tuple[Path, str]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [FIDELITY, *self.bound]


def _reason(exc: ModelError) -> str:
    """A ModelError's message without the ``path: `` it starts with."""
    text = str(exc)
    prefix = f"{exc.path}: " if exc.path else ""
    return text[len(prefix) :] if text.startswith(prefix) else text


def binding_problem(
    dcard: dict[str, Any], name: str, card: dict[str, Any], weights_sha256: str | None
) -> str | None:
    """Why a decoder card does not serve the model of ``card`` with these weights (None if it
    does): its file name, architecture, network and base weights must all be the model's."""
    if dcard["name"] != name:
        return f"the file name says decoder {name!r}, its card {dcard['name']!r}"
    if dcard["arch"] != card.get("arch", "unet") or dcard["network"] != card["network"]:
        return "its network differs from the model's"
    if weights_sha256 is None:
        return "the model card has no weights_sha256 to bind a decoder to"
    if dcard["base_weights_sha256"] != weights_sha256:
        return (
            f"made for model weights {dcard['base_weights_sha256'][:16]},"
            f" the model's are {weights_sha256[:16]}"
        )
    return None


def find_decoders(
    model_path: Path, card: dict[str, Any], weights_sha256: str | None = None
) -> DecoderScan:
    """The decoder files beside ``model_path`` (``<stem>.decoder-*.safetensors``), sorted by
    name and split into those bound to this model (same weights fingerprint, default the
    card's, and same network) and the others; reads cards only and never raises for a file."""
    scan = DecoderScan()
    weights_sha256 = weights_sha256 or card.get("weights_sha256")
    stem = model_path.stem
    try:
        files = sorted(model_path.parent.glob(glob.escape(stem) + DECODER_INFIX + "*.safetensors"))
    except OSError:  # an unreadable folder offers no decoders
        return scan
    for p in files:
        name = p.name[len(stem) + len(DECODER_INFIX) : -len(".safetensors")]
        try:
            check_decoder_name(name)
            _not_fidelity(name)
        except ValueError as exc:
            scan.refused[name] = (p, f"not a usable decoder file name ({exc})")
            continue
        try:
            dcard = read_decoder_card(p)
        except ModelError as exc:
            scan.refused[name] = (p, _reason(exc))
            continue
        why = binding_problem(dcard, name, card, weights_sha256)
        if why is None:
            scan.bound[name] = (p, dcard)
        else:
            scan.refused[name] = (p, f"decoder {name!r} does not fit this model ({why})")
    return scan
